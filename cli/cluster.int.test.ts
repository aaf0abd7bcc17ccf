import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import { createPublisher, encodeEvent, HEADERS, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { createProjectionEngine } from "../projections/index.js";
import type { ProjectionEngine } from "../projections/index.js";
import { parseConfig, pipelineSections, startProcessorRuntime } from "../processors/index.js";
import { countByHeader, startTestCluster } from "../test/nats-cluster.js";
import type { TestCluster } from "../test/nats-cluster.js";
import { uniqueName } from "../test/nats-server.js";

// The read and derive sides on a 3-node cluster with R3 streams, through a stream leader's
// kill -9: the projection ends equal to a clean rebuild, the processor's outputs are exactly
// once by source event id.
let cluster: TestCluster;
let dir: string;
beforeAll(async () => {
  cluster = await startTestCluster({ topology: true });
  dir = await mkdtemp(join(tmpdir(), "flexcore-cluster-int-"));
}, 90_000);
afterAll(async () => {
  await cluster?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const EVENTS = 6_000; // a multiple of 3
const KEYS = 40;

async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(200);
  }
}

/** Publishes with fixed ids, retrying the failed ones (same ids) until all are acked. */
async function publishAll(publisher: Publisher, tenant: string, from: number, to: number): Promise<number> {
  let pending = Array.from({ length: to - from }, (_, k) => from + k);
  for (let round = 0; pending.length > 0 && round < 30; round++) {
    const results = await Promise.allSettled(pending.map((i) => {
      const e = encodeEvent({ id: `${tenant}-${i}`, type: "ReadingRecorded", data: { value: i % 101 === 7 ? 900 : 10 + (i % 5) }, time: new Date(Date.UTC(2026, 0, 1) + i * 1000) });
      return publisher.publish(`evt.${tenant}.sensor.s${i % KEYS}`, e.data, { headers: e.headers });
    }));
    pending = pending.filter((_, k) => results[k]!.status === "rejected");
    if (pending.length > 0) await sleep(250);
  }
  return to - from - pending.length;
}


/** Every row of a tenant in a read model, in key order, without the columns computed at query time. */
async function rows(engine: ProjectionEngine, name: string, tenant: string, sort: string[]): Promise<Array<Record<string, unknown>>> {
  const out: Array<Record<string, unknown>> = [];
  let cursor: string | undefined;
  do {
    const page = await engine.query(name, { tenant, sort, limit: 1000, ...(cursor ? { cursor } : {}) });
    for (const r of page.rows) out.push(Object.fromEntries(Object.entries(r).filter(([k]) => !k.startsWith("rate_"))));
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}

async function replicasCurrent(stream: string): Promise<boolean> {
  const info = await (await jetstreamManager(cluster.nc)).streams.info(stream);
  const replicas = info.cluster?.replicas ?? [];
  return replicas.length === 2 && replicas.every((r) => r.current && !r.offline && (r.lag ?? 0) === 0);
}

async function streamEnd(stream: string): Promise<number> {
  return (await (await jetstreamManager(cluster.nc)).streams.info(stream)).state.last_seq;
}

describe("projections and processors on a 3-node cluster", () => {
  it("keep going through a leader change and end equal to a clean rebuild; processor outputs exactly once by id", async () => {
    const tenant = uniqueName("pp");
    const processor = uniqueName("an");
    const config = parseConfig(
      `processors:\n  - name: ${processor}\n    kind: anomaly\n    subjects: ["evt.${tenant}.sensor.*"]\n    partitions: 2\n    batch_size: 128\n    options: { emit: all, window: 20 }\n`,
      pipelineSections({ threads: 1 }),
    );
    const runtime = await startProcessorRuntime(cluster.nc, { processors: config.processors, threads: 1, metricsIntervalMs: 60_000, log: () => undefined });
    const engine = createProjectionEngine(cluster.nc, { dataDir: join(dir, "live"), log: () => undefined });
    await engine.start();
    const publisher = createPublisher(cluster.nc, { ackTimeoutMs: 1_000, maxAttempts: 3, deadlineMs: 15_000 });
    let clean: ProjectionEngine | undefined;
    try {
      // A third, then kill -9 the FLEX_EVENTS leader; a third, back; then FLEX_DERIVED's leader
      // (one node down at a time: two of three down loses the quorum, another test's subject).
      const third = EVENTS / 3;
      expect(await publishAll(publisher, tenant, 0, third)).toBe(third);
      const eventsLeader = await cluster.leaderOf(STREAMS.events);
      await cluster.nodes[eventsLeader]!.kill("SIGKILL");
      expect(await publishAll(publisher, tenant, third, 2 * third)).toBe(third);
      expect(await cluster.leaderOf(STREAMS.events)).not.toBe(eventsLeader);
      await cluster.nodes[eventsLeader]!.restart();
      await waitUntil("every FLEX_DERIVED replica current", () => replicasCurrent(STREAMS.derived), 60_000);
      const derivedLeader = await cluster.leaderOf(STREAMS.derived);
      await cluster.nodes[derivedLeader]!.kill("SIGKILL");
      expect(await publishAll(publisher, tenant, 2 * third, EVENTS)).toBe(third);
      await waitUntil("a new FLEX_DERIVED leader", async () => (await cluster.leaderOf(STREAMS.derived)) !== derivedLeader, 60_000);
      await cluster.nodes[derivedLeader]!.restart();

      // Processor: one output per event, none twice.
      await waitUntil(`${EVENTS} derived events`, async () => {
        const info = await (await jetstreamManager(cluster.nc)).streams.info(STREAMS.derived, { subjects_filter: `drv.${tenant}.${processor}.>` });
        return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0) >= EVENTS;
      }, 120_000);
      const byCause = await countByHeader(cluster.nc, STREAMS.derived, `drv.${tenant}.${processor}.>`, HEADERS.causationId);
      expect(byCause.size).toBe(EVENTS);
      expect([...byCause].filter(([, n]) => n !== 1)).toEqual([]);
      expect([...byCause.keys()].filter((id) => !/^.+-\d+$/u.test(id) || !id.startsWith(`${tenant}-`))).toEqual([]);
      const events = await countByHeader(cluster.nc, STREAMS.events, `evt.${tenant}.>`, HEADERS.msgId);
      expect(events.size).toBe(EVENTS);

      // Projection: caught up with both streams, then equal to a clean build in a fresh directory.
      const [eventsEnd, derivedEnd] = [await streamEnd(STREAMS.events), await streamEnd(STREAMS.derived)];
      for (const name of ["generic", "pipeline_summary"]) {
        await engine.waitFor(name, eventsEnd, { timeout: 60_000 });
        if (name === "pipeline_summary") await engine.waitFor(name, derivedEnd, { stream: STREAMS.derived, timeout: 60_000 });
      }
      clean = createProjectionEngine(cluster.nc, { dataDir: join(dir, "clean"), log: () => undefined });
      await clean.start();
      await clean.waitFor("generic", eventsEnd, { timeout: 60_000 });
      await clean.waitFor("pipeline_summary", eventsEnd, { timeout: 60_000 });
      await clean.waitFor("pipeline_summary", derivedEnd, { stream: STREAMS.derived, timeout: 60_000 });
      const live = await rows(engine, "generic", tenant, ["category", "id"]);
      expect(live).toHaveLength(KEYS);
      expect(live.reduce((n, r) => n + (r.revision as number), 0)).toBe(EVENTS);
      expect(live).toEqual(await rows(clean, "generic", tenant, ["category", "id"]));
      const summary = await rows(engine, "pipeline_summary", tenant, ["source", "category", "type"]);
      expect(summary.map((r) => [r.source, r.count])).toEqual([["derived", EVENTS], ["events", EVENTS]]);
      expect(summary).toEqual(await rows(clean, "pipeline_summary", tenant, ["source", "category", "type"]));
    } finally {
      await publisher.close();
      await clean?.close();
      await engine.close();
      await runtime.close();
    }
  }, 240_000);
});
