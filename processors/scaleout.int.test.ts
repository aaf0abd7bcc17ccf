// Scale-out (#18): a processor with `scale: partitioned` spread over several runtime
// instances. Partitions move on join, stop and kill -9; outputs stay exactly once with the
// ids of the single-instance runtime, per-key order and per-key state continue.
import { unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUCKETS, createDeadLetters, createPublisher, ensureTopology, redriveMessage, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { memberKey, parseConfig, partitionLeaseKey, pipelineSections, processorsStatus, startProcessorRuntime } from "./index.js";
import type { ProcessorRuntime } from "./index.js";
import { definitions } from "./fixtures/faulty.js";
import { countMessages, FIXTURE_MODULE, openProcessorTestEnv, publishSeries, readStream, startHost, waitFor } from "./testing.js";
import type { ProcessorTestEnv, ReadMessage } from "./testing.js";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { startTestCluster } from "../test/nats-cluster.js";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { ensurePartitionStream, partitionOf, partitionRules, partitionStreamName } from "./partition-stream.js";

const TTL_MS = 2_000;
const PARTITIONS = 6;

let env: ProcessorTestEnv | undefined;
let nats: TestNats;
let publisher: Publisher;
let dir: string;

beforeAll(async () => {
  env = await openProcessorTestEnv({ tempDirPrefix: "flexcore-scaleout-" });
  ({ nats, publisher, dir } = env);
});
afterAll(async () => {
  await env?.close();
});

const yaml = (name: string, tenant: string, scale = "partitioned"): string =>
  `runtime: { threads: 1 }\nprocessors:\n  - name: ${name}\n    kind: counter\n    subjects: ["evt.${tenant}.m.>"]\n    partitions: ${PARTITIONS}\n    batch_size: 32\n    scale: ${scale}\n`;

function start(name: string, tenant: string, instanceId: string, scale = "partitioned", nc: NatsConnection = nats.nc): Promise<ProcessorRuntime> {
  return startProcessorRuntime(nc, {
    processors: parseConfig(yaml(name, tenant, scale), pipelineSections({ threads: 1, extra: definitions })).processors,
    threads: 1,
    modules: [FIXTURE_MODULE],
    definitions,
    metricsIntervalMs: 0,
    instanceId,
    leaseTtlMs: TTL_MS,
    log: () => undefined,
  });
}

const held = (r: ProcessorRuntime): readonly number[] => r.metrics()[0]!.partitions ?? [];

/** Every partition held by exactly one of `runtimes`. */
function ownedOnce(runtimes: readonly ProcessorRuntime[]): boolean {
  const all = runtimes.flatMap(held);
  return all.length === PARTITIONS && new Set(all).size === PARTITIONS;
}

const derivedCount = (tenant: string, name: string, nc: NatsConnection = nats.nc): Promise<number> => countMessages(nc, STREAMS.derived, `drv.${tenant}.${name}.>`);

/**
 * Every derived event once; per key the counter runs 1..n in source order (its state never
 * reset), stored in that order; and a key's outputs come from one instance at a time (the
 * instance changes at most `maxMoves` times per key, never back and forth within a move).
 */
async function expectExactlyOnce(tenant: string, name: string, keys: readonly string[], total: number, maxMoves = Number.POSITIVE_INFINITY, nc: NatsConnection = nats.nc): Promise<ReadMessage[]> {
  const derived = await readStream(nc, STREAMS.derived, `drv.${tenant}.${name}.>`);
  expect(new Set(derived.map((d) => d.msgId)).size).toBe(total);
  expect(derived).toHaveLength(total);
  for (const key of keys) {
    const mine = derived.filter((d) => d.subject.endsWith(`.${key}`));
    expect(mine.map((d) => (JSON.parse(d.data) as { n: number }).n)).toEqual(Array.from({ length: total / keys.length }, (_, i) => i + 1));
    const seqs = mine.map((d) => Number(d.headers["Flex-Source-Seq"]));
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    let switches = 0;
    for (let i = 1; i < mine.length; i++) if (mine[i]!.headers["Flex-Instance"] !== mine[i - 1]!.headers["Flex-Instance"]) switches += 1;
    expect(switches).toBeLessThanOrEqual(maxMoves);
  }
  return derived;
}

describe("scale: partitioned", () => {
  it("outputs carry the same ids and data as the single-instance runtime for the same events", async () => {
    const tenant = uniqueName("sa");
    const single = uniqueName("ss");
    const parted = uniqueName("sp");
    const keys = ["a", "b", "c", "d", "e"];
    await publishSeries(publisher, tenant, "m", keys, (i) => ({ value: i }), 300, `${tenant}-1`);
    const a = await start(single, tenant, "S", "single");
    const b = await start(parted, tenant, "P");
    try {
      await waitFor(async () => (await derivedCount(tenant, single)) === 300 && (await derivedCount(tenant, parted)) === 300, 30_000, "300 outputs of each");
      const one = await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${single}.>`);
      const two = await expectExactlyOnce(tenant, parted, keys, 300);
      const shape = (d: ReadMessage, name: string) => `${d.msgId.replace(`${name}:`, "")} ${d.subject.replace(`.${name}.`, ".")} ${d.data} ${d.headers["Flex-Source-Seq"]}`;
      expect(two.map((d) => shape(d, parted)).sort()).toEqual(one.map((d) => shape(d, single)).sort());
      expect(new Set(two.map((d) => d.headers["Flex-Instance"]))).toEqual(new Set(["P"]));
      // The server's partition of each event is the one the runtime computes (redrives are routed by it).
      // (A partition stream nobody consumes: the processor's own is a work queue, emptied by its acks.)
      const probe = uniqueName("pr");
      const jsm = await jetstreamManager(nats.nc);
      await ensurePartitionStream(jsm, probe, [`evt.${tenant}.m.>`], PARTITIONS);
      await waitFor(async () => (await jsm.streams.info(partitionStreamName(probe))).state.messages === 300, 10_000, "the probe stream to source 300 events");
      // (Read by sequence: a work queue takes no ordered consumer.)
      const copies = await Promise.all(Array.from({ length: 300 }, (_, i) => jsm.streams.getMessage(partitionStreamName(probe), { seq: i + 1 }).then((m) => m!)));
      await jsm.streams.delete(partitionStreamName(probe));
      const rules = partitionRules(probe, [`evt.${tenant}.m.>`], PARTITIONS);
      expect(copies).toHaveLength(300);
      for (const m of copies) expect(`${partitionOf(rules, m.subject.split(".").slice(2).join("."), PARTITIONS)}`).toBe(m.subject.split(".")[1]);
      expect(new Set(copies.map((m) => m.subject.split(".")[1])).size).toBeGreaterThan(1);
    } finally {
      await a.close();
      await b.close();
    }
  }, 60_000);

  it("status: which instance holds which partitions, their lag and throughput, read from NATS alone", async () => {
    const tenant = uniqueName("st");
    const name = uniqueName("st");
    const x = await start(name, tenant, "X");
    const y = await start(name, tenant, "Y");
    try {
      await waitFor(() => ownedOnce([x, y]) && held(x).length === 3, 10_000, "6 partitions spread 3/3");
      await publishSeries(publisher, tenant, "m", ["a", "b", "c", "d"], (i) => ({ value: i }), 200, `${tenant}-1`);
      await waitFor(async () => (await derivedCount(tenant, name)) === 200, 20_000, "200 outputs");
      await x.idle();
      await y.idle();
      // The member keys carry the last heartbeat's figures: wait for one after the work.
      await waitFor(async () => {
        const st = (await processorsStatus(nats.nc)).find((r) => r.processor === name);
        return st !== undefined && st.lag === 0 && st.instances.reduce((a, i) => a + i.processed, 0) === 200;
      }, 10_000, "status after the work");
      const st = (await processorsStatus(nats.nc)).find((r) => r.processor === name)!;
      expect(st.scale).toBe("partitioned");
      expect(st.partitions.map((p) => p.owner)).toEqual([0, 1, 2, 3, 4, 5].map((p) => (held(x).includes(p) ? "X" : "Y")));
      expect(st.instances.map((i) => [i.instance, i.partitions])).toEqual([["X", held(x)], ["Y", held(y)]]);
      // The consumers' lag for /metrics names each partition's consumer.
      expect((await x.lag()).map((l) => l.name).sort()).toEqual(held(x).map((p) => `proc_${name}_p${p}`).sort());
    } finally {
      await x.close();
      await y.close();
    }
    // Both left: no member, no owner.
    const after = (await processorsStatus(nats.nc)).find((r) => r.processor === name)!;
    expect(after.instances).toEqual([]);
    expect(after.partitions.every((p) => p.owner === null)).toBe(true);
  }, 60_000);

  it("a dead letter names the event's FLEX_EVENTS sequence; its redrive is processed once, by the instance holding its key", async () => {
    const tenant = uniqueName("sd");
    const name = uniqueName("sd");
    const marker = join(dir, `${name}.broken`);
    await writeFile(marker, "");
    const cfg = (id: string) =>
      startProcessorRuntime(nats.nc, {
        processors: parseConfig(`processors:\n  - name: ${name}\n    kind: flaky\n    subjects: ["evt.${tenant}.m.*"]\n    partitions: ${PARTITIONS}\n    max_deliver: 1\n    backoff: [10]\n    scale: partitioned\n`, pipelineSections({ threads: 1, extra: definitions })).processors,
        threads: 1, modules: [FIXTURE_MODULE], definitions, metricsIntervalMs: 0, instanceId: id, leaseTtlMs: TTL_MS, log: () => undefined,
      });
    const x = await cfg("X");
    const y = await cfg("Y");
    try {
      await waitFor(() => ownedOnce([x, y]), 10_000, "the partitions spread");
      const keys = ["a", "b", "c", "d", "e", "f"];
      await publishSeries(publisher, tenant, "m", keys, (i) => (i === 9 ? { value: i, failWhile: marker } : { value: i }), 18, `${tenant}-1`);
      await waitFor(async () => (await derivedCount(tenant, name)) === 17, 20_000, "17 outputs");
      const events = await readStream(nats.nc, STREAMS.events, `evt.${tenant}.m.*`);
      const poison = events[9]!;
      const dl = createDeadLetters(nats.nc);
      await waitFor(async () => (await dl.find(tenant, { source: name })).deadLetters.length === 1, 10_000, "the dead letter");
      const letter = await dl.show(tenant, (await dl.find(tenant, { source: name })).deadLetters[0]!.seq);
      expect(letter.originalSeq).toBe(poison.seq);
      expect(letter.originalSubject).toBe(poison.subject);
      await unlink(marker);
      const r = redriveMessage(letter);
      await publisher.publish(r.subject, r.data, { headers: r.headers });
      await waitFor(async () => (await derivedCount(tenant, name)) === 18, 20_000, "the redriven event processed");
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.redrive, `redrive.${tenant}.>`)) === 0, 10_000, "the redrive taken back");
      const derived = await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`);
      const late = derived.filter((d) => d.headers["Flex-Source-Seq"] === String(poison.seq));
      expect(late).toHaveLength(1);
      const key = poison.subject.split(".")[3]!;
      const owner = [x, y].find((r) => held(r).includes(partitionOf(partitionRules(name, [`evt.${tenant}.m.*`], PARTITIONS), poison.subject, PARTITIONS)!));
      expect(late[0]!.headers["Flex-Instance"]).toBe(owner === x ? "X" : "Y");
      expect(late[0]!.subject.endsWith(`.${key}`)).toBe(true);
    } finally {
      await x.close();
      await y.close();
    }
  }, 60_000);

  it("3 instances share the partitions; a 4th joins under load; then they stop one by one down to the last: nothing lost or repeated", async () => {
    const tenant = uniqueName("sj");
    const name = uniqueName("sj");
    const keys = Array.from({ length: 24 }, (_, i) => `k${i}`);
    const runtimes = [await start(name, tenant, "A"), await start(name, tenant, "B"), await start(name, tenant, "C")];
    let total = 0;
    const publish = async (n: number): Promise<void> => {
      await publishSeries(publisher, tenant, "m", keys, (i) => ({ value: i }), n, `${tenant}-${total}`);
      total += n;
    };
    try {
      await waitFor(() => ownedOnce(runtimes) && runtimes.every((r) => held(r).length === 2), 10_000, "6 partitions spread 2/2/2");
      await publish(720);
      // A fourth instance joins while events flow.
      const publishing = (async () => {
        for (let i = 0; i < 6; i++) {
          await publish(240);
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      runtimes.push(await start(name, tenant, "D"));
      await waitFor(() => ownedOnce(runtimes) && held(runtimes[3]!).length > 0 && runtimes.every((r) => held(r).length <= 2), 15_000, "the partitions to spread over 4 instances");
      await publishing;
      await waitFor(async () => (await derivedCount(tenant, name)) === total, 30_000, `${total} outputs`);
      // Down to one, under load: each stop hands its partitions over after draining them.
      while (runtimes.length > 1) {
        const stopping = runtimes.shift()!;
        const publishingMore = publish(240);
        await stopping.close();
        await publishingMore;
        await waitFor(() => ownedOnce(runtimes), 15_000, `the partitions to spread over ${runtimes.length} instances`);
      }
      expect(held(runtimes[0]!)).toEqual([0, 1, 2, 3, 4, 5]);
      await waitFor(async () => (await derivedCount(tenant, name)) === total, 30_000, `${total} outputs`);
      const derived = await expectExactlyOnce(tenant, name, keys, total, 5);
      // Every instance did a share of the work, the late joiner included.
      expect(new Set(derived.map((d) => d.headers["Flex-Instance"]))).toEqual(new Set(["A", "B", "C", "D"]));
    } finally {
      for (const r of runtimes) await r.close();
    }
  }, 300_000); // Its waits add up to 130 s on a machine loaded by the rest of the suite.
});

/**
 * 3 instances (A a child process, B and C in this one) share a processor; A is killed with
 * SIGKILL mid-stream: its partitions move to B and C once its leases expire, and every output
 * is there once, in per-key order, with the counters continuing.
 */
async function killOneOfThree(nc: NatsConnection, natsEnv: Readonly<Record<string, string>>, pub: Publisher): Promise<string> {
  const tenant = uniqueName("sk");
  const name = uniqueName("sk");
  const keys = Array.from({ length: 12 }, (_, i) => `k${i}`);
  const total = 2_400;
  const configFile = join(dir, `${name}.yaml`);
  await writeFile(configFile, yaml(name, tenant));
  const host = startHost({ ...natsEnv, FLEXCORE_CONFIG: configFile, FLEXCORE_INSTANCE: "A", FLEXCORE_LEASE_TTL_MS: String(TTL_MS) });
  const { child, exited } = host;
  await waitFor(() => host.output().includes("owner"), 30_000, `the host to take partitions (${host.output()})`);
  const b = await start(name, tenant, "B", "partitioned", nc);
  const c = await start(name, tenant, "C", "partitioned", nc);
  const leases = await new Kvm(nc).open(BUCKETS.leases);
  const ownerOf = async (p: number): Promise<string | undefined> => {
    const e = await leases.get(`proc.${name}.p${p}`);
    return e && e.operation === "PUT" && e.length > 0 ? e.json<{ owner: string }>().owner : undefined;
  };
  try {
    // A holds its share (2 of 6) while B and C hold theirs.
    await waitFor(async () => held(b).length === 2 && held(c).length === 2 && (await Promise.all([0, 1, 2, 3, 4, 5].map(ownerOf))).filter((o) => o === "A").length === 2, 45_000, "6 partitions spread 2/2/2");
    const publishing = (async () => {
      for (let i = 0; i < total; i += 300) {
        await publishSeries(pub, tenant, "m", keys, (j) => ({ value: i + j }), 300, `${tenant}-c${i}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    await waitFor(async () => (await derivedCount(tenant, name, nc)) >= 300, 30_000, "progress");
    child.kill("SIGKILL");
    const killedAt = Date.now();
    await exited;
    await waitFor(() => ownedOnce([b, c]), 2 * TTL_MS + 3_000, "B and C to take A's partitions");
    // A's leases were renewed every TTL/3: they could not move before they expired.
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(TTL_MS / 2);
    await publishing;
    await waitFor(async () => (await derivedCount(tenant, name, nc)) >= total, 60_000, `${total} outputs`);
    await b.idle();
    await c.idle();
    const derived = await expectExactlyOnce(tenant, name, keys, total, 3, nc);
    expect(new Set(derived.map((d) => d.headers["Flex-Instance"]))).toEqual(new Set(["A", "B", "C"]));
    return name;
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
    await b.close();
    await c.close();
  }
}

describe("scale: partitioned, kill -9", () => {
  it("kill -9 of one of 3 instances mid-stream: its partitions move within the lease TTL, outputs exactly once, states continue", async () => {
    await killOneOfThree(nats.nc, nats.env, publisher);
  }, 300_000);

  it("the same on a 3-node cluster with R3 streams", async () => {
    await using cluster = await startTestCluster({ topology: true });
    const pub = createPublisher(cluster.nc);
    try {
      const name = await killOneOfThree(cluster.nc, cluster.env, pub);
      // The partition stream follows FLEX_EVENTS' replicas.
      const info = await (await jetstreamManager(cluster.nc)).streams.info(partitionStreamName(name));
      expect(info.config.num_replicas).toBe(3);
    } finally {
      await pub.close();
    }
  }, 180_000);
});

describe("scale: partitioned, seen by a tenant", () => {
  it("a tenant can neither forge the origin of an event, publish into a partition stream, nor join or steer the group", async () => {
    await using server = await startTestNats({ tenants: ["acme", "evil"] });
    await ensureTopology(server.nc);
    const pub = createPublisher(server.nc);
    const name = uniqueName("sx");
    const rt = await startProcessorRuntime(server.nc, {
      processors: parseConfig(`processors:\n  - name: ${name}\n    kind: counter\n    subjects: ["evt.*.m.*"]\n    partitions: 2\n    scale: partitioned\n`, pipelineSections({ threads: 1, extra: definitions })).processors,
      threads: 1, modules: [FIXTURE_MODULE], definitions, metricsIntervalMs: 0, instanceId: "S", leaseTtlMs: TTL_MS, log: () => undefined,
    });
    const evil = await server.connectAs("evil");
    try {
      await waitFor(() => held(rt).length === 2, 10_000, "the partitions taken");
      await publishSeries(pub, "acme", "m", ["k"], (i) => ({ value: i }), 3, "acme-x");
      // evil's own event claims (in the header the server sets on sourcing) to be acme's sequence 1.
      const h = headers();
      h.set("Nats-Stream-Source", `${STREAMS.events} 1 evt.*.*.* x evt.acme.m.k`);
      h.set("Nats-Msg-Id", "evil-1");
      h.set("Flex-Type", "Reading");
      // The server refuses a client's Nats-Stream-Source outright; had it been stored, sourcing
      // would replace it with its own.
      await expect(jetstream(evil).publish("evt.evil.m.k", new TextEncoder().encode(`{"value":1}`), { headers: h })).rejects.toThrow(/source header/);
      h.delete("Nats-Stream-Source");
      await jetstream(evil).publish("evt.evil.m.k", new TextEncoder().encode(`{"value":1}`), { headers: h });
      // Straight into the partition stream, and into the group's keys in flex_leases: refused.
      await expect(jetstream(evil).publish(`part.0.evt.acme.m.k`, new TextEncoder().encode("{}"), { timeout: 1_000 })).rejects.toThrow();
      for (const key of [memberKey(name, "evil"), partitionLeaseKey(name, 0)]) {
        await expect(jetstream(evil).publish(`$KV.${BUCKETS.leases}.${key}`, new TextEncoder().encode(`{"owner":"evil","expiresAt":${Date.now() + 60_000}}`), { timeout: 1_000 })).rejects.toThrow();
      }
      await waitFor(async () => (await derivedCount("acme", name, server.nc)) === 3 && (await derivedCount("evil", name, server.nc)) === 1, 10_000, "4 outputs");
      const events = await readStream(server.nc, STREAMS.events, "evt.evil.m.k");
      const out = await readStream(server.nc, STREAMS.derived, `drv.evil.${name}.>`);
      // The forged header was replaced by the server's: the output names evil's own event and sequence.
      expect(out.map((o) => [o.msgId, o.headers["Flex-Source-Seq"]])).toEqual([[`${name}:${events[0]!.seq}:0`, String(events[0]!.seq)]]);
      expect(events[0]!.seq).not.toBe(1);
      // acme's count was not touched by it.
      expect((await readStream(server.nc, STREAMS.derived, `drv.acme.${name}.>`)).map((o) => (JSON.parse(o.data) as { n: number }).n)).toEqual([1, 2, 3]);
      // Still one member, and this instance holds both partitions.
      expect((await processorsStatus(server.nc)).find((r) => r.processor === name)!.instances.map((i) => i.instance)).toEqual(["S"]);
      expect(held(rt)).toEqual([0, 1]);
    } finally {
      await rt.close();
      await pub.close();
    }
  }, 60_000);
});
