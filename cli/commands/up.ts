import type { Command } from "commander";
import { startPipeline } from "../up.js";

export function register(program: Command): void {
  program
    .command("up")
    .description("run the whole pipeline (embedded nats-server unless NATS_URL is set); same as npm start")
    .option("--nats <url>", "connect to this server instead of starting one")
    .option("--config <file>", "pipeline configuration (default: $FLEXCORE_CONFIG or ./flexcore.yaml)")
    .action(async (opts: { nats?: string; config?: string }) => {
      const pipeline = await startPipeline({ ...(opts.nats ? { natsUrl: opts.nats } : {}), ...(opts.config ? { configFile: opts.config } : {}) });
      process.stderr.write(`flexcore: up; NATS at ${pipeline.natsUrl}. Ctrl-C stops.\n`);
      let stopping = false;
      const stop = (signal: string): void => {
        if (stopping) return;
        stopping = true;
        process.stderr.write(`flexcore: ${signal}, stopping...\n`);
        const force = setTimeout(() => process.exit(1), 30_000);
        force.unref();
        pipeline.close().then(() => process.exit(0), (err: unknown) => {
          process.stderr.write(`flexcore: stop failed: ${(err as Error).message}\n`);
          process.exit(1);
        });
      };
      process.on("SIGINT", () => stop("SIGINT"));
      process.on("SIGTERM", () => stop("SIGTERM"));
    });
}
