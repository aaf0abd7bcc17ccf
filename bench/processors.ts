/**
 * Processor runtime throughput (`npm run bench -- processors [--json FILE]`):
 * - `anomaly.pool.<n>t`: points/s scored by the Piscina pool alone (typed-array tasks of
 *   one key's series, the anomaly z-score kernel), 1 and 2 worker threads;
 * - `anomaly.e2e.<n>t`: events/s through consume → pool → derived publish → checkpoint →
 *   ack, z-score with the default emit (flagged only; about 1% anomalies), 1 and 2 threads,
 *   timed from before the runtime starts; `extra.steadyMedian` times the same runs from the
 *   first acknowledged event (pool and consumer start-up left out), `extra.cpuUsPerEvent`
 *   is the CPU time of the bench process (main thread and workers) per event;
 * - `consume-ack.baseline`: the same events pulled and acked one by one by a bare consumer
 *   (no work); `consume-ackall.baseline`: the same on an ack-all consumer acked once per
 *   1,024 messages, as the runtime acks: the ceiling the runtime is measured against;
 * - the k-means results of `bench/kmeans.ts` (`kmeansResults`).
 * Extra result sources go in {@link EXTRA_RESULTS}.
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createPublisher, encodeEvent, ensureTopology, STREAMS } from "../streams/index.js";
import { anomaly, anomalyOptions, createProcessorPool, parseConfig, pipelineSections, startProcessorRuntime } from "../processors/index.js";
import type { SeriesTask } from "../processors/index.js";
import { ratio, runTasks, startBenchNats } from "./harness.js";
import type { BenchResult, Suite } from "./harness.js";
import { kmeansResults } from "./kmeans.js";

/** Goals of the issue. */
export const E2E_GOAL = 50_000;
export const POOL_GOAL = 1_000_000;

const E2E_EVENTS = 100_000;
const E2E_KEYS = 100;
const E2E_BATCH = 1_024;
const POOL_KEYS = 16;
const POOL_CHUNK = 16_384;
const POOL_CHUNKS_PER_KEY = 8;
const ANOMALY_RATE = 0.01;

/** Other result sources of this suite (each returns finished results). */
export const EXTRA_RESULTS: ReadonlyArray<{ readonly name: string; run(log: (line: string) => void): Promise<BenchResult[]> }> = [
  { name: "kmeans", run: (log) => kmeansResults({ log }) },
];

// Uniform noise has no tails, so the ~1% injected spikes are what z > 3 flags.
function reading(i: number): number {
  const noise = ((Math.imul(i + 1, 2654435761) >>> 0) / 4294967296 - 0.5) * 2;
  const spike = (Math.imul(i + 7, 40503) >>> 0) % 10_000 < ANOMALY_RATE * 10_000;
  return 100 + noise + (spike ? 25 : 0);
}

async function load(nc: NatsConnection, tenant: string, n: number): Promise<void> {
  const publisher = createPublisher(nc);
  const pending: Array<Promise<unknown>> = [];
  for (let i = 0; i < n; i++) {
    const e = encodeEvent({ id: `${tenant}-${i}`, type: "ReadingRecorded", data: { value: reading(i) }, time: new Date(Date.UTC(2026, 0, 1) + i) });
    pending.push(publisher.publish(`evt.${tenant}.sensor.s${i % E2E_KEYS}`, e.data, { headers: e.headers }));
    if (pending.length >= 8192) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
  await publisher.close();
}

let run = 0;

interface E2eRun {
  /** Events/s from before `startProcessorRuntime` (pool and consumer start-up included). */
  readonly rate: number;
  /** Events/s from the first acknowledged event to the last (start-up excluded). */
  readonly steadyRate: number;
  readonly outputs: number;
  /** CPU time of this process (main thread and workers) per event, in µs. */
  readonly cpuUsPerEvent: number;
}

async function e2eOnce(nc: NatsConnection, tenant: string, threads: number): Promise<E2eRun> {
  run += 1;
  const name = `bench${run}`;
  const yaml = `processors:\n  - name: ${name}\n    kind: anomaly\n    subjects: ["evt.${tenant}.sensor.*"]\n    partitions: 8\n    batch_size: ${E2E_BATCH}\n    max_in_flight: 32768\n    options: { method: zscore, window: 100 }\n`;
  const processors = parseConfig(yaml, pipelineSections({ threads })).processors;
  const cpu = process.cpuUsage();
  const started = performance.now();
  const runtime = await startProcessorRuntime(nc, { processors, threads, metricsIntervalMs: 0, log: () => undefined });
  let first: { at: number; processed: number } | undefined;
  try {
    for (;;) {
      const m = runtime.metrics()[0]!;
      const now = performance.now();
      if (!first && m.processed > 0) first = { at: now, processed: m.processed };
      if (m.processed >= E2E_EVENTS) {
        const used = process.cpuUsage(cpu);
        return {
          rate: (E2E_EVENTS * 1000) / (now - started),
          steadyRate: first && now > first.at ? ((E2E_EVENTS - first.processed) * 1000) / (now - first.at) : 0,
          outputs: m.outputs,
          cpuUsPerEvent: (used.user + used.system) / E2E_EVENTS,
        };
      }
      // metrics() sorts 8192 latencies for its percentiles: polled every 5 ms it cost the
      // main thread a few % of the run.
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    await runtime.close();
  }
}

async function baselineOnce(nc: NatsConnection, tenant: string, ackAll = false): Promise<number> {
  run += 1;
  const jsm = await jetstreamManager(nc);
  const durable = `bench_base${run}`;
  await jsm.consumers.add(STREAMS.events, { durable_name: durable, ack_policy: ackAll ? AckPolicy.All : AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, filter_subject: `evt.${tenant}.sensor.*`, max_ack_pending: 32_768 });
  const consumer = await jetstream(nc).consumers.get(STREAMS.events, durable);
  const started = performance.now();
  let seen = 0;
  // The same pulls as the runtime (up to two batches per partition), without the work;
  // with ackAll, one ack per 1,024 messages (and the last), as the runtime's low-water mark.
  while (seen < E2E_EVENTS) {
    const batch = await consumer.fetch({ max_messages: Math.min(8 * E2E_BATCH * 2, E2E_EVENTS - seen), expires: 5_000 });
    for await (const m of batch) {
      seen += 1;
      if (!ackAll || seen % E2E_BATCH === 0 || seen === E2E_EVENTS) m.ack();
    }
  }
  const rate = (E2E_EVENTS * 1000) / (performance.now() - started);
  await jsm.consumers.delete(STREAMS.events, durable);
  return rate;
}

async function poolOnce(threads: number): Promise<number> {
  const pool = createProcessorPool({ threads });
  try {
    await pool.warmUp();
    const options = anomalyOptions({ method: "zscore", window: 100 });
    const started = performance.now();
    await Promise.all(
      Array.from({ length: POOL_KEYS }, async (_, k) => {
        let state: string | null = null;
        for (let c = 0; c < POOL_CHUNKS_PER_KEY; c++) {
          const values = new Float64Array(POOL_CHUNK);
          for (let i = 0; i < POOL_CHUNK; i++) values[i] = reading(k * 1_000_003 + c * POOL_CHUNK + i);
          const task: SeriesTask = { op: "series", kind: anomaly.kind, options, key: `s${k}`, state, values };
          state = (await pool.runSeries(task)).state;
        }
      }),
    );
    return (POOL_KEYS * POOL_CHUNKS_PER_KEY * POOL_CHUNK * 1000) / (performance.now() - started);
  } finally {
    await pool.close();
  }
}

export const suite: Suite = {
  name: "processors",
  description: `anomaly processor: pool alone (points/s) and end to end (events/s, ${E2E_EVENTS} events over ${E2E_KEYS} keys, batch ${E2E_BATCH}), 1 vs 2 threads, beside a bare consume+ack`,
  async run({ log, env, args }) {
    const results: BenchResult[] = [];
    const poolTasks = [1, 2].map((threads) => ({
      name: `anomaly.pool.${threads}t`,
      unit: "points/s",
      fn: () => poolOnce(threads),
      extra: { goal: POOL_GOAL, threads, pointsPerTask: POOL_CHUNK },
    }));
    log("anomaly.pool: typed-array tasks, z-score window 100");
    const pool = await runTasks(poolTasks, { iterations: 5, warmup: 1, log });
    results.push(...pool.map((r) => ({ ...r, extra: { ...r.extra, met: r.median >= POOL_GOAL } })));
    results.push(ratio("anomaly.pool.2t/1t", pool[1]!, pool[0]!));

    const nats = await startBenchNats();
    const { server, nc } = nats;
    env.natsServer = server.version;
    try {
      await ensureTopology(nc);
      const tenant = "benchp";
      log(`loading ${E2E_EVENTS} events over ${E2E_KEYS} keys`);
      await load(nc, tenant, E2E_EVENTS);
      let flagged = 0;
      const side = new Map<number, { steady: number[]; cpu: number[] }>([[1, { steady: [], cpu: [] }], [2, { steady: [], cpu: [] }]]);
      const e2eTasks = [1, 2].map((threads) => ({
        name: `anomaly.e2e.${threads}t`,
        unit: "events/s",
        fn: async () => {
          const r = await e2eOnce(nc, tenant, threads);
          flagged = r.outputs;
          side.get(threads)!.steady.push(r.steadyRate);
          side.get(threads)!.cpu.push(r.cpuUsPerEvent);
          return r.rate;
        },
        extra: { goal: E2E_GOAL, threads, events: E2E_EVENTS, keys: E2E_KEYS, batch: E2E_BATCH },
      }));
      const baseline = await runTasks(
        [
          { name: "consume-ack.baseline", unit: "events/s", fn: () => baselineOnce(nc, tenant), extra: { events: E2E_EVENTS, ackPolicy: "explicit" } },
          { name: "consume-ackall.baseline", unit: "events/s", fn: () => baselineOnce(nc, tenant, true), extra: { events: E2E_EVENTS, ackPolicy: "all", ackEvery: E2E_BATCH } },
        ],
        { iterations: 3, warmup: 1, log },
      );
      const e2e = await runTasks(e2eTasks, { iterations: 3, warmup: 1, log });
      results.push(...baseline);
      // Beside each median (start-up included): the steady rate (first ack to last, the
      // warm-up of the runs included) and the CPU time per event of this process.
      const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
      results.push(
        ...e2e.map((r, i) => {
          const s = side.get(i + 1)!;
          return { ...r, extra: { ...r.extra, met: r.median >= E2E_GOAL, flaggedOutputs: flagged, steadyMedian: Math.round(median(s.steady)), steadyMet: median(s.steady) >= E2E_GOAL, cpuUsPerEvent: Number(median(s.cpu).toFixed(1)) } };
        }),
      );
      results.push(ratio("anomaly.e2e.2t/1t", e2e[1]!, e2e[0]!));
      results.push(ratio("anomaly.e2e.2t/baseline", e2e[1]!, baseline[0]!));
      results.push(ratio("anomaly.e2e.1t/ackall-baseline", e2e[0]!, baseline[1]!));
    } finally {
      await nats.close();
    }
    if (!args.includes("--no-extra")) {
      for (const extra of EXTRA_RESULTS) {
        log(`${extra.name}:`);
        results.push(...(await extra.run(log)));
      }
    }
    return results;
  },
};
