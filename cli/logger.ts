import { createRequire } from "node:module";
import { pino } from "pino";
import type { DestinationStream, Logger, LoggerOptions } from "pino";
import { InvalidOptionError } from "../streams/index.js";

/** Levels `LOG_LEVEL` accepts, most severe first. */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
/** Level when `LOG_LEVEL` is unset. */
export const DEFAULT_LOG_LEVEL: LogLevel = "info";

/** Options of {@link createRootLogger}. */
export interface RootLoggerOptions {
  /** @default $LOG_LEVEL or "info" */
  readonly level?: string;
  /**
   * Where the JSON lines go. @default standard error (fd 2): `flexcore up` writes nothing
   * else, and standard output stays free for commands that print data.
   */
  readonly destination?: DestinationStream;
  /** Human-readable lines through pino-pretty. @default true when standard error is a TTY and pino-pretty is installed */
  readonly pretty?: boolean;
}

/** Validates a `LOG_LEVEL` value. @throws InvalidOptionError naming `LOG_LEVEL` */
export function logLevel(value: string | undefined): LogLevel {
  if (value === undefined || value === "") return DEFAULT_LOG_LEVEL;
  const level = value.trim().toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(level)) throw new InvalidOptionError("LOG_LEVEL", value, `one of ${LOG_LEVELS.join(", ")}`);
  return level as LogLevel;
}

function prettyAvailable(): boolean {
  try {
    createRequire(import.meta.url).resolve("pino-pretty");
    return true;
  } catch {
    return false;
  }
}

/**
 * The one root logger of `flexcore up` (pino, which is also Fastify's): JSON lines with
 * `time`, `level`, `pid`, `hostname`, `msg`; each area logs through a child carrying
 * `area`, the gateway's request lines carry `reqId`.
 */
export function createRootLogger(options: RootLoggerOptions = {}): Logger {
  const level = logLevel(options.level ?? process.env.LOG_LEVEL);
  const base: LoggerOptions = { level, name: "flexcore" };
  const pretty = options.pretty ?? (options.destination === undefined && process.stderr.isTTY === true && prettyAvailable());
  if (pretty) {
    // A transport runs in a worker thread, so formatting never slows the pipeline.
    return pino({ ...base, transport: { target: "pino-pretty", options: { destination: 2, colorize: true, ignore: "pid,hostname,name" } } });
  }
  return pino(base, options.destination ?? pino.destination({ dest: 2, sync: false }));
}

// The areas' lines predate structured logs and start with who wrote them; `area` says that now.
const PREFIX = /^(?:flexcore: )?(?:(?:projections|workflows): )?/u;

/**
 * The `(line, level?) => void` callback every area takes (`log` of their options), writing
 * to `logger` at `level` (default info) without the leading `flexcore: ` / `<area>: ` the
 * lines carry.
 */
export function lineLogger(logger: Logger): (line: string, level?: "warn" | "error") => void {
  return (line, level) => logger[level ?? "info"](line.replace(PREFIX, ""));
}
