import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import {
  ConcurrencyError,
  createEventStore,
  createPublisher,
  encodeEvent,
  ensureTopology,
  eventSubject,
  InvalidEventError,
  PayloadTooLargeError,
  STREAMS,
  SubjectTokenError,
} from "./index.js";
import { DEFAULT_READ_HIGH_WATER } from "./event-store.js";
import { DEFAULT_READ_HEARTBEAT_MS } from "./stream-reader.js";
import type { EventStore, Reducer, StoredEvent } from "./index.js";

let nats: TestNats;
let store: EventStore;

beforeAll(async () => {
  nats = await startTestNats({ config: "max_payload: 65536" });
  await ensureTopology(nats.nc);
  store = await createEventStore(nats.nc, { snapshotEvery: 50 });
});
afterAll(async () => {
  await store?.close();
  await nats?.close();
});

const counter: Reducer<{ total: number; n: number }, { value: number }> = {
  name: "counter",
  initial: () => ({ total: 0, n: 0 }),
  apply: (s, e) => ({ total: s.total + e.data.value, n: s.n + 1 }),
};

describe("append", () => {
  it("returns revision and seq, and enforces expected revisions", async () => {
    const subject = eventSubject("acme", "sensor", uniqueName());
    const r1 = await store.append(subject, [{ type: "Read", data: { value: 1 } }], { expectedRevision: "no_stream" });
    expect(r1.revision).toBe(1);
    const r2 = await store.append(subject, [{ type: "Read", data: { value: 2 } }, { type: "Read", data: { value: 3 } }], { expectedRevision: 1 });
    expect(r2.revision).toBe(3);
    expect(r2.seq).toBeGreaterThan(r1.seq);
    const err = await store.append(subject, [{ type: "Read", data: { value: 4 } }], { expectedRevision: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConcurrencyError);
    expect((err as ConcurrencyError).code).toBe("FLEX_CONCURRENCY");
    expect((err as ConcurrencyError).expected).toBe(1);
    expect((err as ConcurrencyError).actual).toBe(3);
    await expect(store.append(subject, [{ type: "Read", data: {} }], { expectedRevision: "no_stream" })).rejects.toBeInstanceOf(ConcurrencyError);
    const other = eventSubject("acme", "sensor", uniqueName());
    await expect(store.append(other, [{ type: "Read", data: {} }], { expectedRevision: "exists" })).rejects.toBeInstanceOf(ConcurrencyError);
    expect((await store.head(subject)).revision).toBe(3);
  });

  it("stores an event id once, also when the whole append is retried", async () => {
    const subject = eventSubject("acme", "sensor", uniqueName());
    const a = await store.append(subject, [{ id: "e-1", type: "Read", data: { value: 1 } }], { expectedRevision: 0 });
    const b = await store.append(subject, [{ id: "e-1", type: "Read", data: { value: 1 } }], { expectedRevision: 0 });
    expect(b).toEqual({ revision: 1, seq: a.seq, duplicates: 1 });
    const again = await store.append(subject, [{ id: "e-1", type: "Read", data: { value: 1 } }]);
    expect(again.duplicates).toBe(1);
    expect(await store.read(subject)).toHaveLength(1);
  });

  it("a retry completes a multi-event append that stopped halfway, and fails if someone wrote after it", async () => {
    const subject = eventSubject("acme", "sensor", uniqueName());
    // As if the process died after storing the first of three events.
    await store.append(subject, [{ id: "m-1", type: "Read", data: { value: 1 } }], { expectedRevision: 0 });
    const retried = await store.append(subject, [
      { id: "m-1", type: "Read", data: { value: 1 } },
      { id: "m-2", type: "Read", data: { value: 2 } },
      { id: "m-3", type: "Read", data: { value: 3 } },
    ], { expectedRevision: 0 });
    expect(retried).toMatchObject({ revision: 3, duplicates: 1 });
    expect((await store.read(subject)).map((e) => e.id)).toEqual(["m-1", "m-2", "m-3"]);

    const other = eventSubject("acme", "sensor", uniqueName());
    await store.append(other, [{ id: "n-1", type: "Read", data: {} }], { expectedRevision: 0 });
    await store.append(other, [{ id: "foreign", type: "Read", data: {} }]);
    await expect(store.append(other, [{ id: "n-1", type: "Read", data: {} }, { id: "n-2", type: "Read", data: {} }], { expectedRevision: 0 }))
      .rejects.toMatchObject({ code: "FLEX_CONCURRENCY", actual: 2 });
    expect((await store.read(other)).map((e) => e.id)).toEqual(["n-1", "foreign"]);
  });

  it("20 concurrent writers on one aggregate: one winner per revision, no lost update", async () => {
    const subject = eventSubject("acme", "counter", uniqueName());
    const writers = await Promise.all(Array.from({ length: 20 }, async () => createEventStore(await nats.connect())));
    const wins: number[] = [];
    let conflicts = 0;
    const target = 40;
    await Promise.all(
      writers.map(async (w, i) => {
        for (;;) {
          const { revision } = await w.head(subject);
          if (revision >= target) return;
          try {
            await w.append(subject, [{ type: "Inc", data: { writer: i, at: revision } }], { expectedRevision: revision });
            wins.push(revision + 1);
          } catch (err) {
            if (!(err instanceof ConcurrencyError)) throw err;
            conflicts += 1;
          }
        }
      }),
    );
    await Promise.all(writers.map((w) => w.close()));
    const events = await store.read(subject);
    expect(events.length).toBe(wins.length);
    expect([...wins].sort((a, b) => a - b)).toEqual(events.map((e) => e.revision));
    expect(events.map((e) => e.revision)).toEqual(Array.from({ length: events.length }, (_, i) => i + 1));
    expect(events.length).toBeGreaterThanOrEqual(target);
    expect(conflicts).toBeGreaterThan(0);
  });

  it("rejects bad input with typed errors and stores nothing", async () => {
    const id = uniqueName();
    const subject = eventSubject("acme", "bad", id);
    expect(() => eventSubject("ac.me", "x", "y")).toThrow(SubjectTokenError);
    expect(() => eventSubject("acme", "", "y")).toThrow(/category/);
    expect(() => eventSubject("acme", "x", "a b")).toThrow(SubjectTokenError);
    expect(() => eventSubject("acme", "x", "*")).toThrow(SubjectTokenError);
    expect(() => eventSubject("acme", "x", ">")).toThrow(SubjectTokenError);
    expect(() => eventSubject("acme", "x", "a\u0001")).toThrow(SubjectTokenError);
    expect(() => eventSubject("acme", "x", "a".repeat(129))).toThrow(/128 bytes/);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expect(store.append(subject, [{ type: "T", data: cyclic }])).rejects.toThrow(InvalidEventError);
    await expect(store.append(subject, [{ type: "T", data: 1 }, { type: "", data: 2 }])).rejects.toThrow(/events\[1\]\.type/);
    await expect(store.append(subject, [{ type: "T", data: undefined }])).rejects.toThrow(/events\[0\]\.data/);
    await expect(store.append(subject, [{ type: "T", data: "x".repeat(70_000) }])).rejects.toBeInstanceOf(PayloadTooLargeError);
    await expect(store.append(subject, [], {})).rejects.toBeInstanceOf(InvalidEventError);
    expect(await store.read(subject)).toEqual([]);
  });
});

describe("read", () => {
  it("reads forward and backward with metadata", async () => {
    const subject = eventSubject("acme", "sensor", uniqueName());
    for (let i = 1; i <= 30; i++) {
      await store.append(subject, [{ type: "Read", data: { value: i }, correlationId: "corr", causationId: `c${i}` }]);
    }
    const fwd = await store.read(subject, { from: 5, limit: 3 });
    expect(fwd.map((e) => e.revision)).toEqual([5, 6, 7]);
    expect(fwd[0]).toMatchObject({ type: "Read", data: { value: 5 }, correlationId: "corr", causationId: "c5", schema: "1", subject });
    expect(fwd[0]!.seq).toBeGreaterThan(0);
    const back = await store.read(subject, { direction: "backward", limit: 4 });
    expect(back.map((e) => e.revision)).toEqual([30, 29, 28, 27]);
    const small = await store.read(subject, { direction: "backward", from: 3 });
    expect(small.map((e) => e.revision)).toEqual([3, 2, 1]);
  });

  it("readAll catches up, stops at the end when asked, and follows live events", async () => {
    const tenant = uniqueName("ra");
    for (let i = 0; i < 25; i++) await store.append(eventSubject(tenant, "c", `k${i % 5}`), [{ type: "T", data: { i } }]);
    const seen: number[] = [];
    for await (const e of store.readAll({ filter: `evt.${tenant}.>`, follow: false })) seen.push((e.data as { i: number }).i);
    expect(seen).toEqual(Array.from({ length: 25 }, (_, i) => i));

    const empty: StoredEvent[] = [];
    for await (const e of store.readAll({ filter: `evt.${uniqueName("none")}.>`, follow: false })) empty.push(e);
    expect(empty).toEqual([]);

    const ac = new AbortController();
    const live: number[] = [];
    const reading = (async () => {
      for await (const e of store.readAll({ filter: `evt.${tenant}.>`, signal: ac.signal })) {
        live.push((e.data as { i: number }).i);
        if (live.length === 27) ac.abort();
      }
    })();
    await store.append(eventSubject(tenant, "c", "k1"), [{ type: "T", data: { i: 25 } }, { type: "T", data: { i: 26 } }]);
    await expect(reading).rejects.toMatchObject({ code: "FLEX_ABORTED" });
    expect(live).toEqual(Array.from({ length: 27 }, (_, i) => i));
  });

  it("readAll gives a slow reader every event once and in order past its high-water mark, as plain objects", async () => {
    const tenant = uniqueName("rs");
    const n = DEFAULT_READ_HIGH_WATER + 4_000;
    const publisher = createPublisher(nats.nc);
    await Promise.all(Array.from({ length: n }, (_, i) => {
      const e = encodeEvent({ type: "T", data: { i } });
      return publisher.publish(eventSubject(tenant, "c", `k${i % 7}`), e.data, { headers: e.headers, msgId: e.id });
    }));
    await publisher.close();
    const seen: number[] = [];
    let last = 0;
    for await (const e of store.readAll({ filter: `evt.${tenant}.>`, follow: false, batch: 500 })) {
      expect(e.seq).toBeGreaterThan(last);
      last = e.seq;
      seen.push((e.data as { i: number }).i);
      // Slower than the server delivers: the queue reaches its mark and the read pauses.
      if (seen.length % 1_000 === 0) await new Promise((r) => setTimeout(r, 20));
    }
    expect(seen).toEqual(Array.from({ length: n }, (_, i) => i));
    const [first] = await (async () => {
      for await (const e of store.readAll({ filter: `evt.${tenant}.>`, follow: false })) return [e];
      return [];
    })();
    // Own properties, not getters: a spread copies every field.
    expect({ ...first! }).toMatchObject({ type: "T", data: { i: 0 }, schema: "1", subject: `evt.${tenant}.c.k0` });
    expect(typeof { ...first! }.id).toBe("string");
  });

  it("readAll yields what it read, then throws when its stream is gone and cannot be read again", async () => {
    // A server of its own: the test deletes FLEX_EVENTS.
    const own = await startTestNats();
    try {
      await ensureTopology(own.nc);
      const ownStore = await createEventStore(own.nc);
      for (let i = 0; i < 5; i++) await ownStore.append(eventSubject("gone", "c", "k"), [{ type: "T", data: { i } }]);
      const seen: number[] = [];
      const started = performance.now();
      const reading = (async () => {
        for await (const e of ownStore.readAll()) {
          seen.push((e.data as { i: number }).i);
          if (seen.length === 5) await (await jetstreamManager(own.nc)).streams.delete(STREAMS.events);
        }
      })();
      await expect(reading).rejects.toThrow(/stream not found/i);
      expect(seen).toEqual([0, 1, 2, 3, 4]);
      expect(performance.now() - started).toBeLessThan(30_000);
      await ownStore.close();
    } finally {
      await own.close();
    }
  }, 60_000);

  it("readAll yields what it read, then throws when its connection is closed under it (no hang)", async () => {
    const tenant = uniqueName("rc");
    for (let i = 0; i < 5; i++) await store.append(eventSubject(tenant, "c", "k"), [{ type: "T", data: { i } }]);
    const nc = await nats.connect();
    const ownStore = await createEventStore(nc);
    const seen: number[] = [];
    const started = performance.now();
    const reading = (async () => {
      for await (const e of ownStore.readAll({ filter: `evt.${tenant}.>` })) {
        seen.push((e.data as { i: number }).i);
        if (seen.length === 5) void nc.close();
      }
    })();
    await expect(reading).rejects.toThrow(/closed/i);
    expect(seen).toEqual([0, 1, 2, 3, 4]);
    // Noticed from the connection, not after two missed heartbeats (2 x 5 s).
    expect(performance.now() - started).toBeLessThan(DEFAULT_READ_HEARTBEAT_MS);
  }, 30_000);

  it("readAll starts at a stored time with since, and stops at until", async () => {
    const tenant = uniqueName("rt");
    const stored: StoredEvent[] = [];
    for (let i = 0; i < 6; i++) {
      await store.append(eventSubject(tenant, "c", "k"), [{ type: "T", data: { i } }]);
      await new Promise((r) => setTimeout(r, 15));
    }
    for await (const e of store.readAll({ filter: `evt.${tenant}.>`, follow: false })) stored.push(e);
    const from = stored[2]!.storedAt;
    const since: number[] = [];
    for await (const e of store.readAll({ filter: `evt.${tenant}.>`, since: new Date(from), follow: false })) since.push((e.data as { i: number }).i);
    expect(since).toEqual(stored.filter((e) => e.storedAt >= from).map((e) => (e.data as { i: number }).i));
    expect(since[0]).toBeLessThanOrEqual(2);
    // Nothing stored since then: it ends at once instead of waiting for new events.
    const later: StoredEvent[] = [];
    for await (const e of store.readAll({ filter: `evt.${tenant}.>`, since: new Date(stored[5]!.storedAt + 60_000), follow: false })) later.push(e);
    expect(later).toEqual([]);
    const until: number[] = [];
    for await (const e of store.readAll({ filter: `evt.${tenant}.>`, until: stored[3]!.seq })) until.push((e.data as { i: number }).i);
    expect(until).toEqual([0, 1, 2, 3]);
  });
});

describe("aggregate", () => {
  it("rebuilds from snapshots, and asOf seq / time equal a replay up to there", async () => {
    const subject = eventSubject("acme", "agg", uniqueName());
    const seqs: number[] = [];
    for (let i = 1; i <= 120; i++) {
      const r = await store.append(subject, [{ type: "Read", data: { value: i } }]);
      seqs.push(r.seq);
    }
    const full = await store.aggregate(subject, counter);
    expect(full.state).toEqual({ total: 7260, n: 120 });
    expect(full.fromSnapshot).toBe(false);
    const again = await store.aggregate(subject, counter);
    expect(again).toMatchObject({ state: { total: 7260, n: 120 }, fromSnapshot: true, eventsRead: 0, revision: 120 });
    await store.append(subject, [{ type: "Read", data: { value: 1000 } }]);
    const more = await store.aggregate(subject, counter);
    expect(more).toMatchObject({ state: { total: 8260, n: 121 }, fromSnapshot: true, eventsRead: 1 });

    const atSeq = await store.aggregate(subject, counter, { asOf: seqs[59]! });
    const replay = (await store.read(subject, { limit: 60 })).reduce((s, e) => counter.apply(s, e as StoredEvent<{ value: number }>), counter.initial());
    expect(atSeq.state).toEqual(replay);
    expect(atSeq.revision).toBe(60);

    const events = await store.read(subject);
    const t = events[89]!.storedAt;
    const atTime = await store.aggregate(subject, counter, { asOf: new Date(t) });
    const upTo = events.filter((e) => e.storedAt <= t).reduce((s, e) => counter.apply(s, e as StoredEvent<{ value: number }>), counter.initial());
    expect(atTime.state).toEqual(upTo);
  });
});

describe("wire format", () => {
  it("a plain JetStream consumer sees DESIGN.md's headers and JSON bodies", async () => {
    const subject = eventSubject("acme", "wire", uniqueName());
    await store.append(subject, [{ id: "wire-1", type: "Read", data: { value: 42 }, correlationId: "c-1", causationId: "c-0", schema: 2 }]);
    const jsm = await jetstreamManager(nats.nc);
    const js = jetstream(nats.nc);
    const consumer = await js.consumers.get(STREAMS.events, { filter_subjects: subject });
    const m = await consumer.next();
    expect(m).not.toBeNull();
    expect(m!.headers?.get("Nats-Msg-Id")).toBe("wire-1");
    expect(m!.headers?.get("Flex-Type")).toBe("Read");
    expect(new Date(m!.headers!.get("Flex-Time")).toISOString()).toBe(m!.headers!.get("Flex-Time"));
    expect(m!.headers?.get("Flex-Correlation-Id")).toBe("c-1");
    expect(m!.headers?.get("Flex-Causation-Id")).toBe("c-0");
    expect(m!.headers?.get("Flex-Schema")).toBe("2");
    expect(m!.headers?.get("Content-Type")).toBe("application/json");
    expect(JSON.parse(new TextDecoder().decode(m!.data))).toEqual({ value: 42 });
    expect((await jsm.streams.info(STREAMS.events)).config.subjects).toEqual(["evt.>"]);
  });
});
