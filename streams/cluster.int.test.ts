import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { startTestCluster } from "../test/nats-cluster.js";
import type { TestCluster } from "../test/nats-cluster.js";
import { uniqueName } from "../test/nats-server.js";
import { createEventStore, createPublisher, encodeEvent, FlexError, HEADERS, STREAMS, StreamUnavailableError } from "./index.js";
import type { Publisher } from "./index.js";

// Failure tests on a 3-node cluster with R3 streams: each counts by event id.
let cluster: TestCluster;
beforeAll(async () => {
  cluster = await startTestCluster({ topology: true });
}, 120_000);
afterAll(async () => {
  await cluster?.close();
});

/**
 * Stored events by id under a filter. Read again until the read agrees with the count the
 * stream leader reports: a consumer placed on a replica still catching up reads less, and
 * the cluster may be electing leaders.
 */
async function countById(filter: string): Promise<Map<string, number>> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      const stored = await storedCount(filter);
      const counts = await countOnce(filter);
      if ([...counts.values()].reduce((a, b) => a + b, 0) === stored || Date.now() > deadline) return counts;
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    await sleep(500);
  }
}

async function storedCount(filter: string): Promise<number> {
  const info = await (await jetstreamManager(cluster.nc)).streams.info(STREAMS.events, { subjects_filter: filter });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

async function countOnce(filter: string): Promise<Map<string, number>> {
  const js = jetstream(cluster.nc);
  const consumer = await js.consumers.get(STREAMS.events, { filter_subjects: filter });
  const counts = new Map<string, number>();
  let remaining = (await consumer.info(true)).num_pending;
  if (remaining === 0) return counts;
  const messages = await consumer.consume({ max_messages: 4096 });
  for await (const m of messages) {
    const id = m.headers?.get(HEADERS.msgId) ?? "";
    counts.set(id, (counts.get(id) ?? 0) + 1);
    if (--remaining <= 0) break;
  }
  await messages.close();
  return counts;
}

function publishOne(publisher: Publisher, tenant: string, id: string, i: number) {
  const e = encodeEvent({ id, type: "ReadingRecorded", data: { value: i } });
  return publisher.publish(`evt.${tenant}.sensor.s${i % 50}`, e.data, { headers: e.headers });
}

/** Publishes `ids`, retrying what failed with the same ids until every one is acked (or rounds run out). */
async function publishUntilAcked(publisher: Publisher, tenant: string, ids: readonly string[], onAck?: (acked: number) => void): Promise<Set<string>> {
  const acked = new Set<string>();
  let pending = ids.map((id, i) => ({ id, i }));
  for (let round = 0; pending.length > 0 && round < 20; round++) {
    const results = await Promise.allSettled(pending.map(({ id, i }) => publishOne(publisher, tenant, id, i).then(() => {
      acked.add(id);
      onAck?.(acked.size);
    })));
    pending = pending.filter((_, k) => results[k]!.status === "rejected");
    if (pending.length > 0) await sleep(250);
  }
  return acked;
}

async function replicasCurrent(stream: string): Promise<boolean> {
  const info = await (await jetstreamManager(cluster.nc)).streams.info(stream);
  const replicas = info.cluster?.replicas ?? [];
  return replicas.length === 2 && replicas.every((r) => r.current && !r.offline && (r.lag ?? 0) === 0);
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

// A test that fails half-way must not leave the next one a cluster without its nodes.
afterEach(async () => {
  for (const node of cluster.nodes) if (!(await reachable(node.url))) await node.restart().catch(() => undefined);
  await waitFor("every replica current", () => replicasCurrent(STREAMS.events), 60_000).catch(() => undefined);
}, 90_000);

async function reachable(url: string): Promise<boolean> {
  const { connect } = await import("@nats-io/transport-node");
  return connect({ servers: url, maxReconnectAttempts: 0, reconnect: false, timeout: 1_000 }).then(
    async (c) => {
      await c.close();
      return true;
    },
    // Authorization refused means the node is up.
    (err: Error) => /authoriz/i.test(err.message),
  );
}

describe("a 3-node cluster with R3 streams", () => {
  it("kill -9 of the stream leader during ingest: no acknowledged event lost, none stored twice, publishing resumes", async () => {
    const tenant = uniqueName("leader");
    const ids = Array.from({ length: 10_000 }, (_, i) => `${tenant}-${i}`);
    const leader = await cluster.leaderOf(STREAMS.events);
    const publisher = createPublisher(cluster.nc, { ackTimeoutMs: 1_000, maxAttempts: 3, deadlineMs: 15_000 });
    let killed: Promise<void> | undefined;
    const acked = await publishUntilAcked(publisher, tenant, ids, (n) => {
      if (!killed && n >= 3_000) killed = cluster.nodes[leader]!.kill("SIGKILL");
    });
    await killed;
    await publisher.close();
    expect(killed).toBeDefined();
    expect(acked.size).toBe(ids.length);
    expect(await cluster.leaderOf(STREAMS.events)).not.toBe(leader);
    const counts = await countById(`evt.${tenant}.>`);
    expect([...acked].filter((id) => !counts.has(id))).toEqual([]);
    expect([...counts].filter(([, n]) => n > 1)).toEqual([]);
    expect(counts.size).toBe(ids.length);
    // The old leader comes back as a follower and catches up.
    await cluster.nodes[leader]!.restart();
    await waitFor("the restarted node to catch up", () => replicasCurrent(STREAMS.events), 60_000);
  }, 180_000);

  it("kill -9 of a follower, writes meanwhile, and back: it catches up to the same last sequence", async () => {
    const tenant = uniqueName("follower");
    const leader = await cluster.leaderOf(STREAMS.events);
    const follower = (leader + 1) % cluster.nodes.length;
    await cluster.nodes[follower]!.kill("SIGKILL");
    const publisher = createPublisher(cluster.nc, { ackTimeoutMs: 1_000, maxAttempts: 3, deadlineMs: 15_000 });
    const ids = Array.from({ length: 3_000 }, (_, i) => `${tenant}-${i}`);
    const acked = await publishUntilAcked(publisher, tenant, ids);
    await publisher.close();
    expect(acked.size).toBe(ids.length);
    await cluster.nodes[follower]!.restart();
    await waitFor("the follower to catch up", () => replicasCurrent(STREAMS.events), 60_000);
    expect((await countById(`evt.${tenant}.>`)).size).toBe(ids.length);
  }, 180_000);

  it("2 of 3 nodes down: appends fail with a coded error, nothing acknowledged is lost, and appends work again when one returns", async () => {
    const tenant = uniqueName("quorum");
    const store = await createEventStore(cluster.nc);
    const subject = `evt.${tenant}.order.o1`;
    await store.append(subject, [{ type: "Created", data: { n: 0 }, id: `${tenant}-0` }]);
    const leader = await cluster.leaderOf(STREAMS.events);
    const down = [leader, (leader + 1) % 3];
    await Promise.all(down.map((i) => cluster.nodes[i]!.kill("SIGKILL")));
    const started = Date.now();
    const failure = await store.append(subject, [{ type: "Updated", data: { n: 1 }, id: `${tenant}-1` }]).then(() => undefined, (err: unknown) => err);
    expect(failure).toBeInstanceOf(StreamUnavailableError);
    expect((failure as FlexError).code).toBe("FLEX_STREAM_UNAVAILABLE");
    expect(Date.now() - started).toBeLessThan(60_000);
    await cluster.nodes[down[0]!]!.restart();
    await waitFor("a stream leader", async () => Number.isInteger(await cluster.leaderOf(STREAMS.events)), 60_000);
    let appended = false;
    for (let i = 0; i < 50 && !appended; i++) {
      appended = await store.append(subject, [{ type: "Updated", data: { n: 2 }, id: `${tenant}-2` }]).then(() => true, () => false);
      if (!appended) await sleep(500);
    }
    expect(appended).toBe(true);
    const events = await store.read(subject);
    expect(events.map((e) => e.id)).toContain(`${tenant}-0`);
    expect(events.map((e) => e.id)).toContain(`${tenant}-2`);
    expect(new Set(events.map((e) => e.id)).size).toBe(events.length);
    await store.close();
    await cluster.nodes[down[1]!]!.restart();
    await waitFor("every replica current", () => replicasCurrent(STREAMS.events), 60_000);
  }, 240_000);
});
