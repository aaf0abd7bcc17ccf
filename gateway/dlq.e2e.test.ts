/**
 * Dead letters end to end: a real nats-server (authorization on), a real processor runtime
 * with faulty processors, the real gateway on port 0. A poison event is dead-lettered,
 * listed, shown, redriven (twice: processed once) back to the one processor that failed
 * it, fails again with both reasons, is purged; bad filters are coded 4xx; a tenant never
 * reads or touches another tenant's dead letters; a reader cannot redrive or purge.
 */
import { writeFileSync } from "node:fs";
import { mkdtemp, rm, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { BUCKETS, createDeadLetters, createPublisher, encodeEvent, ensureTopology, redriveMessage, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { stateKvKey } from "../processors/index.js";
import type { ProcessorRuntime } from "../processors/index.js";
import { countMessages, readStream, startFixtureRuntime, waitFor } from "../processors/testing.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { parseMetrics, sumOf } from "../test/metrics-text.js";
import { createGateway } from "./index.js";
import type { Gateway, Role } from "./index.js";

const A = uniqueName("dla");
const B = uniqueName("dlb");
const FLAKY = uniqueName("fl");
const FAULTY = uniqueName("fa");
let nats: TestNats;
let dir: string;
let marker: string;
let gw: Gateway;
let base: string;
let runtime: ProcessorRuntime;
let publisher: Publisher;

async function token(tenant: string, roles: readonly Role[]): Promise<string> {
  return (await gw.issuer!.issueAccess({ tenant, subject: roles.join("+"), roles: [...roles] })).token;
}

async function http(method: string, path: string, bearer: string, body?: unknown) {
  const headers: Record<string, string> = { authorization: `Bearer ${bearer}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${base}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.text();
  let json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json };
}

let n = 0;
async function publish(tenant: string, category: string, key: string, data: unknown): Promise<number> {
  n += 1;
  const e = encodeEvent({ id: `${tenant}-${n}`, type: "Reading", data });
  return (await publisher.publish(`evt.${tenant}.${category}.${key}`, e.data, { headers: e.headers })).seq;
}

const dlqCount = (tenant: string, source: string): Promise<number> => countMessages(nats.nc, STREAMS.dlq, `dlq.${tenant}.${source}`);
const outputsOf = async (tenant: string, processor: string, key: string) =>
  (await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${processor}.${key}`)).map((d) => ({ msgId: d.msgId, sourceSeq: Number(d.headers["Flex-Source-Seq"]), data: JSON.parse(d.data) as { n: number; seq: number } }));

beforeAll(async () => {
  nats = await startTestNats({ tenants: [B] });
  await ensureTopology(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-dlq-"));
  marker = join(dir, "broken");
  writeFileSync(marker, "the cause of the failure");
  publisher = createPublisher(nats.nc);
  runtime = await startFixtureRuntime(await nats.connect(), [
    { name: FLAKY, kind: "flaky", subjects: ["evt.*.m.*"] },
    { name: FAULTY, kind: "faulty", subjects: ["evt.*.p.*"] },
  ], { metricsIntervalMs: 0 });
  gw = await createGateway({ nc: nats.nc, dataDir: dir, port: 0 });
  base = await gw.listen();
}, 60_000);

afterAll(async () => {
  await gw?.close();
  await runtime?.close();
  await publisher?.close();
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("dead letters through the gateway", () => {
  let poisonSeq = 0;
  let thirdSeq = 0;
  let dlqSeqA = 0;
  let dlqSeqB = 0;

  it("a poison event is dead-lettered; list counts it per source, show gives reason, attempts, original subject, headers and body; /metrics counts it", async () => {
    await publish(A, "m", "k1", { value: 1 });
    poisonSeq = await publish(A, "m", "k1", { value: 2, failWhile: marker });
    thirdSeq = await publish(A, "m", "k1", { value: 3 });
    await publish(B, "m", "k1", { value: 9, failWhile: marker });
    await waitFor(async () => (await dlqCount(A, FLAKY)) === 1 && (await dlqCount(B, FLAKY)) === 1, 30_000, "a dead letter per tenant");
    await waitFor(async () => (await outputsOf(A, FLAKY, "k1")).length === 2, 30_000, "the two good events processed");

    const reader = await token(A, ["reader"]);
    const list = await http("GET", "/v1/dlq", reader);
    expect(list.status).toBe(200);
    expect(list.json).toEqual({ sources: [{ source: FLAKY, count: 1, redrivePending: 0 }] });

    const page = await http("GET", `/v1/dlq/messages?source=${FLAKY}`, reader);
    expect(page.status).toBe(200);
    expect(page.json.more).toBe(false);
    expect(page.json.deadLetters).toHaveLength(1);
    const d = page.json.deadLetters[0];
    expect(d).toMatchObject({ tenant: A, source: FLAKY, kind: "processor", attempts: 2, originalSubject: `evt.${A}.m.k1`, originalSeq: poisonSeq, eventType: "Reading", data: { value: 2, failWhile: marker } });
    expect(d.reason).toMatch(/flaky: .* exists/);
    expect(d.reasons).toEqual([d.reason]);
    dlqSeqA = d.seq;

    const one = await http("GET", `/v1/dlq/messages/${dlqSeqA}`, reader);
    expect(one.status).toBe(200);
    expect(one.json).toMatchObject({ seq: dlqSeqA, reason: d.reason, attempts: 2, data: { value: 2 } });
    expect(one.json.headers["Flex-Source-Subject"]).toBe(`evt.${A}.m.k1`);
    expect(one.json.headers["Flex-Source-Seq"]).toBe(String(poisonSeq));

    const byReason = await http("GET", `/v1/dlq/messages?source=${FLAKY}&reason=FLAKY`, reader);
    expect(byReason.json.deadLetters.map((x: { seq: number }) => x.seq)).toEqual([dlqSeqA]);
    const none = await http("GET", `/v1/dlq/messages?reason=nothing-like-this&since=2020-01-01T00:00:00Z`, reader);
    expect(none.json.deadLetters).toEqual([]);

    dlqSeqB = (await createDeadLetters(nats.nc).find(B, { source: FLAKY })).deadLetters[0]!.seq;
    const text = await (await fetch(`${base}/metrics`)).text();
    expect(sumOf(parseMetrics(text), "flexcore_dlq_messages", { source: FLAKY })).toBe(2);
    // /metrics is public: counts are per source, never per tenant.
    expect(text).not.toContain(A);
    expect(text).not.toContain(B);
  }, 60_000);

  it("tenant A can neither see nor touch tenant B's dead letters (404, nothing changed); B's NATS user cannot publish a redrive", async () => {
    const admin = await token(A, ["admin"]);
    const before = { a: await dlqCount(A, FLAKY), b: await dlqCount(B, FLAKY) };
    const list = await http("GET", "/v1/dlq", admin);
    expect(list.json.sources.map((s: { source: string }) => s.source)).toEqual([FLAKY]);
    expect(list.json.sources[0].count).toBe(1);
    const page = await http("GET", `/v1/dlq/messages?source=${FLAKY}`, admin);
    expect(page.json.deadLetters.map((x: { seq: number }) => x.seq)).toEqual([dlqSeqA]);
    const attempts = [
      await http("GET", `/v1/dlq/messages/${dlqSeqB}`, admin),
      await http("POST", "/v1/dlq/redrive", admin, { seq: dlqSeqB }),
      await http("POST", "/v1/dlq/purge", admin, { seq: dlqSeqB, confirm: true }),
    ];
    let refused = 0;
    for (const r of attempts) {
      expect(r.status).toBe(404);
      expect(r.json.error.code).toBe("FLEX_DLQ_NOT_FOUND");
      refused += 1;
    }
    expect(refused).toBe(3);
    // A tenant in the body is not a filter: the tenant always comes from the token.
    const smuggled = await http("POST", "/v1/dlq/purge", admin, { source: FLAKY, tenant: B, confirm: true });
    expect(smuggled.status).toBe(400);
    expect(smuggled.json.error).toMatchObject({ code: "FLEX_INVALID_OPTION", details: { field: "tenant" } });
    expect({ a: await dlqCount(A, FLAKY), b: await dlqCount(B, FLAKY) }).toEqual(before);

    const ncB = await nats.connectAs(B);
    const e = encodeEvent({ id: "forged", type: "Reading", data: { value: 1 } });
    await expect(jetstream(ncB, { timeout: 1_000 }).publish(`redrive.${B}.${FLAKY}`, e.data, { headers: e.headers })).rejects.toThrow();
    expect(await countMessages(nats.nc, STREAMS.redrive, `redrive.${B}.>`)).toBe(0);
  }, 30_000);

  it("a reader cannot redrive or purge (403, nothing changed)", async () => {
    const reader = await token(A, ["reader"]);
    const writer = await token(A, ["writer"]);
    for (const [bearer, path, body] of [[reader, "/v1/dlq/redrive", { seq: dlqSeqA }], [reader, "/v1/dlq/purge", { source: FLAKY, confirm: true }], [writer, "/v1/dlq/redrive", { source: FLAKY }]] as const) {
      const r = await http("POST", path, bearer, body);
      expect(r.status).toBe(403);
      expect(r.json.error.code).toBe("FLEX_FORBIDDEN");
    }
    expect((await http("GET", "/v1/dlq", writer)).status).toBe(403);
    expect(await dlqCount(A, FLAKY)).toBe(1);
    expect(await countMessages(nats.nc, STREAMS.redrive, "redrive.>")).toBe(0);
  });

  it("bad filters are coded 400s naming the field, the value and what was expected; an unconfirmed purge deletes nothing", async () => {
    const admin = await token(A, ["admin"]);
    const cases: Array<[string, string, unknown, string, RegExp]> = [
      ["GET", "/v1/dlq/messages?since=yesterday", undefined, "since", /RFC 3339/],
      ["GET", "/v1/dlq/messages?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", undefined, "until", /not before since/],
      ["GET", "/v1/dlq/messages?limit=0", undefined, "limit", /from 1 to 1000/],
      ["GET", "/v1/dlq/messages?source=a.b", undefined, "source", /no dots/],
      ["GET", "/v1/dlq/messages/abc", undefined, "seq", /integer from 1/],
      ["POST", "/v1/dlq/redrive", {}, "source", /one source at a time/],
      ["POST", "/v1/dlq/redrive", { source: FLAKY, reasn: "x" }, "reasn", /known filters/],
      ["POST", "/v1/dlq/redrive", { source: FLAKY, reason: "x".repeat(300) }, "reason", /at most 256/],
      ["POST", "/v1/dlq/purge", { source: FLAKY }, "confirm", /confirm/],
    ];
    for (const [method, path, body, field, expected] of cases) {
      const r = await http(method, path, admin, body);
      expect(r.status, `${method} ${path} ${JSON.stringify(body)}`).toBe(400);
      expect(r.json.error.details?.field, path).toBe(field);
      expect(r.json.error.message).toMatch(expected);
      expect(r.json.error.code).toMatch(/^FLEX_(INVALID_OPTION|SUBJECT_TOKEN|DLQ_PURGE_UNCONFIRMED)$/);
    }
    expect(await dlqCount(A, FLAKY)).toBe(1);
    expect(await countMessages(nats.nc, STREAMS.redrive, "redrive.>")).toBe(0);
  });

  it("after the cause is fixed, a redrive reaches only the failing processor, and redriving twice processes it once", async () => {
    const admin = await token(A, ["admin"]);
    await unlink(marker);
    // A redrive that crashed between sending and removing the dead letter: the message went out once already.
    const service = createDeadLetters(nats.nc);
    const early = redriveMessage(await service.show(A, dlqSeqA));
    await jetstream(nats.nc).publish(early.subject, early.data, { headers: early.headers });
    const first = await http("POST", "/v1/dlq/redrive", admin, { seq: dlqSeqA });
    expect(first.status).toBe(200);
    expect(first.json).toEqual({ redriven: [dlqSeqA], duplicates: 1, more: false });
    const again = await http("POST", "/v1/dlq/redrive", admin, { seq: dlqSeqA });
    expect(again.status).toBe(404);
    const all = await http("POST", "/v1/dlq/redrive", admin, { source: FLAKY });
    expect(all.json).toEqual({ redriven: [], duplicates: 0, more: false });

    await waitFor(async () => (await outputsOf(A, FLAKY, "k1")).some((o) => o.sourceSeq === poisonSeq), 30_000, "the redriven event processed");
    await waitFor(async () => (await countMessages(nats.nc, STREAMS.redrive, "redrive.>")) === 0, 10_000, "the redrive taken back");
    const outputs = await outputsOf(A, FLAKY, "k1");
    const forPoison = outputs.filter((o) => o.sourceSeq === poisonSeq);
    expect(forPoison).toHaveLength(1);
    // Applied on the key's current state, as a late event: the third event counted.
    expect(forPoison[0]!.data).toMatchObject({ n: 3, seq: poisonSeq });
    expect(new Set(outputs.map((o) => o.msgId)).size).toBe(outputs.length);
    expect(await dlqCount(A, FLAKY)).toBe(0);
    // Only this processor saw it: the other one has no output for tenant A at all.
    expect(await countMessages(nats.nc, STREAMS.derived, `drv.${A}.${FAULTY}.>`)).toBe(0);
    // Its checkpoint did not go back to the late event's sequence (a restart would replay the third event).
    const kv = await new Kvm(nats.nc).open(BUCKETS.state);
    const checkpoint = JSON.parse(new TextDecoder().decode((await kv.get(stateKvKey(FLAKY, A, "k1")))!.value)) as { seq: number; state: { n: number } };
    expect(checkpoint).toMatchObject({ seq: thirdSeq, state: { n: 3 } });
    // The next event continues the count.
    await publish(A, "m", "k1", { value: 4 });
    await waitFor(async () => (await outputsOf(A, FLAKY, "k1")).length === 4, 30_000, "the next event");
    expect((await outputsOf(A, FLAKY, "k1")).map((o) => o.data.n)).toEqual([1, 2, 3, 4]);
    // B's dead letter was not touched by A's redrive of the whole source.
    expect(await dlqCount(B, FLAKY)).toBe(1);
    const list = await http("GET", "/v1/dlq", admin);
    expect(list.json.sources).toEqual([]);
  }, 60_000);

  it("a redrive racing a burst of the same key's events loses no update: the key's state counts every event once", async () => {
    const admin = await token(A, ["admin"]);
    const broken = join(dir, "broken-k2");
    writeFileSync(broken, "x");
    const poison = await publish(A, "m", "k2", { value: 1, failWhile: broken });
    await waitFor(async () => (await dlqCount(A, FLAKY)) === 1, 30_000, "the k2 poison dead-lettered");
    await unlink(broken);
    const burst = Array.from({ length: 300 }, (_, i) => publish(A, "m", "k2", { value: i }));
    const r = await http("POST", "/v1/dlq/redrive", admin, { source: FLAKY });
    expect(r.json.redriven).toHaveLength(1);
    await Promise.all(burst);
    await waitFor(async () => (await outputsOf(A, FLAKY, "k2")).length === 301, 30_000, "301 outputs for k2");
    const outputs = await outputsOf(A, FLAKY, "k2");
    expect(outputs.filter((o) => o.sourceSeq === poison)).toHaveLength(1);
    expect(Math.max(...outputs.map((o) => o.data.n))).toBe(301);
    expect(new Set(outputs.map((o) => o.data.n)).size).toBe(301);
    const kv = await new Kvm(nats.nc).open(BUCKETS.state);
    await waitFor(async () => (JSON.parse(new TextDecoder().decode((await kv.get(stateKvKey(FLAKY, A, "k2")))!.value)) as { state: { n: number } }).state.n === 301, 10_000, "the k2 checkpoint at 301");
  }, 60_000);

  it("a redriven message that fails again returns to the DLQ with both reasons; purge with confirm deletes it", async () => {
    const admin = await token(A, ["admin"]);
    const seq = await publish(A, "p", "x", { value: 1, poison: true });
    await waitFor(async () => (await dlqCount(A, FAULTY)) === 1, 30_000, "the poison dead-lettered");
    const [first] = (await http("GET", `/v1/dlq/messages?source=${FAULTY}`, admin)).json.deadLetters;
    const r = await http("POST", "/v1/dlq/redrive", admin, { source: FAULTY, reason: "poison" });
    expect(r.json.redriven).toEqual([first.seq]);
    await waitFor(async () => (await dlqCount(A, FAULTY)) === 1 && (await countMessages(nats.nc, STREAMS.redrive, "redrive.>")) === 0, 30_000, "the redrive failing again");
    const [second] = (await http("GET", `/v1/dlq/messages?source=${FAULTY}`, admin)).json.deadLetters;
    expect(second.seq).not.toBe(first.seq);
    expect(second.originalSeq).toBe(seq);
    expect(second.reasons).toHaveLength(2);
    expect(second.reasons[0]).toBe(first.reason);
    expect(second.reasons[1]).toMatch(/poison event at sequence/);

    const unconfirmed = await http("POST", "/v1/dlq/purge", admin, { source: FAULTY, confirm: false });
    expect(unconfirmed.status).toBe(400);
    expect(unconfirmed.json.error.code).toBe("FLEX_DLQ_PURGE_UNCONFIRMED");
    expect(await dlqCount(A, FAULTY)).toBe(1);
    const purged = await http("POST", "/v1/dlq/purge", admin, { source: FAULTY, confirm: true });
    expect(purged.json).toEqual({ purged: 1, more: false });
    expect(await dlqCount(A, FAULTY)).toBe(0);
    expect(await dlqCount(B, FLAKY)).toBe(1);
  }, 60_000);
});
