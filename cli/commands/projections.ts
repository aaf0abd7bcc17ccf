import { SingleBar } from "cli-progress";
import type { Command } from "commander";
import { builtinProjections, createProjectionEngine, describeProjection, requestRebuild } from "../../projections/index.js";
import type { FilterValue, ProjectionEngine, RebuildProgress, RebuildResult } from "../../projections/index.js";
import { InvalidOptionError } from "../../streams/index.js";
import { connectCli, dataDir } from "../connection.js";

interface Common {
  readonly nats?: string;
  readonly json?: boolean;
}

function table(header: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  return `${[line(header), ...rows.map(line)].join("\n")}\n`;
}

/** `key=value`: the value as JSON when it parses (numbers, true, null, "quoted"), else text. */
function parseFilter(pairs: readonly string[]): Record<string, FilterValue> {
  const filter: Record<string, FilterValue> = {};
  for (const pair of pairs) {
    const at = pair.indexOf("=");
    if (at <= 0) throw new InvalidOptionError("--filter", pair, "field=value (e.g. status=failed or doc.total=10)");
    const raw = pair.slice(at + 1);
    let value: FilterValue;
    try {
      const parsed = JSON.parse(raw) as unknown;
      value = parsed === null || ["string", "number", "boolean"].includes(typeof parsed) || (typeof parsed === "object" && !Array.isArray(parsed)) ? (parsed as FilterValue) : raw;
    } catch {
      value = raw;
    }
    filter[pair.slice(0, at)] = value;
  }
  return filter;
}

/** A read-only engine on the data directory, for queries and status while `flexcore up` writes. */
async function withReader<T>(opts: Common, fn: (engine: ProjectionEngine) => Promise<T>): Promise<T> {
  const nc = await connectCli(opts.nats);
  try {
    const engine = createProjectionEngine(nc, { dataDir: dataDir(), readOnly: true, log: () => undefined });
    await engine.start();
    try {
      return await fn(engine);
    } finally {
      await engine.close();
    }
  } finally {
    await nc.drain();
  }
}

function age(ms: number | undefined): string {
  if (ms === undefined) return "-";
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1_000).toFixed(1)} s`;
  return `${Math.round(ms / 60_000)} min`;
}

function progressBar(): { update(p: RebuildProgress): void; stop(): void } {
  const bar = new SingleBar({
    stream: process.stderr,
    format: "rebuild {names} [{bar}] {percentage}% | {value}/{total} events | {rate} events/s | ETA {eta_formatted}",
    hideCursor: true,
    etaBuffer: 40,
  });
  let started = false;
  return {
    update(p) {
      const payload = { names: p.projections.join("+"), rate: Math.round(p.eventsPerSecond).toLocaleString("en-US") };
      if (!started) {
        bar.start(Math.max(p.total, 1), p.done, payload);
        started = true;
      }
      bar.setTotal(Math.max(p.total, p.done, 1));
      bar.update(p.done, payload);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

export function register(program: Command): void {
  const projections = program.command("projections").description("SQLite read models: list, status, query, rebuild");

  projections
    .command("list")
    .description("the read models, their sources and readers")
    .option("--json", "print JSON")
    .action((opts: Common) => {
      const list = builtinProjections().map(describeProjection);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
        return;
      }
      process.stdout.write(table(["name", "version", "sources", "readers", "description"], list.map((p) => [
        p.name,
        String(p.version),
        p.sources.map((s) => `${s.stream}:${s.subjects.join(",")}`).join(" "),
        p.readers.map((r) => `${r.name}(${Object.keys(r.columns).join(",")})`).join(" "),
        p.description,
      ])));
    });

  projections
    .command("status")
    .description("checkpoint, lag and failures of each read model (reads the files; works while flexcore up runs)")
    .argument("[name]", "one projection")
    .option("--json", "print JSON")
    .option("--nats <url>", "server URL")
    .action(async (name: string | undefined, opts: Common) => {
      await withReader(opts, async (engine) => {
        const status = await engine.status(name);
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
          return;
        }
        process.stdout.write(table(["name", "version", "gen", "stream", "checkpoint", "last seq", "lag", "last event age", "failures"], status.flatMap((s) =>
          s.streams.map((st) => [s.name, String(s.version), String(s.generation), st.stream, String(st.checkpoint), String(st.lastSeq ?? "?"), String(st.lag ?? "?"), age(st.lastEventAgeMs), String(s.failures.count)]),
        )));
        for (const s of status) for (const f of s.failures.last.slice(0, 3)) process.stdout.write(`  ${s.name}: ${f.stream} #${f.seq} ${f.subject} ${f.type}: ${f.error}\n`);
      });
    });

  projections
    .command("query")
    .description("one page of a tenant's rows (JSON lines; the next page's cursor goes to stderr)")
    .argument("<name>", "projection")
    .requiredOption("--tenant <tenant>", "whose rows (required)")
    .option("--reader <reader>", "reader of the projection (default: its first)")
    .option("--filter <field=value>", "equality filter, repeatable; JSON values (10, true, null) or text", (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option("--sort <fields>", "comma-separated, - for descending (e.g. -last_time)")
    .option("--limit <n>", "rows per page (max 1000)", (v: string) => Number(v))
    .option("--cursor <cursor>", "nextCursor of the previous page")
    .option("--json", "print one JSON document with rows and nextCursor")
    .option("--nats <url>", "server URL")
    .action(async (name: string, opts: Common & { tenant: string; reader?: string; filter: string[]; sort?: string; limit?: number; cursor?: string }) => {
      await withReader(opts, async (engine) => {
        const page = await engine.query(name, {
          tenant: opts.tenant,
          ...(opts.reader ? { reader: opts.reader } : {}),
          ...(opts.filter.length > 0 ? { filter: parseFilter(opts.filter) } : {}),
          ...(opts.sort ? { sort: opts.sort } : {}),
          ...(opts.limit !== undefined ? { limit: opts.limit } : {}),
          ...(opts.cursor ? { cursor: opts.cursor } : {}),
        });
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(page, null, 2)}\n`);
          return;
        }
        for (const row of page.rows) process.stdout.write(`${JSON.stringify(row)}\n`);
        if (page.nextCursor) process.stderr.write(`next page: --cursor ${page.nextCursor}\n`);
      });
    });

  projections
    .command("rebuild")
    .description("rebuild read models from sequence 1 beside the served copy and swap it in when caught up (asks the running engine of flexcore up, else runs here)")
    .argument("<names...>", "projections to rebuild together")
    .option("--sync <mode>", "full or normal (local rebuild only)", "full")
    .option("--nats <url>", "server URL")
    .action(async (names: string[], opts: Common & { sync: string }) => {
      const nc = await connectCli(opts.nats);
      const bar = progressBar();
      const ac = new AbortController();
      const onSignal = (): void => ac.abort();
      process.once("SIGINT", onSignal);
      try {
        const remote = await requestRebuild(nc, names, { onProgress: (p) => bar.update(p.overall), signal: ac.signal }).catch((err: unknown) => {
          bar.stop();
          throw err;
        });
        const line = (r: RebuildResult, by: string): string =>
          `rebuilt ${r.projections.map((p) => `${p.name} (generation ${p.generation})`).join(", ")} in ${(r.durationMs / 1000).toFixed(1)} s: ${r.events.toLocaleString("en-US")} events read, ${Math.round(r.eventsPerSecond).toLocaleString("en-US")} events/s, by ${by}\n`;
        if (remote) {
          bar.stop();
          // Every running instance serves its own copy: one line per instance, all swapped.
          for (const i of remote.instances) process.stderr.write(line(i.result, `instance ${i.instance}`));
          process.stderr.write(`${remote.instances.length} ${remote.instances.length === 1 ? "copy" : "copies"} swapped\n`);
          return;
        }
        const engine = createProjectionEngine(nc, { dataDir: dataDir(), sync: opts.sync as "full" | "normal", projections: builtinProjections() });
        await engine.start();
        let result: RebuildResult;
        try {
          result = await engine.rebuild(names, { onProgress: (p) => bar.update(p), signal: ac.signal });
        } finally {
          await engine.close();
        }
        bar.stop();
        process.stderr.write(line(result, "this process"));
      } finally {
        bar.stop();
        process.off("SIGINT", onSignal);
        await nc.drain();
      }
    });
}
