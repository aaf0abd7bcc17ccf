import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createPublisher, encodeEvent, ensureTopology, STREAMS } from "../streams/index.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { Member } from "./member.js";
import type { Projection } from "./projection.js";
import { BUFFER_HIGH_WATER, READ_WINDOW, ProjectionRunner } from "./runner.js";

const EVENTS = 100_000;

let nats: TestNats;
let dir: string;

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-runner-"));
});
afterAll(async () => {
  await nats?.close();
  await rm(dir, { recursive: true, force: true });
});

/** Counts events per tenant with plain `apply`. */
function counting(filter: string): Projection {
  return {
    name: "counted",
    version: 1,
    description: "events per tenant",
    sources: [{ stream: STREAMS.events, subjects: [filter] }],
    readers: { counted: { description: "", from: "counted", columns: { tenant: "text", n: "integer" }, key: [] } },
    init(db) {
      db.exec("CREATE TABLE counted (tenant TEXT PRIMARY KEY, n INTEGER NOT NULL)");
    },
    apply(db, events) {
      const up = db.prepare("INSERT INTO counted (tenant, n) VALUES (?, 1) ON CONFLICT (tenant) DO UPDATE SET n = n + 1");
      for (const e of events) up.run(e.subject.split(".")[1]);
    },
  };
}

it(`stops reading while ${BUFFER_HIGH_WATER} events wait to be handed out, and hands out every one of ${EVENTS} after`, { timeout: 120_000 }, async () => {
  const tenant = uniqueName("bp");
  const member = new Member(counting(`evt.${tenant}.>`), join(dir, "counted.db"), 1, "full");
  const runner = new ProjectionRunner(nats.nc, async () => undefined, () => undefined, () => undefined);
  try {
    await runner.add(member);
    // Paused: what arrives is buffered, not handed out.
    await runner.pause();
    const publisher = createPublisher(nats.nc, { maxInFlight: 8_192 });
    let last = 0;
    const pending: Array<Promise<{ seq: number }>> = [];
    for (let i = 0; i < EVENTS; i++) {
      const e = encodeEvent({ type: "Counted", data: {} });
      pending.push(publisher.publish(`evt.${tenant}.c.k${i % 100}`, e.data, { headers: e.headers }));
      if (pending.length === 8_192) last = Math.max(last, ...(await Promise.all(pending.splice(0))).map((a) => a.seq));
    }
    last = Math.max(last, ...(await Promise.all(pending)).map((a) => a.seq));
    await publisher.close();
    // Wait until the reader stops receiving.
    let received = -1;
    for (let same = 0; same < 5; await sleep(100)) {
      const now = runner.readerState(STREAMS.events)!.received;
      same = now === received ? same + 1 : 0;
      received = now;
    }
    expect(received).toBeGreaterThanOrEqual(BUFFER_HIGH_WATER);
    // At most what was asked for before the high-water mark was crossed.
    expect(received).toBeLessThanOrEqual(BUFFER_HIGH_WATER + READ_WINDOW);
    expect(received).toBeLessThan(last);
    expect(member.position(STREAMS.events)).toBeLessThan(received);

    runner.resume();
    const deadline = Date.now() + 60_000;
    while (member.position(STREAMS.events) < last && Date.now() < deadline) await sleep(50);
    expect(member.position(STREAMS.events)).toBe(last);
    expect(member.db.prepare("SELECT n FROM counted WHERE tenant = ?").get(tenant)).toEqual({ n: EVENTS });
  } finally {
    await runner.close();
    member.close();
  }
});
