import { setTimeout as sleep } from "node:timers/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamManager } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { createDeadLetters, createPublisher, deadLetterHeaders, createEventStore, dlqSubject, ensureTopology, eventSubject, HEADERS, redriveMessage, STREAMS } from "../streams/index.js";
import type { EventStore } from "../streams/index.js";
import { createScriptRunner } from "../processors/index.js";
import type { ScriptRunner } from "../processors/index.js";
import { createWorkflowClient, RUN_EVENTS, startWorkflowRunner } from "./index.js";
import type { WorkflowClient, WorkflowRunner } from "./index.js";

let nats: TestNats;
let client: WorkflowClient;
let scripts: ScriptRunner;
let store: EventStore;
let jsm: JetStreamManager;

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  scripts = await createScriptRunner({ maxConcurrent: 2 });
  client = await createWorkflowClient(nats.nc);
  store = await createEventStore(nats.nc);
  jsm = await jetstreamManager(nats.nc);
});
afterAll(async () => {
  await client?.close();
  await store?.close();
  await scripts?.close();
  await nats?.close();
});

const runner = async (): Promise<WorkflowRunner> => startWorkflowRunner(await nats.connect(), { scripts, leaseMs: 2_000, pollMs: 100 });

// A definition whose version changes with `v`; the step is light, the test is about starts.
const definition = (tenant: string, v: number): object => ({
  name: "ingest",
  triggers: [{ event: { subject: `evt.${tenant}.sensor.*` } }],
  steps: [{ id: "score", kind: "processor", processor: "anomaly", options: { emit: "all", min_points: 2 + v }, input: "${{ trigger.data }}" }],
});

/** Names of the trigger consumers of workflow `ingest` of `tenant` on FLEX_EVENTS. */
async function triggerConsumers(tenant: string): Promise<string[]> {
  const names: string[] = [];
  for await (const c of jsm.consumers.list(STREAMS.events)) if (c.name.startsWith(`flexwf_${tenant}_ingest_`)) names.push(c.name);
  return names.sort();
}

async function waitFor(what: string, ok: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Stream sequences of the events whose run `ingest-e<seq>` was never started. */
async function withoutRun(tenant: string, seqs: readonly number[]): Promise<number[]> {
  const missing: number[] = [];
  for (const seq of seqs) if ((await store.head(eventSubject(tenant, "workflow", `ingest-e${seq}`))).revision === 0) missing.push(seq);
  return missing;
}

describe("event triggers across versions", () => {
  it("every event published while a new version is installed starts exactly one run", async () => {
    const tenant = uniqueName("t");
    await using r = await runner();
    void r;
    await client.put(tenant, definition(tenant, 1));
    await waitFor("the v1 consumer", async () => (await triggerConsumers(tenant)).some((n) => n.includes("_v1_")));
    const seqs: number[] = [];
    let publishing = true;
    // Bursts, so the old consumer has messages buffered and in flight when it is replaced.
    const feed = (async () => {
      for (let i = 0; publishing; i++) {
        const burst = await Promise.all(Array.from({ length: 20 }, (_, j) => store.append(eventSubject(tenant, "sensor", `s${j % 4}`), [{ type: "ReadingRecorded", data: { value: i * 20 + j } }])));
        seqs.push(...burst.map((b) => b.seq));
        await sleep(5);
      }
    })();
    await sleep(300);
    expect((await client.put(tenant, definition(tenant, 2))).version).toBe(2);
    await sleep(700);
    publishing = false;
    await feed;
    expect(seqs.length).toBeGreaterThan(100);
    await waitFor("a run for every event", async () => (await withoutRun(tenant, seqs)).length === 0).catch(async (err: unknown) => {
      throw new Error(`${(err as Error).message}: no run for seqs ${(await withoutRun(tenant, seqs)).join(",")} of ${seqs.length}`);
    });
    // One RunStarted per event, and only for these events.
    const started: string[] = [];
    for await (const e of store.readAll({ filter: `evt.${tenant}.workflow.*`, follow: false })) if (e.type === "RunStarted") started.push((e.data as { runId: string }).runId);
    expect(started.sort()).toEqual(seqs.map((s) => `ingest-e${s}`).sort());
    await waitFor("only the v2 consumer", async () => (await triggerConsumers(tenant)).every((n) => n.includes("_v2_")));
  });

  it("a version stored while no runner was up starts where the old consumer's acks ended, and the old consumer goes", async () => {
    const tenant = uniqueName("t");
    {
      await using r = await runner();
      await client.put(tenant, definition(tenant, 1));
      await waitFor("the v1 consumer", async () => (await triggerConsumers(tenant)).some((n) => n.includes("_v1_")));
      const first = await store.append(eventSubject(tenant, "sensor", "a"), [{ type: "ReadingRecorded", data: { value: 1 } }]);
      await waitFor("the first run", async () => (await withoutRun(tenant, [first.seq])).length === 0);
      void r;
    }
    // No runner: v2 is stored, events arrive.
    expect((await client.put(tenant, definition(tenant, 2))).version).toBe(2);
    const seqs: number[] = [];
    for (let i = 0; i < 10; i++) seqs.push((await store.append(eventSubject(tenant, "sensor", "a"), [{ type: "ReadingRecorded", data: { value: i } }])).seq);
    await using r2 = await runner();
    void r2;
    await waitFor("runs of the events published with no runner up", async () => (await withoutRun(tenant, seqs)).length === 0).catch(async (err: unknown) => {
      throw new Error(`${(err as Error).message}: no run for ${(await withoutRun(tenant, seqs)).join(",")}`);
    });
    await waitFor("the v1 consumer deleted", async () => {
      const names = await triggerConsumers(tenant);
      return names.length === 1 && names[0]!.includes("_v2_");
    });
  });

  it("an event that can never start a run lands in FLEX_DLQ with its reason and sequence; later events still start runs", async () => {
    const tenant = uniqueName("t");
    await using r = await runner();
    void r;
    await client.put(tenant, definition(tenant, 1));
    await waitFor("the v1 consumer", async () => (await triggerConsumers(tenant)).some((n) => n.includes("_v1_")));
    const info = await jsm.consumers.info(STREAMS.events, (await triggerConsumers(tenant))[0]!);
    expect(info.config.max_deliver, "a bounded retry budget").toBeGreaterThan(0);
    // The run's first event carries the data twice (input and trigger facts): over the server's max payload.
    const big = "x".repeat(Math.floor((nats.nc.info?.max_payload ?? 1_048_576) * 0.6));
    const poison = await store.append(eventSubject(tenant, "sensor", "p"), [{ type: "ReadingRecorded", data: { big } }]);
    const after = await store.append(eventSubject(tenant, "sensor", "q"), [{ type: "ReadingRecorded", data: { value: 1 } }]);
    await waitFor("the run of the event after the poison", async () => (await withoutRun(tenant, [after.seq])).length === 0);
    const dlq = dlqSubject(tenant, "workflow-ingest");
    let letter: { headers: Record<string, string>; data: Record<string, unknown> } | undefined;
    await waitFor("the dead letter", async () => {
      const m = await jsm.streams.getMessage(STREAMS.dlq, { last_by_subj: dlq }).catch(() => null);
      if (!m) return false;
      letter = { headers: Object.fromEntries([...m.header!.keys()].map((k) => [k, m.header!.get(k)])), data: m.json<Record<string, unknown>>() };
      return true;
    });
    expect(letter!.headers["Flex-Source-Seq"]).toBe(String(poison.seq));
    expect(letter!.headers["Flex-Error"]).toContain("FLEX_PAYLOAD_TOO_LARGE");
    expect(letter!.data).toMatchObject({ workflow: "ingest", seq: poison.seq, subject: eventSubject(tenant, "sensor", "p"), error: { code: "FLEX_PAYLOAD_TOO_LARGE" } });
    expect((await withoutRun(tenant, [poison.seq]))).toEqual([poison.seq]);
    // Nothing is left pending on the consumer: the poison is not redelivered forever.
    await waitFor("the consumer drained", async () => {
      const i = await jsm.consumers.info(STREAMS.events, (await triggerConsumers(tenant))[0]!);
      return i.num_pending === 0 && i.num_ack_pending === 0;
    });
  });

  it("a trigger's dead letter is listed as kind trigger and redriven back to the trigger: a redrive that fails again returns with both reasons, one that can start its run starts it once however often it comes", async () => {
    const tenant = uniqueName("t");
    const publisher = createPublisher(nats.nc);
    const dl = createDeadLetters(nats.nc);
    const runStarts = async (seq: number): Promise<number> => (await store.read(eventSubject(tenant, "workflow", `ingest-e${seq}`))).filter((e) => e.type === RUN_EVENTS.runStarted).length;
    try {
      // Published before the workflow exists: its trigger never saw it, so it has no run yet.
      const early = await store.append(eventSubject(tenant, "sensor", "e"), [{ type: "ReadingRecorded", data: { value: 3 } }]);
      await using r = await runner();
      void r;
      await client.put(tenant, definition(tenant, 1));
      await waitFor("the v1 consumer", async () => (await triggerConsumers(tenant)).some((n) => n.includes("_v1_")));
      const big = "x".repeat(Math.floor((nats.nc.info?.max_payload ?? 1_048_576) * 0.6));
      const poison = await store.append(eventSubject(tenant, "sensor", "p"), [{ type: "ReadingRecorded", data: { big } }]);
      let letters = (await dl.find(tenant, { source: "workflow-ingest" })).deadLetters;
      await waitFor("the dead letter", async () => (letters = (await dl.find(tenant, { source: "workflow-ingest" })).deadLetters).length === 1);
      expect(letters[0]).toMatchObject({ kind: "trigger", originalSeq: poison.seq, eventType: "ReadingRecorded", errorCode: "FLEX_PAYLOAD_TOO_LARGE" });

      // Redriven: the trigger reads the event back and fails again, for good.
      expect((await dl.redrive(tenant, { seq: letters[0]!.seq })).redriven).toEqual([letters[0]!.seq]);
      let again = letters;
      await waitFor("the dead letter of the redrive", async () => (again = (await dl.find(tenant, { source: "workflow-ingest" })).deadLetters).length === 1 && again[0]!.seq !== letters[0]!.seq);
      expect(again[0]!.reasons).toHaveLength(2);
      expect(again[0]!.reasons[0]).toBe(letters[0]!.reason);
      await waitFor("the redrive taken back", async () => (await dl.list(tenant)).every((c) => c.redrivePending === 0));
      expect(await runStarts(poison.seq)).toBe(0);

      // A dead letter of an event that can start its run (as after a fixed cause): one run, even redriven twice.
      const h = deadLetterHeaders({ id: `workflow-ingest:${early.seq}:dlq`, type: "TriggerFailed", sourceSeq: early.seq, sourceSubject: eventSubject(tenant, "sensor", "e"), reason: "the runner was down" });
      const body = { workflow: "ingest", version: 1, seq: early.seq, subject: eventSubject(tenant, "sensor", "e"), tenant, type: "ReadingRecorded", attempts: 5, error: { code: "X", message: "down" }, reason: "the runner was down", data: { value: 3 } };
      const forged = (await publisher.publish(dlqSubject(tenant, "workflow-ingest"), new TextEncoder().encode(JSON.stringify(body)), { headers: h })).seq;
      const letter = await dl.show(tenant, forged);
      expect(letter.kind).toBe("trigger");
      await dl.redrive(tenant, { seq: forged });
      await waitFor("the run of the redriven event", async () => (await runStarts(early.seq)) === 1);
      // The same redrive again, past the duplicate window (another message id).
      const repeat = redriveMessage(letter);
      repeat.headers.set(HEADERS.msgId, `${repeat.headers.get(HEADERS.msgId)}:repeat`);
      await publisher.publish(repeat.subject, repeat.data, { headers: repeat.headers });
      await waitFor("the repeat taken back", async () => (await dl.list(tenant)).every((c) => c.redrivePending === 0));
      expect(await runStarts(early.seq)).toBe(1);
      expect((await dl.find(tenant, { source: "workflow-ingest" })).deadLetters.map((d) => d.seq)).toEqual([again[0]!.seq]);
    } finally {
      await publisher.close();
    }
  }, 60_000);
});
