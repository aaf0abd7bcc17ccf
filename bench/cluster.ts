import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import type { StreamConfig } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { connect } from "@nats-io/transport-node";
import { createPublisher, encodeEvent, ensureTopology, natsConnectOptions, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { startTestCluster } from "../test/nats-cluster.js";
import type { TestCluster } from "../test/nats-cluster.js";
import { firstStoredAfter, startUp } from "../test/flexcore-up.js";
import type { UpProcess } from "../test/flexcore-up.js";
import { median, percentile, ratio, runTasks } from "./harness.js";
import type { BenchResult, Suite } from "./harness.js";

/** Acknowledged events per ingest iteration. */
const INGEST_N = 20_000;
/** Leader kills measured for the write gap. */
const KILLS = 5;
/** Ack timeout of one attempt in the write-gap figure: its resolution. */
const GAP_ACK_TIMEOUT_MS = 250;
/** Pause before an unacked event is sent again (same id). */
const GAP_RETRY_MS = 25;
/** Instance kills measured for the processor takeover. */
const TAKEOVERS = 3;
/** The instances' `lease_ttl` in the takeover figure (production default: 30 s). */
const LEASE_TTL_MS = 5_000;
/** Events per second published while instances are killed. */
const LOAD_RATE = 400;

let serial = 0;
function reading(i: number) {
  serial += 1;
  return encodeEvent({ id: `c${serial}`, type: "ReadingRecorded", data: { sensor: `s-${i % 1000}`, site: "plant-7", value: 20 + (i % 50) / 10, seq: i } });
}

/** A copy of FLEX_EVENTS' configuration under another name, subjects and replica count. */
async function benchStream(nc: NatsConnection, name: string, prefix: string, replicas: number): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const base = (await jsm.streams.info(STREAMS.events)).config;
  await jsm.streams.delete(name).catch(() => undefined);
  const config: Partial<StreamConfig> & { name: string } = { ...base, name, subjects: [`${prefix}.>`], num_replicas: replicas };
  delete (config as { metadata?: unknown }).metadata;
  await jsm.streams.add(config);
}

async function ingest(publisher: Publisher, prefix: string, n: number): Promise<void> {
  const pending: Array<Promise<unknown>> = [];
  for (let i = 0; i < n; i++) {
    const e = reading(i);
    pending.push(publisher.publish(`${prefix}.bench.sensor.s${i % 1000}`, e.data, { headers: e.headers }));
    if (pending.length >= 4096) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
}

async function replicasCurrent(nc: NatsConnection, stream: string): Promise<boolean> {
  const info = await (await jetstreamManager(nc)).streams.info(stream);
  const replicas = info.cluster?.replicas ?? [];
  return replicas.length === 2 && replicas.every((r) => r.current && !r.offline && (r.lag ?? 0) === 0);
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

/**
 * One leader kill under a steady acked load (256 events in flight, each retried with its
 * id until acked): the longest time between consecutive acks from 1 s before the kill
 * until 2 s after publishing is back. Each attempt waits `GAP_ACK_TIMEOUT_MS` and is retried
 * by the loop at once, so the figure is the cluster's, not a backoff's (the publisher's own
 * retries double their timeout).
 */
async function writeGap(cluster: TestCluster, log: (line: string) => void): Promise<number> {
  const publisher = createPublisher(cluster.nc, { ackTimeoutMs: GAP_ACK_TIMEOUT_MS, maxAttempts: 1, deadlineMs: GAP_ACK_TIMEOUT_MS * 2 });
  const acks: number[] = [];
  let stop = false;
  let i = 0;
  const worker = async (): Promise<void> => {
    while (!stop) {
      const e = reading(i++);
      for (let attempt = 0; !stop; attempt++) {
        const ok = await publisher.publish(`evt.benchgap.sensor.s${i % 100}`, e.data, { headers: e.headers }).then(() => true, () => false);
        if (ok) {
          acks.push(performance.now());
          break;
        }
        await sleep(GAP_RETRY_MS);
      }
    }
  };
  const workers = Array.from({ length: 256 }, () => worker());
  await sleep(1_500);
  const leader = await cluster.leaderOf(STREAMS.events);
  // A client on the killed node also reconnects to another one first.
  const clientOnLeader = cluster.nc.info?.server_name === `n${leader}`;
  const killedAt = performance.now();
  await cluster.nodes[leader]!.kill("SIGKILL");
  // Publishing is back when acks arrive after the kill; keep 2 s of them.
  await until("acks after the leader kill", async () => acks.some((t) => t > killedAt + 100), 60_000);
  const back = acks.find((t) => t > killedAt + 100)!;
  await sleep(Math.max(0, back + 2_000 - performance.now()));
  stop = true;
  await Promise.all(workers);
  await publisher.close();
  const window = acks.filter((t) => t >= killedAt - 1_000).sort((a, b) => a - b);
  let gap = 0;
  for (let k = 1; k < window.length; k++) gap = Math.max(gap, window[k]! - window[k - 1]!);
  const firstAck = back - killedAt;
  log(`  leader n${leader} killed${clientOnLeader ? " (the client's server)" : ""}: first ack ${firstAck.toFixed(0)} ms after the kill, longest gap between acks ${gap.toFixed(0)} ms`);
  await cluster.nodes[leader]!.restart();
  await until("every replica current", () => replicasCurrent(cluster.nc, STREAMS.events), 90_000);
  return gap;
}

/** Publishes `LOAD_RATE` events/s to the processor's subjects until stopped. */
function steadyLoad(nc: NatsConnection): { stop(): Promise<void> } {
  const publisher = createPublisher(nc, { ackTimeoutMs: 1_000, maxAttempts: 5 });
  let stopped = false;
  let i = 0;
  const loop = (async () => {
    while (!stopped) {
      const tick = Date.now();
      await Promise.allSettled(Array.from({ length: LOAD_RATE / 10 }, () => {
        const e = reading(i++);
        return publisher.publish(`evt.benchtk.sensor.s${i % 50}`, e.data, { headers: e.headers });
      }));
      await sleep(Math.max(0, 100 - (Date.now() - tick)));
    }
  })();
  return { stop: async () => {
    stopped = true;
    await loop;
    await publisher.close();
  } };
}

/**
 * Processor takeover: two `flexcore up` on the cluster under a steady load; kill -9 of the
 * processor's owner; the figure is from the kill to the first output stored after the
 * standby logged that it took the lease. Each round starts a new standby.
 */
async function takeovers(cluster: TestCluster, dir: string, log: (line: string) => void): Promise<number[]> {
  const processor = "bench-takeover";
  const config = join(dir, "flexcore.yaml");
  await writeFile(config, `
runtime:
  threads: 1
  lease_ttl: ${LEASE_TTL_MS}ms
processors:
  - name: ${processor}
    kind: anomaly
    subjects: ["evt.benchtk.sensor.*"]
    partitions: 2
    options: { window: 20, emit: all }
workflows:
  runner: false
`);
  const env = (name: string) => ({ ...cluster.env, FLEXCORE_REPLICAS: "3", FLEXCORE_GATEWAY_PORT: "0", FLEXCORE_DATA: join(dir, name), FLEXCORE_GATEWAY_KEYS_DIR: join(dir, "keys") });
  const ups: UpProcess[] = [];
  const figures: number[] = [];
  const load = steadyLoad(cluster.nc);
  try {
    ups.push(await startUp({ config, env: env("i0") }));
    for (let round = 0; round < TAKEOVERS; round++) {
      const standby = await startUp({ config, env: env(`i${round + 1}`) });
      ups.push(standby);
      await standby.lineAt(/is run by another instance; standing by/u, 30_000);
      await sleep(2_000);
      const owner = ups[ups.length - 2]!;
      const killedAt = Date.now();
      await owner.kill();
      const takenAt = await standby.lineAt(new RegExp(`processor ${processor}: lease taken over`, "u"), 4 * LEASE_TTL_MS + 30_000);
      const first = await firstStoredAfter(cluster.nc, STREAMS.derived, `drv.benchtk.${processor}.>`, takenAt);
      if (first === undefined) throw new Error("the new owner produced nothing within 60 s");
      figures.push(first - killedAt);
      log(`  round ${round + 1}: lease taken ${takenAt - killedAt} ms, first output ${first - killedAt} ms after kill -9`);
    }
  } finally {
    await load.stop();
    for (const up of ups) await up.stop().catch(() => undefined);
  }
  return figures;
}

export const suite: Suite = {
  name: "cluster",
  description: "3-node cluster: R3 vs R1 acked ingest, write gap on leader kill -9, processor takeover after kill -9 of a flexcore up instance",
  async run({ log, env }) {
    const cluster = await startTestCluster();
    const dir = await mkdtemp(join(tmpdir(), "flexcore-bench-cluster-"));
    try {
      env.natsServer = cluster.nc.info?.version;
      env.clusterNodes = cluster.nodes.length;
      await ensureTopology(cluster.nc, { replicas: 3 });
      await benchStream(cluster.nc, "BENCH_R1", "r1", 1);
      await benchStream(cluster.nc, "BENCH_R3", "r3", 3);
      // Each stream is fed by a client on its leader's server: a client elsewhere adds a
      // hop (a route) to every publish and ack, whatever the replicas, and placement is the
      // server's choice, so without this the ratio would measure where the leaders landed.
      const onLeader = async (stream: string) => {
        const leader = await cluster.leaderOf(stream);
        const nc = await connect(natsConnectOptions(cluster.nodes[leader]!.url, cluster.credentials, { name: `bench-${stream}` }));
        return { nc, publisher: createPublisher(nc), leader: `n${leader}` };
      };
      const feeds = [await onLeader("BENCH_R1"), await onLeader("BENCH_R3")] as const;
      const [r1, r3] = await runTasks([
        { name: "acked ingest, R1 stream (baseline)", unit: "events/s", ops: INGEST_N, fn: () => ingest(feeds[0].publisher, "r1", INGEST_N), extra: { events: INGEST_N, replicas: 1, clientOn: feeds[0].leader } },
        { name: "acked ingest, R3 stream", unit: "events/s", ops: INGEST_N, fn: () => ingest(feeds[1].publisher, "r3", INGEST_N), extra: { events: INGEST_N, replicas: 3, clientOn: feeds[1].leader } },
      ], { log });
      for (const f of feeds) {
        await f.publisher.close();
        await f.nc.close();
      }
      const results: BenchResult[] = [r1!, r3!, ratio("R3 / R1 acked ingest", r3!, r1!)];
      const jsm = await jetstreamManager(cluster.nc);
      for (const s of ["BENCH_R1", "BENCH_R3"]) await jsm.streams.delete(s);

      log("write gap around a stream leader kill -9:");
      const gaps: number[] = [];
      for (let k = 0; k < KILLS; k++) gaps.push(await writeGap(cluster, log));
      results.push({ name: "write gap on leader kill -9, p50", unit: "ms", median: median(gaps), samples: gaps, extra: { kills: KILLS, inFlight: 256 } });
      results.push({ name: "write gap on leader kill -9, p99", unit: "ms", median: percentile(gaps, 99), samples: gaps, extra: { kills: KILLS } });

      log("processor takeover after kill -9 of the owning flexcore up:");
      const times = await takeovers(cluster, dir, log);
      results.push({ name: "processor takeover after instance kill -9", unit: "ms", median: median(times), samples: times, extra: { leaseTtlMs: LEASE_TTL_MS, loadEventsPerSecond: LOAD_RATE, max: Math.max(...times) } });
      return results;
    } finally {
      await cluster.close();
      await rm(dir, { recursive: true, force: true });
    }
  },
};
