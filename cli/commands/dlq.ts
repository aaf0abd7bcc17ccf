import { createInterface } from "node:readline/promises";
import type { Command } from "commander";
import { createDeadLetters, PurgeNotConfirmedError } from "../../streams/index.js";
import type { DeadLetterFilter, DeadLetters } from "../../streams/index.js";
import { connectCli } from "../connection.js";

interface Common {
  readonly nats?: string;
  readonly json?: boolean;
  readonly tenant?: string;
}

interface FilterOptions extends Common {
  readonly seq?: string;
  readonly source?: string;
  readonly since?: string;
  readonly until?: string;
  readonly reason?: string;
  readonly limit?: string;
}

function table(header: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  return `${[line(header), ...rows.map(line)].join("\n")}\n`;
}

async function withDlq<T>(opts: Common, fn: (dlq: DeadLetters) => Promise<T>): Promise<T> {
  const nc = await connectCli(opts.nats);
  try {
    return await fn(createDeadLetters(nc));
  } finally {
    await nc.drain();
  }
}

function filterOf(o: FilterOptions): DeadLetterFilter {
  const f: Record<string, string> = {};
  for (const k of ["seq", "source", "since", "until", "reason", "limit"] as const) if (o[k] !== undefined) f[k] = o[k]!;
  return f;
}

const print = (json: boolean | undefined, value: unknown, text: () => string): void => void process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : text());

function filtered(cmd: Command): Command {
  return cmd
    .requiredOption("--tenant <tenant>", "the tenant whose dead letters (dlq.<tenant>.>)")
    .option("--seq <n>", "one dead letter by its FLEX_DLQ sequence")
    .option("--source <source>", "processor (or projection_<name>) that dead-lettered them")
    .option("--since <time>", "stored at or after (RFC 3339)")
    .option("--until <time>", "stored at or before (RFC 3339)")
    .option("--reason <text>", "reason contains this text (case-insensitive)")
    .option("--nats <url>", "server URL")
    .option("--json", "print JSON");
}

export function register(program: Command): void {
  const dlq = program.command("dlq").description("dead letters (FLEX_DLQ): list, show, redrive to the processor or projection that failed them, purge (docs/dlq.md)");

  dlq
    .command("list")
    .description("dead letters per tenant and source, and redrives not yet taken back")
    .option("--tenant <tenant>", "only this tenant (default: every tenant)")
    .option("--nats <url>", "server URL")
    .option("--json", "print JSON")
    .action(async (opts: Common) => {
      const rows = await withDlq(opts, (d) => d.list(opts.tenant));
      print(opts.json, rows, () => (rows.length === 0 ? "no dead letters\n" : table(["tenant", "source", "count", "redrivePending"], rows.map((r) => [r.tenant, r.source, String(r.count), String(r.redrivePending)]))));
    });

  filtered(dlq.command("show [seq]").description("one dead letter (by sequence) or the dead letters matching the filters: reason(s), attempts, original subject, headers, body"))
    .option("--limit <n>", "most dead letters shown (default 100)")
    .action(async (seq: string | undefined, opts: FilterOptions) => {
      const filter = filterOf(seq !== undefined ? { ...opts, seq } : opts);
      const found = await withDlq(opts, async (d) => (filter.seq !== undefined && Object.keys(filter).length === 1 ? { deadLetters: [await d.show(opts.tenant!, filter.seq)], more: false } : d.find(opts.tenant!, filter)));
      print(opts.json, filter.seq !== undefined ? found.deadLetters[0] : found, () =>
        found.deadLetters.map((x) => [
          `#${x.seq}  ${x.source}  ${x.storedAt}  (${x.kind})`,
          `  original: ${x.originalSubject ?? "-"} seq ${x.originalSeq ?? "-"}   type ${x.eventType ?? "-"}   attempts ${x.attempts ?? "-"}`,
          ...x.reasons.map((r, i) => `  reason${x.reasons.length > 1 ? ` ${i + 1}` : ""}: ${r}`),
          `  headers: ${JSON.stringify(x.headers)}`,
          `  data: ${JSON.stringify(x.data)}`,
        ].join("\n")).join("\n\n") + (found.more ? "\n(more match: narrow the filters or raise --limit)\n" : "\n"));
    });

  filtered(dlq.command("redrive").description("send dead letters back to the processor or projection that failed them (not to every consumer); a repeated redrive is harmless"))
    .action(async (opts: FilterOptions) => {
      const r = await withDlq(opts, (d) => d.redrive(opts.tenant!, filterOf(opts)));
      print(opts.json, r, () => `redriven ${r.redriven.length} dead letter(s)${r.redriven.length > 0 ? `: ${r.redriven.join(", ")}` : ""}${r.duplicates > 0 ? ` (${r.duplicates} already redriven)` : ""}${r.more ? "; more match, run it again" : ""}\n`);
    });

  filtered(dlq.command("purge").description("delete dead letters for good (asks first; --yes to skip the question)"))
    .option("--yes", "do not ask for confirmation")
    .action(async (opts: FilterOptions & { yes?: boolean }) => {
      const r = await withDlq(opts, async (d) => {
        let confirm = opts.yes === true;
        if (!confirm) {
          try {
            return await d.purge(opts.tenant!, filterOf(opts), false);
          } catch (err) {
            if (!(err instanceof PurgeNotConfirmedError)) throw err;
            if (!process.stdin.isTTY) throw err;
            const rl = createInterface({ input: process.stdin, output: process.stderr });
            try {
              confirm = /^y(es)?$/iu.test((await rl.question(`Delete ${err.matching} dead letter(s) of ${opts.tenant} for good? [y/N] `)).trim());
            } finally {
              rl.close();
            }
            if (!confirm) throw err;
          }
        }
        return d.purge(opts.tenant!, filterOf(opts), true);
      });
      print(opts.json, r, () => `purged ${r.purged} dead letter(s)${r.more ? "; more match, run it again" : ""}\n`);
    });
}
