/**
 * Scale-out (`npm run bench -- scaleout [--json FILE]`, issue #18): a CPU-bound processor
 * (`anomaly`, `method: iforest`, `emit: all`) with `scale: partitioned`, each instance
 * limited to one worker thread.
 * - `scaleout.1-instance` / `scaleout.2-instances`: events/s from the first publish to the
 *   last acknowledgement, the instances started and their partitions settled first; the
 *   ratio of the two (goal ≥ 1.6×) in the same run.
 * - `scaleout.rebalance.pause.p99`: under a steady load, a second instance (a child process)
 *   joins, is killed with SIGKILL, joins, stops, joins: 5 moves. For each move, the gap in
 *   a moved partition's outputs is the time from its old owner's last output before the
 *   move to its new owner's first output after it; the figure is the p99 over the moved
 *   partitions of the 5 moves (goal ≤ 2 × the lease TTL).
 * Instances here: one in this process (A); B a child process (`processors/fixtures/host.ts`),
 * with its own event loop and worker thread. Each instance on a core of its own (below).
 */
import { execFileSync } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createPublisher, encodeEvent, ensureTopology, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { parseConfig, partitionOf, partitionRules, pipelineSections, startProcessorRuntime } from "../processors/index.js";
import type { ProcessorRuntime } from "../processors/index.js";
import { startHost } from "../processors/testing.js";
import { percentile, ratio, startBenchNats } from "./harness.js";
import type { BenchResult, Suite } from "./harness.js";

export const RATIO_GOAL = 1.6;
const LEASE_TTL_MS = 2_000;
const PARTITIONS = 16;
const KEYS = 256;
/** Events per throughput run (small: the machine is shared; the lead raises it on a quiet one). */
const EVENTS = Number(process.env.SCALEOUT_EVENTS ?? 8_000);
const ITERATIONS = Number(process.env.SCALEOUT_ITERATIONS ?? 2);
/** Steady load during the moves, events/s. */
const MOVE_RATE = 400;
const MOVES = 5;
/**
 * Each instance on a core of its own (this process, instance A with its worker and the
 * publisher, on CPU 0; instance B on CPU 1; nats-server anywhere), as if each had a machine
 * of its own: scale-out adds machines. `SCALEOUT_PIN=0` runs both on the same cores; then one
 * instance with one worker thread already uses about 1.6 of a 2-core machine (its worker, its
 * main thread, V8's GC helper threads), and a second one on the same cores can add little
 * (docs/benchmarks.md, run Z).
 */
const PINNED = process.env.SCALEOUT_PIN !== "0";

let run = 0;

/**
 * The processor: an isolation forest. For throughput it refits on every point (about 1-2 ms
 * of CPU per event), so the worker threads, not the main threads or the server, are what
 * two instances add; for the moves, a lighter one (refit every 8 points) under a steady load.
 */
const OPTIONS = {
  throughput: "{ method: iforest, window: 32, trees: 400, emit: all, refit_every: 1 }",
  moves: "{ method: iforest, window: 128, trees: 50, emit: all, refit_every: 8 }",
} as const;

const yaml = (name: string, tenant: string, use: keyof typeof OPTIONS = "moves"): string =>
  `runtime: { threads: 1 }\nprocessors:\n  - name: ${name}\n    kind: anomaly\n    subjects: ["evt.${tenant}.sensor.*"]\n    partitions: ${PARTITIONS}\n    batch_size: 256\n    scale: partitioned\n    options: ${OPTIONS[use]}\n`;

function reading(i: number): number {
  const noise = ((Math.imul(i + 1, 2654435761) >>> 0) / 4294967296 - 0.5) * 2;
  return 100 + noise + (i % 997 === 0 ? 25 : 0);
}

async function publishLoad(publisher: Publisher, tenant: string, from: number, n: number): Promise<void> {
  const pending: Array<Promise<unknown>> = [];
  for (let i = from; i < from + n; i++) {
    const e = encodeEvent({ id: `${tenant}-${i}`, type: "ReadingRecorded", data: { value: reading(i) }, time: new Date(Date.UTC(2026, 0, 1) + i * 1000) });
    pending.push(publisher.publish(`evt.${tenant}.sensor.s${i % KEYS}`, e.data, { headers: e.headers }));
    if (pending.length >= 4096) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
}

function start(nc: NatsConnection, name: string, tenant: string, instanceId: string, use: keyof typeof OPTIONS = "moves"): Promise<ProcessorRuntime> {
  return startProcessorRuntime(nc, {
    processors: parseConfig(yaml(name, tenant, use), pipelineSections({ threads: 1 })).processors,
    threads: 1,
    metricsIntervalMs: 0,
    instanceId,
    leaseTtlMs: LEASE_TTL_MS,
    log: () => undefined,
  });
}

async function until(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const held = (r: ProcessorRuntime): number => r.metrics()[0]!.partitions?.length ?? 0;

/**
 * One throughput run: instance A in this process, and for two instances B in a child process
 * of its own (its own event loop and worker thread, as on another machine; two instances in
 * one process shared one main thread and measured that, not the scale-out). Events/s from the
 * first publish to the last output stored.
 */
async function throughput(nc: NatsConnection, natsEnv: Readonly<Record<string, string>>, publisher: Publisher, instances: 1 | 2): Promise<number> {
  run += 1;
  const tenant = `so${run}`;
  const name = `scale${run}`;
  const dir = await mkdtemp(join(tmpdir(), "flexcore-bench-scaleout-"));
  const configFile = join(dir, "flexcore.yaml");
  await writeFile(configFile, yaml(name, tenant, "throughput"));
  const a = await start(nc, name, tenant, "A", "throughput");
  let host: ReturnType<typeof startHost> | undefined;
  try {
    if (instances === 2) {
      host = startHost({ ...natsEnv, FLEXCORE_CONFIG: configFile, FLEXCORE_INSTANCE: "B", FLEXCORE_LEASE_TTL_MS: String(LEASE_TTL_MS) }, PINNED ? { cpus: "1" } : {});
      await host.ready;
    }
    await until(() => held(a) === PARTITIONS / instances, 30_000, "the partitions to settle");
    const t0 = performance.now();
    await publishLoad(publisher, tenant, 0, EVENTS);
    await until(async () => (await countDerived(nc, tenant, name)) >= EVENTS, 600_000, `${EVENTS} events processed`);
    return EVENTS / ((performance.now() - t0) / 1000);
  } finally {
    if (host) {
      host.child.kill("SIGTERM");
      await host.exited;
    }
    await a.close();
    await rm(dir, { recursive: true, force: true });
  }
}

interface Out {
  readonly at: number;
  readonly partition: number;
  readonly instance: string;
}

/** The derived events of a processor: when stored, from which partition and instance. */
async function outputs(nc: NatsConnection, tenant: string, name: string, rules: ReturnType<typeof partitionRules>): Promise<Out[]> {
  const consumer = await jetstream(nc).consumers.get(STREAMS.derived, { filter_subjects: `drv.${tenant}.${name}.>` });
  const out: Out[] = [];
  const messages = await consumer.consume({ max_messages: 4_096 });
  for await (const m of messages) {
    const key = m.subject.split(".")[3]!;
    out.push({ at: m.info.timestampNanos / 1e6, partition: partitionOf(rules, `evt.${tenant}.sensor.${key}`, PARTITIONS)!, instance: m.headers?.get("Flex-Instance") ?? "" });
    if (m.info.pending === 0) break;
  }
  await messages.close().catch(() => undefined);
  return out;
}

async function rebalancePauses(nc: NatsConnection, natsEnv: Readonly<Record<string, string>>, publisher: Publisher, log: (line: string) => void): Promise<number[]> {
  run += 1;
  const tenant = `sm${run}`;
  const name = `moves${run}`;
  const dir = await mkdtemp(join(tmpdir(), "flexcore-bench-scaleout-"));
  const configFile = join(dir, "flexcore.yaml");
  await writeFile(configFile, yaml(name, tenant));
  const a = await start(nc, name, tenant, "A");
  let host: ReturnType<typeof startHost> | undefined;
  let published = 0;
  let loading = true;
  const load = (async () => {
    const t0 = performance.now();
    while (loading) {
      const due = Math.floor(((performance.now() - t0) / 1000) * MOVE_RATE);
      if (due > published) {
        const n = due - published;
        await publishLoad(publisher, tenant, published, n);
        published += n;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const moves: Array<{ at: number; kind: string }> = [];
  const settle = (bHolds: boolean): Promise<void> => until(() => (bHolds ? held(a) === PARTITIONS / 2 : held(a) === PARTITIONS), 30_000, "the move to settle");
  try {
    await until(() => held(a) === PARTITIONS, 10_000, "A to take every partition");
    await new Promise((r) => setTimeout(r, 1_000));
    const steps = ["join", "kill", "join", "stop", "join"].slice(0, MOVES);
    for (const step of steps) {
      const at = Date.now();
      if (step === "join") {
        host = startHost({ ...natsEnv, FLEXCORE_CONFIG: configFile, FLEXCORE_INSTANCE: "B", FLEXCORE_LEASE_TTL_MS: String(LEASE_TTL_MS) });
        await host.ready;
        moves.push({ at, kind: step });
        await settle(true);
      } else {
        moves.push({ at, kind: step });
        host!.child.kill(step === "kill" ? "SIGKILL" : "SIGTERM");
        await host!.exited;
        await settle(false);
      }
      log(`  move ${moves.length} (${step}) settled in ${Date.now() - at} ms`);
      await new Promise((r) => setTimeout(r, 1_500));
    }
    loading = false;
    await load;
    await until(async () => (await countDerived(nc, tenant, name)) >= published, 120_000, "every output of the moves run");
  } finally {
    loading = false;
    await load.catch(() => undefined);
    if (host && host.child.exitCode === null) host.child.kill("SIGTERM");
    if (host) await host.exited;
    await a.close();
    await rm(dir, { recursive: true, force: true });
  }
  const rules = partitionRules(name, [`evt.${tenant}.sensor.*`], PARTITIONS);
  const outs = await outputs(nc, tenant, name, rules);
  outs.sort((x, y) => x.at - y.at);
  const gaps: number[] = [];
  for (let i = 0; i < moves.length; i++) {
    const from = moves[i]!.at;
    const to = moves[i + 1]?.at ?? Number.POSITIVE_INFINITY;
    for (let p = 0; p < PARTITIONS; p++) {
      const mine = outs.filter((o) => o.partition === p);
      const before = mine.filter((o) => o.at < from).at(-1);
      const after = mine.find((o) => o.at >= from && o.at < to && before !== undefined && o.instance !== before.instance);
      if (before && after) gaps.push(after.at - before.at);
    }
  }
  return gaps;
}

async function countDerived(nc: NatsConnection, tenant: string, name: string): Promise<number> {
  const info = await (await jetstreamManager(nc)).streams.info(STREAMS.derived, { subjects_filter: `drv.${tenant}.${name}.>` });
  return Object.values(info.state.subjects ?? {}).reduce((x, y) => x + y, 0);
}

export const suite: Suite = {
  name: "scaleout",
  description: `anomaly iforest with scale: partitioned (${PARTITIONS} partitions), 1 worker thread per instance${PINNED ? " and one CPU each (taskset)" : " (unpinned)"}: 1 vs 2 instances (${EVENTS} events x ${ITERATIONS}), and the output gap of moved partitions over ${MOVES} moves (lease TTL ${LEASE_TTL_MS} ms)`,
  async run({ log, env }) {
    await using nats = await startBenchNats();
    env.natsServer = nats.server.version;
    env.pinned = PINNED;
    // After nats-server started (it stays unpinned): every thread of this process, and the
    // worker threads it starts later, on CPU 0.
    if (PINNED) execFileSync("taskset", ["-a", "-cp", "0", String(process.pid)], { stdio: "ignore" });
    await ensureTopology(nats.nc, { leaseTtlMs: 30_000 });
    const publisher = createPublisher(nats.nc);
    try {
      const one: number[] = [];
      const two: number[] = [];
      for (let i = 0; i < ITERATIONS; i++) {
        one.push(await throughput(nats.nc, nats.env, publisher, 1));
        log(`  1 instance: ${Math.round(one.at(-1)!)} events/s`);
        two.push(await throughput(nats.nc, nats.env, publisher, 2));
        log(`  2 instances: ${Math.round(two.at(-1)!)} events/s`);
      }
      const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
      const r1: BenchResult = { name: "scaleout.1-instance", unit: "events/s", median: med(one), samples: one, extra: { events: EVENTS, threadsPerInstance: 1 } };
      const r2: BenchResult = { name: "scaleout.2-instances", unit: "events/s", median: med(two), samples: two, extra: { events: EVENTS, threadsPerInstance: 1 } };
      const gaps = await rebalancePauses(nats.nc, nats.env, publisher, log);
      const p99 = percentile(gaps, 99);
      return [
        r1,
        r2,
        ratio("scaleout.2-instances/1-instance", r2, r1, RATIO_GOAL),
        { name: "scaleout.rebalance.pause.p99", unit: "ms", median: p99, samples: gaps, extra: { moves: MOVES, leaseTtlMs: LEASE_TTL_MS, goal: 2 * LEASE_TTL_MS, met: p99 <= 2 * LEASE_TTL_MS, max: Math.max(...gaps) } },
      ];
    } finally {
      await publisher.close();
    }
  },
};
