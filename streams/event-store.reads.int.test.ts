// Aggregate reads with batch direct gets (batchReads "auto", 2.11+) give exactly what the
// consumer path gives: same events, order, revisions, and time travel.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { createEventStore, ensureTopology, eventSubject } from "./index.js";
import { DIRECT_READ_BATCH } from "./event-store.js";
import type { EventStore, Reducer } from "./index.js";

let nats: TestNats;
let direct: EventStore;
let consumer: EventStore;
beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  direct = await createEventStore(nats.nc, { batchReads: "auto", snapshotEvery: 1_000_000 });
  consumer = await createEventStore(nats.nc, { batchReads: "off", snapshotEvery: 1_000_000 });
});
afterAll(async () => {
  await direct?.close();
  await consumer?.close();
  await nats?.close();
});

const sum: Reducer<{ n: number; total: number; last: number }, { v: number }> = {
  name: "sum",
  initial: () => ({ n: 0, total: 0, last: 0 }),
  apply: (s, e) => ({ n: s.n + 1, total: s.total + e.data.v, last: e.revision ?? 0 }),
};

describe("batch direct get reads", () => {
  it(`an aggregate of more than ${DIRECT_READ_BATCH * 2} events interleaved with others reads the same both ways (a consumer for the long reads, one batch get for a page)`, async () => {
    const subject = eventSubject("acme", "big", uniqueName());
    const other = eventSubject("acme", "big", uniqueName());
    const n = DIRECT_READ_BATCH * 2 + 77;
    for (let i = 0; i < n; i += 250) {
      const chunk = Array.from({ length: Math.min(250, n - i) }, (_, k) => ({ type: "V", data: { v: i + k } }));
      await direct.append(subject, chunk);
      await direct.append(other, [{ type: "V", data: { v: -1 } }, { type: "V", data: { v: -1 } }]);
    }
    const a = await direct.read(subject);
    const b = await consumer.read(subject);
    expect(a).toHaveLength(n);
    expect(a.map((e) => [e.seq, e.revision, (e.data as { v: number }).v])).toEqual(b.map((e) => [e.seq, e.revision, (e.data as { v: number }).v]));
    expect(a.every((e) => e.subject === subject)).toBe(true);
    const page = await direct.read(subject, { from: 1_000, limit: 50, direction: "backward" });
    expect(page.map((e) => e.revision)).toEqual(Array.from({ length: 50 }, (_, i) => 1_000 - i));
    const full = await direct.aggregate(subject, sum, { snapshots: false });
    expect(full.state).toEqual({ n, total: (n * (n - 1)) / 2, last: n });
    // Time travel by sequence: the state as of the 1500th event.
    const at = a[1_499]!.seq;
    const past = await direct.aggregate(subject, sum, { snapshots: false, asOf: at });
    const pastConsumer = await consumer.aggregate(subject, sum, { snapshots: false, asOf: at });
    expect(past.state).toEqual({ n: 1_500, total: (1_500 * 1_499) / 2, last: 1_500 });
    expect(pastConsumer.state).toEqual(past.state);
    // By time: before the first event there is nothing.
    const before = await direct.aggregate(subject, sum, { snapshots: false, asOf: new Date(a[0]!.storedAt - 1) });
    expect(before.state.n).toBe(0);
  });

  it(`an aggregate of ${DIRECT_READ_BATCH} events of 2 KiB (one batch direct get, continued if the server splits it) reads whole and in order`, async () => {
    const subject = eventSubject("acme", "mid", uniqueName());
    const pad = "x".repeat(2_048);
    for (let i = 0; i < DIRECT_READ_BATCH; i += 256) await direct.append(subject, Array.from({ length: 256 }, (_, k) => ({ type: "V", data: { v: i + k, pad } })));
    const a = await direct.read(subject);
    expect(a.map((e) => e.revision)).toEqual(Array.from({ length: DIRECT_READ_BATCH }, (_, i) => i + 1));
    const b = await consumer.read(subject);
    expect(a.map((e) => e.seq)).toEqual(b.map((e) => e.seq));
    const past = await direct.aggregate(subject, sum, { snapshots: false, asOf: a[99]!.seq });
    expect(past.state.n).toBe(100);
  });

  it("small and empty aggregates", async () => {
    const subject = eventSubject("acme", "small", uniqueName());
    expect(await direct.read(subject)).toEqual([]);
    await direct.append(subject, [{ type: "V", data: { v: 1 } }, { type: "V", data: { v: 2 } }, { type: "V", data: { v: 3 } }]);
    expect((await direct.read(subject)).map((e) => e.revision)).toEqual([1, 2, 3]);
    expect((await direct.aggregate(subject, sum)).state.total).toBe(6);
  });
});
