import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { setTimeout as sleep } from "node:timers/promises";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import {
  BatchTooLargeError,
  ConcurrencyError,
  createEventStore,
  DuplicateEventIdError,
  ensureTopology,
  eventSubject,
  MAX_APPEND_EVENTS,
  STREAMS,
} from "./index.js";
import type { EventInput, EventStore } from "./index.js";

let nats: TestNats;
let store: EventStore;

beforeAll(async () => {
  nats = await startTestNats({ tenants: ["mallory", "victim"] });
  await ensureTopology(nats.nc);
  store = await createEventStore(nats.nc);
});
afterAll(async () => {
  await store?.close();
  await nats?.close();
});

/** Messages stored under `filter` (a subject or a wildcard). */
async function stored(filter: string): Promise<number> {
  const jsm = await jetstreamManager(nats.nc);
  const info = await jsm.streams.info(STREAMS.events, { subjects_filter: filter });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

function events(prefix: string, n: number, bytes = 16): EventInput[] {
  return Array.from({ length: n }, (_, i) => ({ id: `${prefix}-${i}`, type: "Read", data: { i, pad: "x".repeat(bytes) } }));
}

describe("atomic appends (nats-server 2.12+, allow_atomic)", () => {
  it("the topology enables atomic batches on FLEX_EVENTS", async () => {
    const jsm = await jetstreamManager(nats.nc);
    expect((await jsm.streams.info(STREAMS.events)).config.allow_atomic).toBe(true);
  });

  it("an append whose last event reuses an id stored in another aggregate stores nothing", async () => {
    const other = eventSubject("acme", "sensor", uniqueName());
    const taken = uniqueName("taken");
    await store.append(other, [{ id: taken, type: "Read", data: {} }]);
    const subject = eventSubject("acme", "sensor", uniqueName());
    const batch = [...events(uniqueName("e"), 4), { id: taken, type: "Read", data: {} }];
    const err = await store.append(subject, batch).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DuplicateEventIdError);
    expect((err as DuplicateEventIdError).code).toBe("FLEX_DUPLICATE_EVENT_ID");
    expect((err as DuplicateEventIdError).message).not.toContain(taken);
    expect(await stored(subject)).toBe(0);
    expect((await store.head(subject)).revision).toBe(0);
  });

  it("a single event reusing another aggregate's id learns nothing about that aggregate", async () => {
    const victim = eventSubject("victim", "account", uniqueName());
    const id = uniqueName("secret");
    await store.append(victim, events("v", 3));
    await store.append(victim, [{ id, type: "Read", data: {} }]);
    const mine = eventSubject("mallory", "account", uniqueName());
    const err = await store.append(mine, [{ id, type: "Read", data: {} }]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DuplicateEventIdError);
    expect(JSON.stringify(err)).not.toContain("victim");
    expect(await stored(mine)).toBe(0);
  });

  it("a wrong expected revision stores nothing of the batch: ConcurrencyError", async () => {
    const subject = eventSubject("acme", "sensor", uniqueName());
    await store.append(subject, events(uniqueName("a"), 2));
    const second = await createEventStore(nats.nc);
    // The other store's cached head is stale: its batch reaches the server and is refused at the commit.
    await second.head(subject);
    await store.append(subject, events(uniqueName("b"), 1), { expectedRevision: 2 });
    const err = await second.append(subject, events(uniqueName("c"), 5), { expectedRevision: 2 }).catch((e: unknown) => e);
    await second.close();
    expect(err).toBeInstanceOf(ConcurrencyError);
    expect((err as ConcurrencyError).actual).toBe(3);
    expect(await stored(subject)).toBe(3);
  });

  it("a retried batch with the same ids is stored once and answers as the first did", async () => {
    const subject = eventSubject("acme", "sensor", uniqueName());
    const batch = events(uniqueName("r"), 10);
    const first = await store.append(subject, batch, { expectedRevision: "no_stream" });
    expect(first).toMatchObject({ revision: 10, duplicates: 0 });
    const fresh = await createEventStore(nats.nc);
    const again = await fresh.append(subject, batch, { expectedRevision: "no_stream" });
    await fresh.close();
    expect(again).toEqual({ revision: 10, seq: first.seq, duplicates: 10 });
    expect(await stored(subject)).toBe(10);
    const read = await store.read(subject);
    expect(read.map((e) => e.revision)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
  });

  it(`more than ${MAX_APPEND_EVENTS} events: BatchTooLargeError before anything is written`, async () => {
    const subject = eventSubject("acme", "sensor", uniqueName());
    const err = await store.append(subject, events("big", MAX_APPEND_EVENTS + 1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BatchTooLargeError);
    expect((err as BatchTooLargeError).message).toContain(`${MAX_APPEND_EVENTS + 1}`);
    expect(await stored(subject)).toBe(0);
    const ok = await store.append(subject, events(uniqueName("max"), MAX_APPEND_EVENTS));
    expect(ok.revision).toBe(MAX_APPEND_EVENTS);
  });

  it("a tenant's hand-made batch cannot carry a message into another tenant's stream", async () => {
    const tenantNc = await nats.connectAs("mallory");
    const mine = eventSubject("mallory", "sensor", uniqueName());
    const theirs = eventSubject("victim", "sensor", uniqueName());
    const h = (seq: number, commit = false) => {
      const x = headers();
      x.set("Nats-Batch-Id", "evil");
      x.set("Nats-Batch-Sequence", String(seq));
      if (commit) x.set("Nats-Batch-Commit", "1");
      return x;
    };
    tenantNc.publish(mine, "1", { headers: h(1) });
    tenantNc.publish(theirs, "2", { headers: h(2) });
    await tenantNc.request(mine, "3", { headers: h(3, true), timeout: 2_000 }).catch(() => undefined);
    await sleep(200);
    expect(await stored(theirs)).toBe(0);
    // The server saw a gap (message 2 never reached it): the batch is refused as a whole.
    expect(await stored(mine)).toBe(0);
  });

  it("kill -9 of nats-server during a 1000-event append: afterwards the aggregate holds all of it or none, and a retry stores it exactly once", async () => {
    const subject = eventSubject("acme", "sensor", uniqueName());
    const batch = events(uniqueName("k"), MAX_APPEND_EVENTS, 1_000);
    const attempt = store.append(subject, batch, { expectedRevision: "no_stream" }).then(() => "acked" as const, (e: unknown) => e);
    await sleep(2);
    await nats.server.kill("SIGKILL");
    await sleep(300);
    await nats.server.restart();
    const outcome = await attempt;
    const after = await stored(subject);
    expect([0, MAX_APPEND_EVENTS]).toContain(after);
    if (outcome === "acked") expect(after).toBe(MAX_APPEND_EVENTS);
    let result;
    for (let i = 0; i < 5 && !result; i++) result = await store.append(subject, batch, { expectedRevision: "no_stream" }).catch(() => undefined);
    expect(result?.revision).toBe(MAX_APPEND_EVENTS);
    expect(await stored(subject)).toBe(MAX_APPEND_EVENTS);
    const ids = (await store.read(subject)).map((e) => e.id);
    expect(new Set(ids).size).toBe(MAX_APPEND_EVENTS);
  }, 60_000);

  it("falls back to event-by-event appends on a stream without allow_atomic", async () => {
    const jsm = await jetstreamManager(nats.nc);
    const info = await jsm.streams.info(STREAMS.events);
    await jsm.streams.update(STREAMS.events, { ...info.config, allow_atomic: false });
    try {
      const fallback = await createEventStore(nats.nc);
      const subject = eventSubject("acme", "sensor", uniqueName());
      const r = await fallback.append(subject, events(uniqueName("f"), 3), { expectedRevision: "no_stream" });
      expect(r.revision).toBe(3);
      expect(await stored(subject)).toBe(3);
      await fallback.close();
    } finally {
      await jsm.streams.update(STREAMS.events, { ...info.config, allow_atomic: true });
    }
  });
});
