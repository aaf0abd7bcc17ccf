import type { Command } from "commander";
import { createRootLogger } from "../logger.js";
import { startPipeline } from "../up.js";

const ORPHAN_CHECK_MS = 500;

export function register(program: Command): void {
  program
    .command("up")
    .description("run the whole pipeline (embedded nats-server unless NATS_URL is set); same as npm start")
    .option("--nats <url>", "connect to this server instead of starting one")
    .option("--config <file>", "pipeline configuration (default: $FLEXCORE_CONFIG or ./flexcore.yaml)")
    .action(async (opts: { nats?: string; config?: string }) => {
      // LOG_LEVEL is checked before anything starts. "flexcore: up" is the line scripts wait for.
      const logger = createRootLogger();
      const log = logger.child({ area: "up" });
      const pipeline = await startPipeline({ logger, ...(opts.nats ? { natsUrl: opts.nats } : {}), ...(opts.config ? { configFile: opts.config } : {}) }).catch((err: unknown) => {
        log.fatal({ err }, "up failed");
        logger.flush();
        throw err;
      });
      log.info({ nats: pipeline.natsUrl }, `flexcore: up; NATS at ${pipeline.natsUrl}. Ctrl-C stops.`);
      let stopping = false;
      const stop = (signal: string): void => {
        if (stopping) return;
        stopping = true;
        log.info({ signal }, `${signal}, stopping`);
        const force = setTimeout(() => process.exit(1), 30_000);
        force.unref();
        const exit = (code: number): void => logger.flush(() => process.exit(code));
        pipeline.close().then(() => exit(0), (err: unknown) => {
          log.error({ err }, "stop failed");
          exit(1);
        });
      };
      process.on("SIGINT", () => stop("SIGINT"));
      process.on("SIGTERM", () => stop("SIGTERM"));
      // The terminal closed: stop as on Ctrl-C (the embedded server, in a group of its own, does not get it).
      process.on("SIGHUP", () => stop("SIGHUP"));
      if (process.env.npm_lifecycle_event !== undefined) {
        // Under `npm start`, npm passes SIGTERM to the shell it ran us in, not to us: when
        // that parent is gone we are orphaned and stop too, with the embedded server.
        // (Run `flexcore up` directly to keep it running on its own.)
        const parent = process.ppid;
        setInterval(() => {
          if (process.ppid !== parent) stop("parent exited");
        }, ORPHAN_CHECK_MS).unref();
      }
    });
}
