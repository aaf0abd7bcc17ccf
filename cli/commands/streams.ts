import { jetstreamManager } from "@nats-io/jetstream";
import type { Command } from "commander";
import { STREAMS } from "../../streams/index.js";
import { connectCli } from "../connection.js";

export function register(program: Command): void {
  program
    .command("streams")
    .description("messages, bytes, subjects and first/last sequence of each FlexCore stream")
    .option("--json", "print JSON")
    .option("--nats <url>", "server URL")
    .action(async (opts: { json?: boolean; nats?: string }) => {
      const nc = await connectCli(opts.nats);
      try {
        const jsm = await jetstreamManager(nc);
        const rows = [];
        for (const name of Object.values(STREAMS)) {
          try {
            const { state, config } = await jsm.streams.info(name);
            rows.push({ stream: name, subjects: config.subjects.join(","), messages: state.messages, bytes: state.bytes, distinctSubjects: state.num_subjects ?? 0, firstSeq: state.first_seq, lastSeq: state.last_seq, consumers: state.consumer_count });
          } catch {
            rows.push({ stream: name, subjects: "(missing: run flexcore up or doctor)", messages: 0, bytes: 0, distinctSubjects: 0, firstSeq: 0, lastSeq: 0, consumers: 0 });
          }
        }
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
          return;
        }
        const header = ["stream", "subjects", "messages", "bytes", "distinctSubjects", "firstSeq", "lastSeq", "consumers"] as const;
        const cells = rows.map((r) => header.map((h) => String(r[h])));
        const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
        process.stdout.write(`${header.map((h, i) => h.padEnd(widths[i]!)).join("  ")}\n`);
        for (const c of cells) process.stdout.write(`${c.map((v, i) => v.padEnd(widths[i]!)).join("  ")}\n`);
      } finally {
        await nc.drain();
      }
    });
}
