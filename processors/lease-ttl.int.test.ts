// A processor lease whose holder died (no renewals, no release) is removed by the server
// when its own TTL passes, well before the bucket's max_age (30 s).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { setTimeout as sleep } from "node:timers/promises";
import { BUCKETS, ensureTopology, openTtlKv } from "../streams/index.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { Lease, processorLeaseKey } from "./index.js";

let nats: TestNats;
beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
});
afterAll(async () => nats?.close());

describe("lease TTL", () => {
  it("a dead holder's lease disappears by itself after its TTL and another instance takes it", async () => {
    const jsm = await jetstreamManager(nats.nc);
    expect((await jsm.streams.info(`KV_${BUCKETS.leases}`)).config.max_age).toBe(30_000 * 1e6);
    const key = processorLeaseKey(uniqueName("p"));
    const doomed = await nats.connect();
    let lostA = 0;
    const a = new Lease(await openTtlKv(doomed, BUCKETS.leases), key, "a", 1_000, () => void (lostA += 1));
    expect(await a.tryAcquire()).toBe(true);
    const b = new Lease(await openTtlKv(nats.nc, BUCKETS.leases), key, "b", 1_000, () => undefined);
    expect(await b.tryAcquire()).toBe(false);
    // "a" dies: its connection is gone, it never renews or releases.
    await doomed.close();
    const leases = await openTtlKv(nats.nc, BUCKETS.leases);
    const t0 = Date.now();
    let gone = false;
    while (Date.now() - t0 < 6_000 && !gone) {
      const e = await leases.kv.get(key);
      gone = !e || e.operation !== "PUT";
      if (!gone) await sleep(100);
    }
    expect(gone).toBe(true);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(await b.tryAcquire()).toBe(true);
    await b.release();
    expect(lostA).toBeGreaterThanOrEqual(0);
  });

  it("a held lease is renewed and stays past its TTL", async () => {
    const key = processorLeaseKey(uniqueName("p"));
    const a = new Lease(await openTtlKv(nats.nc, BUCKETS.leases), key, "a", 1_000, () => undefined);
    expect(await a.tryAcquire()).toBe(true);
    await sleep(2_500);
    expect(a.held).toBe(true);
    const e = await (await openTtlKv(nats.nc, BUCKETS.leases)).kv.get(key);
    expect(e?.json<{ owner: string }>().owner).toBe("a");
    await a.release();
  });
});
