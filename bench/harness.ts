import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { cpus, platform, release, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import type { ConnectionOptions, NatsConnection } from "@nats-io/transport-node";
import { Bench } from "tinybench";
import { generateNatsUsers, SERVICE_USER } from "../gateway/index.js";
import { credentialsToEnv, natsConnectOptions, startNatsServer } from "../streams/index.js";
import type { NatsCredentials, NatsServer, NatsServerOptions } from "../streams/index.js";
import * as ss from "simple-statistics";

/** One measured figure, as written to the JSON report. */
export interface BenchResult {
  readonly name: string;
  /** `events/s`, `ms`, `req/s`, `points/s`, a ratio `x`, ... */
  readonly unit: string;
  readonly median: number;
  readonly samples: readonly number[];
  /** Anything else worth keeping (baseline name, ratio, goal). */
  readonly extra?: Readonly<Record<string, unknown>>;
}

/** A suite: `npm run bench -- <name>`. */
export interface Suite {
  readonly name: string;
  readonly description: string;
  run(ctx: SuiteContext): Promise<BenchResult[]>;
}

export interface SuiteContext {
  /** Arguments after the suite name. */
  readonly args: readonly string[];
  /** Progress lines for people (stderr). */
  readonly log: (line: string) => void;
  /** Environment facts added to the report (e.g. the nats-server version). */
  readonly env: Record<string, unknown>;
}

export interface Task {
  readonly name: string;
  readonly unit: string;
  /**
   * One iteration. Return the figure of this iteration when it is not a rate (e.g. a p99
   * in ms); return nothing to have `ops / seconds` recorded.
   */
  fn(): Promise<number | void> | number | void;
  /** Operations one iteration performs, for rates. @default 1 */
  readonly ops?: number;
  readonly extra?: Readonly<Record<string, unknown>>;
}

/** Iterations measured per task. */
export const DEFAULT_ITERATIONS = 5;
/** Iterations run and thrown away first. */
export const DEFAULT_WARMUP = 1;

/** The median (simple-statistics), NaN for no values. */
export function median(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : ss.median([...values]);
}

/** The `p`th percentile (0-100, simple-statistics' quantile), NaN for no values. */
export function percentile(values: readonly number[], p: number): number {
  return values.length === 0 ? Number.NaN : ss.quantile([...values], p / 100);
}

/**
 * Runs tasks with tinybench, one after another with a warm-up each, and turns each
 * iteration into a sample: `ops / seconds` for rates, or the figure `fn` returned.
 */
export async function runTasks(tasks: readonly Task[], options: { iterations?: number; warmup?: number; log?: (line: string) => void } = {}): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  for (const task of tasks) {
    const values: number[] = [];
    const bench = new Bench({
      iterations: options.iterations ?? DEFAULT_ITERATIONS,
      warmupIterations: options.warmup ?? DEFAULT_WARMUP,
      warmup: (options.warmup ?? DEFAULT_WARMUP) > 0,
      time: 0,
      warmupTime: 0,
      retainSamples: true,
    });
    bench.add(task.name, async () => {
      const started = performance.now();
      const value = await task.fn();
      const ms = performance.now() - started;
      values.push(typeof value === "number" ? value : ((task.ops ?? 1) * 1000) / ms);
    });
    // tinybench runs the warm-up iterations first; keep only the measured ones.
    await bench.run();
    const kept = values.slice(-(options.iterations ?? DEFAULT_ITERATIONS));
    const result: BenchResult = { name: task.name, unit: task.unit, median: median(kept), samples: kept, ...(task.extra ? { extra: task.extra } : {}) };
    options.log?.(`  ${task.name}: ${formatNumber(result.median)} ${task.unit} (median of ${kept.length})`);
    results.push(result);
  }
  return results;
}

export function formatNumber(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100) return Math.round(n).toLocaleString("en-US");
  return n.toPrecision(3);
}

/** A ratio between two results of the same run, as a result of its own. */
export function ratio(name: string, a: BenchResult, b: BenchResult, goal?: number): BenchResult {
  const value = a.median / b.median;
  return { name, unit: "x", median: value, samples: [value], extra: { of: a.name, to: b.name, ...(goal === undefined ? {} : { goal, met: value >= goal }) } };
}

export function environment(): Record<string, unknown> {
  const cpu = cpus();
  return {
    node: process.version,
    platform: `${platform()} ${release()}`,
    cpus: cpu.length,
    cpuModel: cpu[0]?.model,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    date: new Date().toISOString(),
  };
}

/** Prints a table for people. */
export function printTable(suite: string, results: readonly BenchResult[]): void {
  const rows = results.map((r) => [r.name, formatNumber(r.median), r.unit, String(r.samples.length), r.extra ? JSON.stringify(r.extra) : ""]);
  const header = ["name", "median", "unit", "n", "notes"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 1 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join("  ");
  process.stdout.write(`\n${suite}\n${line(header)}\n${widths.map((w) => "-".repeat(w)).join("  ")}\n`);
  for (const r of rows) process.stdout.write(`${line(r)}\n`);
}

/** Writes `{ suite, env, results }`. */
export async function writeJson(file: string, suite: string, env: Record<string, unknown>, results: readonly BenchResult[]): Promise<void> {
  await writeFile(file, `${JSON.stringify({ suite, env, results }, null, 2)}\n`);
}

/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on Linux's usual builds). */
const CLOCK_TICKS = 100;

/** CPU time (user + system, ms) a process has used so far, from /proc; undefined where there is none. */
export function processCpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces), from field 3 on: utime is 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}

/**
 * Where the CPU of a measured run went: this process and nats-server, in µs per event,
 * so a figure can be checked against what 2 cores allow (`cores` = CPU s per wall s).
 */
export interface CpuSplit {
  readonly benchUsPerEvent: number;
  readonly serverUsPerEvent: number | undefined;
  readonly cores: number;
}

/** Starts measuring; the returned function ends the measurement for `events` events. */
export function cpuMeter(serverPid: number | undefined): (events: number) => CpuSplit {
  const usage = process.cpuUsage();
  const server = processCpuMs(serverPid);
  const started = performance.now();
  return (events) => {
    const own = process.cpuUsage(usage);
    const serverMs = server === undefined ? undefined : (processCpuMs(serverPid) ?? server) - server;
    const wallMs = performance.now() - started;
    const ownMs = (own.user + own.system) / 1000;
    return {
      benchUsPerEvent: Math.round((ownMs * 1000 * 10) / events) / 10,
      serverUsPerEvent: serverMs === undefined ? undefined : Math.round((serverMs * 1000 * 10) / events) / 10,
      cores: Math.round(((ownMs + (serverMs ?? 0)) / wallMs) * 100) / 100,
    };
  };
}

/** A nats-server for one suite, authorization on as in production and tests. */
export interface BenchNats extends AsyncDisposable {
  readonly server: NatsServer;
  /** Connected as FlexCore's service user. */
  readonly nc: NatsConnection;
  /** `NATS_URL` and the service user's credential variables, for a child process. */
  readonly env: Readonly<Record<string, string>>;
  /** Another connection as the service user; closed with the fixture. */
  connect(extra?: ConnectionOptions): Promise<NatsConnection>;
  close(): Promise<void>;
}

/**
 * Starts the suite's nats-server (the pinned one, see streams/server.ts) with FlexCore's
 * service user and no anonymous access, as `flexcore up` and the tests run it, and
 * connects as that user. Suites never connect anonymously.
 */
export async function startBenchNats(options: NatsServerOptions = {}): Promise<BenchNats> {
  const seedsDir = await mkdtemp(join(tmpdir(), "flexcore-bench-seeds-"));
  let server: NatsServer | undefined;
  const connections: NatsConnection[] = [];
  const close = async (): Promise<void> => {
    for (const c of connections) if (!c.isClosed()) await c.close().catch(() => undefined);
    await server?.close();
    await rm(seedsDir, { recursive: true, force: true });
  };
  try {
    const users = await generateNatsUsers({ tenants: [], seedsDir });
    const service = users.users.find((u) => u.name === SERVICE_USER)!;
    const credentials: NatsCredentials = { nkeySeedFile: service.seedFile };
    const started = await startNatsServer({ ...options, extraConfig: `${options.extraConfig ?? ""}\n${users.config}` });
    server = started;
    const open = async (extra: ConnectionOptions = {}): Promise<NatsConnection> => {
      const c = await connect(natsConnectOptions(started.url, credentials, { name: "flexcore-bench", ...extra }));
      connections.push(c);
      return c;
    };
    const nc = await open();
    return {
      server: started,
      nc,
      env: { NATS_URL: started.url, ...credentialsToEnv(credentials) },
      connect: open,
      close,
      [Symbol.asyncDispose]: close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
