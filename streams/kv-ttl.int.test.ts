import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { setTimeout as sleep } from "node:timers/promises";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { BUCKETS, ensureTopology, InvalidOptionError, openTtlKv, ttlHeaderValue } from "./index.js";

let nats: TestNats;
beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
});
afterAll(async () => nats?.close());

const data = new TextEncoder().encode("{}");

/** Polls until `key` is gone from `bucket`; returns how long that took, or -1. */
async function goneWithin(ttl: Awaited<ReturnType<typeof openTtlKv>>, key: string, ms: number): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    const e = await ttl.kv.get(key);
    if (!e || e.operation !== "PUT") return Date.now() - t0;
    await sleep(100);
  }
  return -1;
}

describe("per-entry TTL in KV buckets (nats-server 2.11+, allow_msg_ttl)", () => {
  it("the topology allows per-message TTL on flex_auth and flex_leases only", async () => {
    const jsm = await jetstreamManager(nats.nc);
    expect((await jsm.streams.info(`KV_${BUCKETS.auth}`)).config.allow_msg_ttl).toBe(true);
    expect((await jsm.streams.info(`KV_${BUCKETS.leases}`)).config.allow_msg_ttl).toBe(true);
    expect((await jsm.streams.info(`KV_${BUCKETS.snapshots}`)).config.allow_msg_ttl).not.toBe(true);
    expect((await ensureTopology(nats.nc)).drift).toEqual([]);
  });

  it("an entry disappears by itself when its TTL passes (the bucket has no max_age); an update extends it", async () => {
    const ttl = await openTtlKv(nats.nc, BUCKETS.auth);
    expect(ttl.messageTtl).toBe(true);
    const short = `test.${uniqueName()}`;
    const renewed = `test.${uniqueName()}`;
    const rev = await ttl.create(short, data, 1_000);
    expect(rev).toBeGreaterThan(0);
    const r2 = await ttl.create(renewed, data, 1_000);
    await expect(ttl.create(short, data, 1_000)).rejects.toThrow();
    await sleep(600);
    await ttl.update(renewed, data, r2, 3_000);
    expect(await goneWithin(ttl, short, 4_000)).toBeGreaterThanOrEqual(0);
    expect((await ttl.kv.get(renewed))?.operation).toBe("PUT");
    expect(await goneWithin(ttl, renewed, 5_000)).toBeGreaterThanOrEqual(0);
    // Gone means gone: create works again on the key.
    expect(await ttl.create(short, data, 1_000)).toBeGreaterThan(0);
  });

  it("an update at a stale revision is refused, TTL or not", async () => {
    const ttl = await openTtlKv(nats.nc, BUCKETS.leases);
    const key = `test.${uniqueName()}`;
    const rev = await ttl.create(key, data, 5_000);
    await ttl.update(key, data, rev, 5_000);
    await expect(ttl.update(key, data, rev, 5_000)).rejects.toThrow();
  });

  it("on a bucket without allow_msg_ttl no TTL is sent and entries stay", async () => {
    const ttl = await openTtlKv(nats.nc, BUCKETS.state);
    expect(ttl.messageTtl).toBe(false);
    const key = `test.${uniqueName()}`;
    await ttl.put(key, data, 1_000);
    await sleep(1_500);
    expect((await ttl.kv.get(key))?.operation).toBe("PUT");
  });

  it("TTLs are whole seconds, rounded up; nonsense is refused", () => {
    expect(ttlHeaderValue(1)).toBe("1s");
    expect(ttlHeaderValue(1_500)).toBe("2s");
    expect(ttlHeaderValue(30_000)).toBe("30s");
    expect(() => ttlHeaderValue(0)).toThrow(InvalidOptionError);
    expect(() => ttlHeaderValue(Number.NaN)).toThrow(/ttlMs/);
  });
});
