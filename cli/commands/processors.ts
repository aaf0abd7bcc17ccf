import type { Command } from "commander";
import { processorsStatus } from "../../processors/index.js";
import type { ProcessorStatus } from "../../processors/index.js";
import { connectCli } from "../connection.js";

/** One line per processor, then (partitioned) one per instance with its partitions and throughput. */
export function formatStatus(rows: readonly ProcessorStatus[]): string {
  if (rows.length === 0) return "no processors (none has a consumer yet: run flexcore up)\n";
  const lines: string[] = [];
  for (const r of rows) {
    if (r.scale === "single") {
      lines.push(`${r.processor}  single  owner ${r.owner ?? "(none)"}  lag ${r.lag}`);
      continue;
    }
    const moving = r.partitions.filter((p) => p.owner === null).map((p) => p.partition);
    lines.push(`${r.processor}  partitioned  ${r.partitions.length} partitions over ${r.instances.length} instance(s)  lag ${r.lag}${moving.length > 0 ? `  moving: ${moving.join(",")}` : ""}`);
    for (const i of r.instances) {
      const lag = r.partitions.filter((p) => p.owner === i.instance).reduce((a, p) => a + p.lag, 0);
      lines.push(`  ${i.instance}  partitions ${i.partitions.length > 0 ? i.partitions.join(",") : "-"}  lag ${lag}  ${i.throughput.toFixed(1)} events/s`);
    }
  }
  return `${lines.join("\n")}\n`;
}

export function register(program: Command): void {
  const processors = program.command("processors").description("the processors running across FlexCore instances");
  processors
    .command("status")
    .description("per processor: which instance holds it or which partitions, their lag (messages not yet acknowledged) and throughput")
    .option("--json", "print JSON")
    .option("--nats <url>", "server URL")
    .action(async (opts: { json?: boolean; nats?: string }) => {
      const nc = await connectCli(opts.nats);
      try {
        const rows = await processorsStatus(nc);
        process.stdout.write(opts.json ? `${JSON.stringify(rows, null, 2)}\n` : formatStatus(rows));
      } finally {
        await nc.drain();
      }
    });
}
