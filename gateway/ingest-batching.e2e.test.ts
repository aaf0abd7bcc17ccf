// POST /v1/events with fast-ingest batches (ingestBatching: "auto", nats-server 2.14+),
// through the real gateway on port 0 and the real broker.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { ensureTopology, STREAMS } from "../streams/index.js";
import { createGateway } from "./index.js";
import type { Gateway } from "./index.js";

let nats: TestNats;
let dir: string;
let gw: Gateway;
let url: string;
let token: string;
let victimToken: string;
const tenant = uniqueName("fi");
const victim = uniqueName("vi");

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-gw-fi-"));
  gw = await createGateway({ nc: nats.nc, dataDir: dir, port: 0, ingestBatching: "auto", workflows: false });
  url = await gw.listen();
  token = (await gw.issuer!.issueAccess({ tenant, subject: "ingest", roles: ["writer", "reader"], ttlSeconds: 600 })).token;
  victimToken = (await gw.issuer!.issueAccess({ tenant: victim, subject: "ingest", roles: ["writer", "reader"], ttlSeconds: 600 })).token;
}, 60_000);

afterAll(async () => {
  await gw?.close();
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Result { index: number; id: string | null; seq?: number; duplicate?: boolean; batched?: boolean; error?: { code: string } }

async function ingest(bearer: string, events: unknown[]): Promise<{ status: number; body: { accepted: number; rejected: number; results: Result[] } }> {
  const r = await fetch(`${url}/v1/events`, { method: "POST", headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json" }, body: JSON.stringify(events) });
  return { status: r.status, body: (await r.json()) as never };
}

async function stored(filter: string): Promise<number> {
  const info = await (await jetstreamManager(nats.nc)).streams.info(STREAMS.events, { subjects_filter: filter });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

describe("POST /v1/events with fast-ingest batches", () => {
  it("stores every event once, answers batched results with an upper-bound seq, and a retry stores nothing twice", async () => {
    const events = Array.from({ length: 3_000 }, (_, i) => ({ id: `${tenant}-${i}`, category: "sensor", stream: `s-${i % 50}`, type: "Read", data: { i } }));
    const first = await ingest(token, events);
    expect(first.status).toBe(200);
    expect(first.body.rejected).toBe(0);
    expect(first.body.results.filter((r) => r.batched).length).toBeGreaterThan(0);
    const last = (await (await jetstreamManager(nats.nc)).streams.info(STREAMS.events)).state.last_seq;
    for (const r of first.body.results) {
      expect(r.error).toBeUndefined();
      expect(r.seq).toBeGreaterThan(0);
      expect(r.seq).toBeLessThanOrEqual(last);
    }
    expect(await stored(`evt.${tenant}.>`)).toBe(3_000);
    const again = await ingest(token, events);
    expect(again.body.rejected).toBe(0);
    expect(await stored(`evt.${tenant}.>`)).toBe(3_000);
  });

  it("an event reusing another tenant's event id is not stored again and learns nothing of it; the other events are stored", async () => {
    const secretId = uniqueName("secret");
    await ingest(victimToken, [{ id: secretId, category: "account", stream: "a1", type: "Opened", data: { balance: 1_000_000 } }]);
    const mine = Array.from({ length: 100 }, (_, i) => ({ id: `${tenant}-m${i}`, category: "probe", stream: "p", type: "Read", data: { i } }));
    mine[50] = { id: secretId, category: "probe", stream: "p", type: "Read", data: { i: 50 } };
    const r = await ingest(token, mine);
    expect(r.status).toBe(200);
    expect(JSON.stringify(r.body)).not.toContain(victim);
    expect(JSON.stringify(r.body)).not.toContain("balance");
    expect(await stored(`evt.${tenant}.probe.>`)).toBe(99);
    expect(await stored(`evt.${victim}.>`)).toBe(1);
  });

  it("events for reserved categories are still refused one by one inside a batched request", async () => {
    const r = await ingest(token, [
      { category: "sensor", stream: "x", type: "Read", data: {} },
      { category: "workflow", stream: "run1", type: "RunSucceeded", data: {} },
      { category: "sensor", stream: "y", type: "Read", data: {} },
    ]);
    expect(r.body.results[1]!.error?.code).toBe("FLEX_CATEGORY_RESERVED");
    expect(await stored(`evt.${tenant}.workflow.>`)).toBe(0);
  });

  it("falls back to one ack per event when the stream does not take batches", async () => {
    const jsm = await jetstreamManager(nats.nc);
    const info = await jsm.streams.info(STREAMS.events);
    await jsm.streams.update(STREAMS.events, { ...info.config, allow_batched: false });
    try {
      const events = Array.from({ length: 500 }, (_, i) => ({ id: `${tenant}-fb${i}`, category: "fallback", stream: `s-${i % 5}`, type: "Read", data: { i } }));
      const r = await ingest(token, events);
      expect(r.body.rejected).toBe(0);
      expect(r.body.results.every((x) => x.batched === undefined && typeof x.duplicate === "boolean")).toBe(true);
      expect(await stored(`evt.${tenant}.fallback.>`)).toBe(500);
    } finally {
      await jsm.streams.update(STREAMS.events, { ...info.config, allow_batched: true });
    }
  });
});
