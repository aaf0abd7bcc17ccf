import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { parseConfig, pipelineSections, startProcessorRuntime, stateKvKey } from "./index.js";
import type { ProcessorRuntime, ResolvedProcessor } from "./index.js";
import { definitions as fixtureDefinitions } from "./fixtures/faulty.js";
import { countMessages, FIXTURE_MODULE, openProcessorTestEnv, publishSeries, readStream, waitFor } from "./testing.js";
import type { ProcessorTestEnv } from "./testing.js";

let env: ProcessorTestEnv | undefined;
let nats: TestNats;
let publisher: Publisher;

beforeAll(async () => {
  env = await openProcessorTestEnv();
  ({ nats, publisher } = env);
});
afterAll(async () => {
  await env?.close();
});

function processors(yaml: string): readonly ResolvedProcessor[] {
  return parseConfig(yaml, pipelineSections({ threads: 2, extra: fixtureDefinitions })).processors;
}

async function settled(name: string): Promise<void> {
  const jsm = await jetstreamManager(nats.nc);
  await waitFor(async () => {
    const info = await jsm.consumers.info(STREAMS.events, `proc_${name}`);
    return info.num_pending === 0 && info.num_ack_pending === 0;
  }, 30_000, `consumer proc_${name} to settle`);
}

describe("processor runtime", () => {
  it("scores every event, keeps per-key order, and checkpoints state with its sequence", async () => {
    const tenant = uniqueName("rt");
    const name = uniqueName("an");
    const keys = ["k0", "k1", "k2", "k3", "k4"];
    const runtime: ProcessorRuntime = await startProcessorRuntime(nats.nc, {
      processors: processors(`processors:\n  - name: ${name}\n    kind: anomaly\n    subjects: ["evt.${tenant}.sensor.*"]\n    partitions: 3\n    batch_size: 64\n    options: { emit: all, window: 20 }\n`),
      threads: 2,
      metricsIntervalMs: 500,
      // Fewer than the 5 keys: states are evicted and reloaded from flex_state as keys come back.
      maxKeysInMemory: 2,
    });
    try {
      await publishSeries(publisher, tenant, "sensor", keys, (i) => ({ value: i % 97 === 50 ? 500 : 10 + (i % 7) }), 1000);
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) === 1000, 30_000, "1000 derived events");
      await settled(name);
      const derived = await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`);
      expect(derived).toHaveLength(1000);
      for (const key of keys) {
        const seqs = derived.filter((d) => d.subject.endsWith(`.${key}`)).map((d) => Number(d.headers["Flex-Source-Seq"]));
        expect(seqs).toHaveLength(200);
        expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
      }
      const first = derived[0]!;
      expect(first.headers["Flex-Type"]).toBe("AnomalyScored");
      expect(first.msgId).toMatch(new RegExp(`^${name}:\\d+:0$`));
      expect(first.headers["Flex-Causation-Id"]).toMatch(new RegExp(`^${tenant}-e-\\d+$`));
      expect(first.headers["Content-Type"]).toBe("application/json");
      expect(derived.filter((d) => (JSON.parse(d.data) as { flagged: boolean }).flagged).length).toBeGreaterThan(5);
      const kv = await new Kvm(nats.nc).open("flex_state");
      const saved = JSON.parse(new TextDecoder().decode((await kv.get(stateKvKey(name, tenant, "k4")))!.value)) as { seq: number; state: { n: number } };
      expect(saved.state.n).toBe(200);
      expect(saved.seq).toBe(Math.max(...derived.filter((d) => d.subject.endsWith(".k4")).map((d) => Number(d.headers["Flex-Source-Seq"]))));
      expect(runtime.metrics()[0]).toMatchObject({ processor: name, processed: 1000, outputs: 1000, errors: 0 });
      expect(runtime.metrics()[0]!.p99).toBeGreaterThan(0);
      // Runtime metrics arrive as MetricsReported events for the performance_metrics read model.
      const readReports = async (): Promise<Array<Record<string, unknown>>> =>
        (await readStream(nats.nc, STREAMS.events, `evt._system.metrics.${name}`)).map((m): Record<string, unknown> => ({ type: m.headers["Flex-Type"], ...(JSON.parse(m.data) as Record<string, unknown>) }));
      // Reports every 500 ms: their counts add up to every event processed.
      await waitFor(async () => (await readReports()).reduce((n, r) => n + (r.count as number), 0) === 1000, 10_000, "MetricsReported counts to add up to 1000");
      const reports = await readReports();
      expect(reports[0]).toMatchObject({ type: "MetricsReported", component: name, kind: "processor", minute: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:00Z$/) });
      for (const f of ["errors", "p50Ms", "p95Ms", "p99Ms", "throughput"]) expect(typeof reports[0]![f]).toBe("number");
      expect((await runtime.lag())[0]).toEqual({ name: `proc_${name}`, lag: 0 });
    } finally {
      await runtime.close();
    }
  });

  it("dead-letters a poison event after max_deliver attempts with its reason; other keys flow", async () => {
    const tenant = uniqueName("dl");
    const name = uniqueName("fa");
    const runtime = await startProcessorRuntime(nats.nc, {
      processors: processors(`processors:\n  - name: ${name}\n    kind: faulty\n    subjects: ["evt.${tenant}.m.*"]\n    max_deliver: 3\n    backoff: [20ms, 40ms]\n`),
      threads: 2,
      modules: [FIXTURE_MODULE],
      definitions: fixtureDefinitions,
      metricsIntervalMs: 0,
    });
    try {
      await publishSeries(publisher, tenant, "m", ["a", "b", "c"], (i) => ({ value: i, poison: i === 10 }), 300);
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) === 299, 30_000, "299 derived events");
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.dlq, `dlq.${tenant}.${name}`)) === 1, 10_000, "1 dead letter");
      const [dead] = await readStream(nats.nc, STREAMS.dlq, `dlq.${tenant}.${name}`);
      const body = JSON.parse(dead!.data) as Record<string, unknown>;
      expect(body).toMatchObject({ processor: name, key: "b", attempts: 3, data: { value: 10, poison: true } });
      expect(body.reason).toMatch(/poison event at sequence/);
      expect(dead!.headers["Flex-Source-Seq"]).toBe(String(body.seq));
      // Key b skipped only the poison event: its count continues at 100 events - 1.
      const b = (await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.b`)).map((d) => JSON.parse(d.data) as { n: number });
      expect(b.map((x) => x.n)).toEqual(Array.from({ length: 99 }, (_, i) => i + 1));
      expect(runtime.metrics()[0]).toMatchObject({ deadLettered: 1 });
      expect(runtime.metrics()[0]!.errors).toBeGreaterThanOrEqual(3);
    } finally {
      await runtime.close();
    }
  });

  it("a worker that throws or runs out of memory: the event is retried then dead-lettered, the pool recovers", async () => {
    const tenant = uniqueName("wk");
    const name = uniqueName("wf");
    const runtime = await startProcessorRuntime(nats.nc, {
      processors: processors(`processors:\n  - name: ${name}\n    kind: faulty\n    subjects: ["evt.${tenant}.m.*"]\n    max_deliver: 2\n    backoff: [10ms]\n    batch_size: 16\n`),
      threads: 1,
      workerMemoryMb: 48,
      modules: [FIXTURE_MODULE],
      definitions: fixtureDefinitions,
      metricsIntervalMs: 0,
    });
    try {
      const faults: Record<number, string> = { 5: "oom", 44: "poison" };
      await publishSeries(publisher, tenant, "m", ["a", "b", "c", "d"], (i) => ({ value: i, ...(faults[i] ? { [faults[i]!]: true } : {}) }), 80);
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.dlq, `dlq.${tenant}.${name}`)) === 2, 60_000, "2 dead letters");
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) === 78, 30_000, "78 derived events");
      const dead = (await readStream(nats.nc, STREAMS.dlq, `dlq.${tenant}.${name}`)).map((d) => JSON.parse(d.data) as { data: Record<string, unknown>; reason: string; attempts: number });
      const reasonOf = (fault: string): string => dead.find((d) => d.data[fault] === true)!.reason;
      expect(reasonOf("oom")).toMatch(/memory/i);
      expect(reasonOf("poison")).toMatch(/poison event/);
      expect(dead.every((d) => d.attempts === 2)).toBe(true);
      // The pool replaced its dead worker and still runs tasks.
      const r = await runtime.invoke("counter", {}, [{ data: { value: 2 } }, { data: { value: 3 } }]);
      expect(r.state).toEqual({ n: 2, sum: 5 });
    } finally {
      await runtime.close();
    }
  });
});
