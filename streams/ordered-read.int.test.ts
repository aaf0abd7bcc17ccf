import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstream } from "@nats-io/jetstream";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { createPublisher, ensureTopology, eventSubject, STREAMS } from "./index.js";
import { orderedMessages } from "./ordered-read.js";

let nats: TestNats;

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
});
afterAll(async () => {
  await nats?.close();
});

async function publish(tenant: string, n: number): Promise<void> {
  const publisher = createPublisher(nats.nc);
  await Promise.all(Array.from({ length: n }, (_, i) =>
    publisher.publish(eventSubject(tenant, "c", `k${i % 7}`), new TextEncoder().encode(JSON.stringify({ i })), { msgId: `${tenant}-${i}` })));
  await publisher.close();
}

describe("orderedMessages", () => {
  it("gives a slow reader every message once and in order while pausing at the high-water mark", async () => {
    const tenant = uniqueName("or");
    await publish(tenant, 2_500);
    const js = jetstream(nats.nc);
    const seen: number[] = [];
    let lastSeq = 0;
    let resumes = 0;
    const options = { filter: `evt.${tenant}.>`, start: { seq: 1 }, batch: 50, highWater: 120, onResume: () => void (resumes += 1) };
    for await (const m of orderedMessages(js, STREAMS.events, options)) {
      expect(m.seq).toBeGreaterThan(lastSeq);
      lastSeq = m.seq;
      seen.push((m.json() as { i: number }).i);
      // Read slower than the server delivers, so the buffer fills and the consumer pauses.
      if (seen.length % 100 === 0) await new Promise((r) => setTimeout(r, 20));
      if (m.info.pending === 0) break;
    }
    expect(resumes).toBeGreaterThan(0);
    expect(seen.length).toBe(2_500);
    expect(new Set(seen).size).toBe(2_500);
    const perKey = new Map<number, number[]>();
    for (const i of seen) perKey.set(i % 7, [...(perKey.get(i % 7) ?? []), i]);
    for (const list of perKey.values()) expect(list).toEqual([...list].sort((a, b) => a - b));
  });

  it("returns quietly when its signal aborts while waiting for messages", async () => {
    const tenant = uniqueName("or");
    await publish(tenant, 3);
    const ac = new AbortController();
    const seen: number[] = [];
    for await (const m of orderedMessages(jetstream(nats.nc), STREAMS.events, { filter: `evt.${tenant}.>`, start: { seq: 1 }, batch: 10, highWater: 100 }, ac.signal)) {
      seen.push(m.seq);
      if (seen.length === 3) setTimeout(() => ac.abort(), 50);
    }
    expect(seen.length).toBe(3);
  });
});
