import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { createPublisher, encodeEvent, ensureTopology, eventSubject, InvalidOptionError, openStreamReader, STREAMS } from "./index.js";
import type { StoredEvent, StreamReader } from "./index.js";

let nats: TestNats;

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
});
afterAll(async () => {
  await nats?.close();
});

/** Publishes `n` events under `evt.<tenant>.c.k<i % 7>`; resolves with their sequences. */
async function publish(tenant: string, n: number, from = 0): Promise<number[]> {
  const publisher = createPublisher(nats.nc);
  const acks = await Promise.all(Array.from({ length: n }, (_, k) => {
    const i = from + k;
    const e = encodeEvent({ id: `${tenant}-${i}`, type: "Counted", data: { i } });
    return publisher.publish(eventSubject(tenant, "c", `k${i % 7}`), e.data, { headers: e.headers, msgId: e.id });
  }));
  await publisher.close();
  return acks.map((a) => a.seq);
}

/** Collects what a reader hands out until `until` holds (or `ms` pass). */
function collector(): { events: StoredEvent[]; pending: number[]; onEvent: (e: StoredEvent, p: number) => void; until(ok: () => boolean, ms?: number): Promise<void> } {
  const events: StoredEvent[] = [];
  const pending: number[] = [];
  return {
    events,
    pending,
    onEvent: (e, p) => {
      events.push(e);
      pending.push(p);
    },
    async until(ok, ms = 20_000) {
      const deadline = Date.now() + ms;
      while (!ok()) {
        if (Date.now() > deadline) throw new Error(`timed out with ${events.length} events`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

async function readerConsumers(): Promise<string[]> {
  const jsm = await jetstreamManager(nats.nc);
  const names: string[] = [];
  for await (const ci of jsm.consumers.list(STREAMS.events)) if (ci.name.startsWith("flexr_")) names.push(ci.name);
  return names;
}

describe("openStreamReader", () => {
  it("hands every event of the filter once, in stream order, from the start sequence, with what is pending", async () => {
    const tenant = uniqueName("sr");
    const seqs = await publish(tenant, 1_000);
    const c = collector();
    await using reader = await openStreamReader(nats.nc, { stream: STREAMS.events, filter: `evt.${tenant}.>`, startSeq: seqs[100]!, window: 64, onEvent: c.onEvent });
    await c.until(() => c.events.length >= 900);
    await new Promise((r) => setTimeout(r, 100));
    expect(c.events.map((e) => e.seq)).toEqual(seqs.slice(100));
    expect(c.events.map((e) => (e.data as { i: number }).i)).toEqual(Array.from({ length: 900 }, (_, k) => 100 + k));
    expect(c.events[0]).toMatchObject({ id: `${tenant}-100`, type: "Counted", subject: eventSubject(tenant, "c", "k2") });
    expect(Math.abs(c.events[0]!.storedAt - Date.now())).toBeLessThan(60_000);
    expect(c.pending.at(-1)).toBe(0);
    expect(c.pending[0]).toBe(899);
    expect(reader.lastSeq).toBe(seqs.at(-1));
    // Live: what is published next arrives too.
    const more = await publish(tenant, 5, 1_000);
    await c.until(() => c.events.length === 905);
    expect(c.events.slice(900).map((e) => e.seq)).toEqual(more);
  });

  it("stops asking while paused and goes on after resume", async () => {
    const tenant = uniqueName("sr");
    await publish(tenant, 600);
    const c = collector();
    let reader: StreamReader | undefined;
    reader = await openStreamReader(nats.nc, {
      stream: STREAMS.events, filter: `evt.${tenant}.>`, startSeq: 1, window: 100,
      onEvent: (e, p) => {
        c.onEvent(e, p);
        if (c.events.length === 1) reader?.pause();
      },
    });
    try {
      await new Promise((r) => setTimeout(r, 300));
      // What was asked for before the pause still arrives; nothing more.
      expect(c.events.length).toBeLessThanOrEqual(100);
      reader.resume();
      await c.until(() => c.events.length === 600);
      expect(new Set(c.events.map((e) => e.seq)).size).toBe(600);
    } finally {
      await reader.close();
    }
  });

  it("re-creates a consumer deleted under it and loses or repeats nothing", async () => {
    const tenant = uniqueName("sr");
    const seqs = await publish(tenant, 3_000);
    const c = collector();
    const reasons: string[] = [];
    let deleted = false;
    const jsm = await jetstreamManager(nats.nc);
    let held: StreamReader | undefined;
    await using reader = await openStreamReader(nats.nc, {
      stream: STREAMS.events, filter: `evt.${tenant}.>`, startSeq: 1, window: 50, heartbeatMs: 500,
      onEvent: (e, p) => {
        c.onEvent(e, p);
        if (c.events.length === 700 && !deleted) {
          deleted = true;
          // Paused until the consumer is gone, so a fast reader cannot finish before the delete.
          held?.pause();
          void readerConsumers()
            .then((names) => Promise.all(names.map((n) => jsm.consumers.delete(STREAMS.events, n))))
            .finally(() => held?.resume());
        }
      },
      onRecreate: (_from, reason) => reasons.push(reason),
    });
    held = reader;
    await c.until(() => c.events.length >= 3_000 && reader.recreated > 0);
    expect(reasons.length).toBeGreaterThan(0);
    expect(c.events.map((e) => e.seq)).toEqual(seqs);
  });

  it("reads a filter that is most of the stream without the server's filter, and hands out none of the other tenants' events, across a re-creation", async () => {
    const tenant = uniqueName("sr");
    // A look-alike tenant (`<tenant>x`) interleaved with it: 1 of its events after every 3.
    const other = `${tenant}x`;
    const mine: number[] = [];
    for (let round = 0; round < 10; round++) {
      mine.push(...(await publish(tenant, 300, round * 300)));
      await publish(other, 100, round * 100);
    }
    const c = collector();
    let filters: Array<string | undefined> = [];
    const jsm = await jetstreamManager(nats.nc);
    let held: StreamReader | undefined;
    let deleted = false;
    await using reader = await openStreamReader(nats.nc, {
      stream: STREAMS.events, filter: `evt.${tenant}.>`, startSeq: 1, window: 64, heartbeatMs: 500,
      onEvent: (e, p) => {
        c.onEvent(e, p);
        if (c.events.length === 1_000 && !deleted) {
          deleted = true;
          held?.pause();
          void (async () => {
            const names = await readerConsumers();
            filters = await Promise.all(names.map(async (n) => (await jsm.consumers.info(STREAMS.events, n)).config.filter_subject));
            await Promise.all(names.map((n) => jsm.consumers.delete(STREAMS.events, n)));
          })().finally(() => held?.resume());
        }
      },
    });
    held = reader;
    await c.until(() => c.events.length >= 3_000 && reader.recreated > 0);
    await new Promise((r) => setTimeout(r, 100));
    // The server was asked for every subject...
    expect(filters).toEqual([undefined]);
    // ...and only the filter's events came out, each once, in order.
    expect(c.events.map((e) => e.seq)).toEqual(mine);
    expect(c.events.every((e) => e.subject.startsWith(`evt.${tenant}.`))).toBe(true);
    expect(reader.lastSeq).toBe(mine.at(-1));
  });

  it("keeps the server's filter for a filter that is a small part of the stream", async () => {
    const tenant = uniqueName("sr");
    const mine = await publish(tenant, 100);
    await publish(`${tenant}x`, 900);
    const c = collector();
    await using reader = await openStreamReader(nats.nc, { stream: STREAMS.events, filter: `evt.${tenant}.>`, startSeq: 1, onEvent: c.onEvent });
    await c.until(() => c.events.length >= 100);
    const jsm = await jetstreamManager(nats.nc);
    const names = await readerConsumers();
    expect(names).toHaveLength(1);
    expect((await jsm.consumers.info(STREAMS.events, names[0]!)).config.filter_subject).toBe(`evt.${tenant}.>`);
    expect(c.events.map((e) => e.seq)).toEqual(mine);
    expect(c.pending.at(-1)).toBe(0);
    expect(reader.recreated).toBe(0);
  });

  it("reads on across a kill -9 and restart of nats-server, each event once and in order", async () => {
    const own = await startTestNats();
    try {
      await ensureTopology(own.nc);
      const publisher = createPublisher(own.nc);
      const tenant = uniqueName("sr");
      const seqs: number[] = [];
      for (let i = 0; i < 2_000; i++) {
        const e = encodeEvent({ id: `${tenant}-${i}`, type: "Counted", data: { i } });
        seqs.push((await publisher.publish(eventSubject(tenant, "c", `k${i % 7}`), e.data, { headers: e.headers, msgId: e.id }).then((a) => a.seq)));
      }
      await publisher.close();
      const c = collector();
      let killed: Promise<void> | undefined;
      await using reader = await openStreamReader(own.nc, {
        stream: STREAMS.events, startSeq: 1, window: 100, heartbeatMs: 500,
        onEvent: (e, p) => {
          c.onEvent(e, p);
          if (c.events.length === 500 && !killed) killed = own.server.kill("SIGKILL").then(() => own.server.restart());
        },
      });
      await c.until(() => killed !== undefined);
      await killed;
      await c.until(() => c.events.length >= 2_000, 60_000);
      await new Promise((r) => setTimeout(r, 200));
      expect(reader.recreated).toBeGreaterThan(0);
      expect(c.events.map((e) => e.seq)).toEqual(seqs);
    } finally {
      await own.close();
    }
  });

  it("re-creates its consumer after two missed heartbeats (server frozen with SIGSTOP) and loses or repeats nothing", async () => {
    const own = await startTestNats();
    try {
      await ensureTopology(own.nc);
      const publisher = createPublisher(own.nc);
      const seqs = await Promise.all(Array.from({ length: 400 }, (_, i) => {
        const e = encodeEvent({ type: "Counted", data: { i } });
        return publisher.publish(eventSubject("t", "c", `k${i % 7}`), e.data, { headers: e.headers }).then((a) => a.seq);
      }));
      await publisher.close();
      const pid = own.server.pid!;
      const c = collector();
      const reasons: string[] = [];
      let frozen: Promise<void> | undefined;
      await using reader = await openStreamReader(own.nc, {
        stream: STREAMS.events, startSeq: 1, window: 50, heartbeatMs: 500,
        onEvent: (e, p) => {
          c.onEvent(e, p);
          if (c.events.length === 100 && !frozen) {
            process.kill(pid, "SIGSTOP");
            frozen = new Promise((r) => setTimeout(r, 2_500)).then(() => void process.kill(pid, "SIGCONT"));
          }
        },
        onRecreate: (_from, reason) => reasons.push(reason),
      });
      await c.until(() => frozen !== undefined);
      await frozen;
      await c.until(() => c.events.length >= 400, 30_000);
      await new Promise((r) => setTimeout(r, 200));
      expect(reasons).toContain("two heartbeats missed");
      expect(reader.recreated).toBeGreaterThan(0);
      expect(c.events.map((e) => e.seq)).toEqual(seqs.sort((a, b) => a - b));
    } finally {
      await own.close();
    }
  });

  it("deletes its consumer on close and hands nothing out after", async () => {
    const tenant = uniqueName("sr");
    await publish(tenant, 10);
    const c = collector();
    const reader = await openStreamReader(nats.nc, { stream: STREAMS.events, filter: `evt.${tenant}.>`, startSeq: 1, onEvent: c.onEvent });
    await c.until(() => c.events.length === 10);
    expect((await readerConsumers()).length).toBeGreaterThan(0);
    await reader.close();
    expect(await readerConsumers()).toEqual([]);
    await publish(tenant, 3, 10);
    await new Promise((r) => setTimeout(r, 200));
    expect(c.events.length).toBe(10);
  });

  it("refuses bad options, naming the field", async () => {
    const onEvent = (): void => undefined;
    await expect(openStreamReader(nats.nc, { stream: STREAMS.events, startSeq: 0, onEvent })).rejects.toThrow(InvalidOptionError);
    await expect(openStreamReader(nats.nc, { stream: STREAMS.events, startSeq: 0, onEvent })).rejects.toThrow(/startSeq/);
    await expect(openStreamReader(nats.nc, { stream: "a.b", startSeq: 1, onEvent })).rejects.toThrow(/stream/);
    await expect(openStreamReader(nats.nc, { stream: STREAMS.events, startSeq: 1, window: 0, onEvent })).rejects.toThrow(/window/);
    await expect(openStreamReader(nats.nc, { stream: STREAMS.events, startSeq: 1, heartbeatMs: 10, onEvent })).rejects.toThrow(/heartbeatMs/);
    await expect(openStreamReader(nats.nc, { stream: STREAMS.events, onEvent })).rejects.toThrow(/startSeq/);
    await expect(openStreamReader(nats.nc, { stream: STREAMS.events, startSeq: 1, startTime: 0, onEvent })).rejects.toThrow(/startTime/);
    await expect(openStreamReader(nats.nc, { stream: STREAMS.events, startTime: Number.NaN, onEvent })).rejects.toThrow(/startTime/);
  });
});
