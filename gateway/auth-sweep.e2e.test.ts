import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import { jetstreamManager } from "@nats-io/jetstream";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { BUCKETS, ensureTopology } from "../streams/index.js";
import { createGateway, openAuthSweeper } from "./index.js";
import type { Gateway } from "./index.js";

// flex_auth keeps users, sign-in sessions and revoked ids. Sessions and revocations expire;
// where the bucket has no per-message TTL (before 2.11, or a bucket made without
// allow_msg_ttl) the sweep removes them so the bucket does not grow with every sign-in and
// logout. The buckets here are made without it, so the sweep is what is tested (the TTL is
// in sessions-ttl.e2e.test.ts). Each test uses its own server: the counts are exact.
let nats: TestNats;
let dir: string;
let kv: KV;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-sweep-"));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function fresh(): Promise<void> {
  await nats?.close();
  nats = await startTestNats();
  await ensureTopology(nats.nc, { messageTtl: false });
  kv = await new Kvm(nats.nc).open(BUCKETS.auth);
}
afterAll(async () => {
  await nats?.close();
});

async function keys(prefix: string): Promise<number> {
  let n = 0;
  for await (const _ of await kv.keys(`${prefix}.>`)) n += 1;
  return n;
}
/** Messages the bucket's stream holds: live entries and delete markers alike. */
async function messages(): Promise<number> {
  return (await (await jetstreamManager(nats.nc)).streams.info(`KV_${BUCKETS.auth}`)).state.messages;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function gateway(extra: Parameters<typeof createGateway>[0] extends infer O ? Partial<O> : never = {}): Promise<{ gw: Gateway; url: string }> {
  const gw = await createGateway({ nc: nats.nc, dataDir: dir, port: 0, workflows: false, metricsIntervalMs: 0, authSweepIntervalMs: 0, issuer: { accessTtlSeconds: 2, refreshTtlSeconds: 2 }, ...extra });
  return { gw, url: await gw.listen() };
}

async function post(url: string, path: string, body: unknown, token?: string): Promise<{ status: number; json: any }> {
  const r = await fetch(`${url}${path}`, { method: "POST", headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : undefined };
}

describe("expired sessions and revocations leave flex_auth", () => {
  it("a sweep removes expired sessions and revoked ids, keeps users and live sessions, leaves no markers", async () => {
    await fresh();
    const { gw, url } = await gateway();
    try {
      const tenant = uniqueName("acme");
      await gw.users.add(tenant, "alice", "correct horse", ["reader"]);
      const signIn = async () => (await post(url, "/v1/auth/token", { tenant, username: "alice", password: "correct horse" })).json as { access_token: string; refresh_token: string };
      const pairs = [];
      for (let i = 0; i < 5; i++) {
        const p = await signIn();
        pairs.push(p);
        // Two log out: each revokes its token id and session id.
        if (i < 2) expect((await post(url, "/v1/auth/logout", {}, p.access_token)).status).toBe(204);
      }
      expect({ sessions: await keys("session"), revoked: await keys("revoked"), users: await keys("user") }).toEqual({ sessions: 3, revoked: 4, users: 1 });

      await sleep(2_300); // past the 2 s sessions and access tokens
      const live = await signIn();
      const report = await gw.sweepAuth();
      expect(report.removed).toBe(3 + 4);
      expect({ sessions: await keys("session"), revoked: await keys("revoked"), users: await keys("user") }).toEqual({ sessions: 1, revoked: 0, users: 1 });
      // The live session still refreshes; an expired one does not.
      expect((await post(url, "/v1/auth/refresh", { refresh_token: live.refresh_token })).status).toBe(200);
      expect((await post(url, "/v1/auth/refresh", { refresh_token: pairs[4]!.refresh_token })).status).toBe(401);

      // The logouts' delete markers go once they are older than the grace period.
      const sweeper = await openAuthSweeper(nats.nc, { intervalMs: 0, markerGraceMs: 0 });
      try {
        await sweeper.sweep();
      } finally {
        await sweeper.close();
      }
      expect(await messages()).toBe(2); // the user and the live session, nothing else
    } finally {
      await gw.close();
    }
  });

  it("removes at most `batch` entries per sweep, and the rest at the next one", async () => {
    await fresh();
    const { gw, url } = await gateway();
    const sweeper = await openAuthSweeper(nats.nc, { intervalMs: 0, batch: 2 });
    try {
      const tenant = uniqueName("acme");
      await gw.users.add(tenant, "bob", "battery staple", ["reader"]);
      for (let i = 0; i < 5; i++) expect((await post(url, "/v1/auth/token", { tenant, username: "bob", password: "battery staple" })).status).toBe(200);
      await sleep(2_300);
      expect((await sweeper.sweep()).removed).toBe(2);
      expect(await keys("session")).toBe(3);
      expect((await sweeper.sweep()).removed).toBe(2);
      expect((await sweeper.sweep()).removed).toBe(1);
      expect(await keys("session")).toBe(0);
      expect((await sweeper.sweep()).removed).toBe(0);
    } finally {
      await sweeper.close();
      await gw.close();
    }
  });

  it("the gateway's timer sweeps on its own and stops with the gateway", async () => {
    await fresh();
    const { gw, url } = await gateway({ authSweepIntervalMs: 200 });
    const tenant = uniqueName("acme");
    await gw.users.add(tenant, "carol", "carol password", ["reader"]);
    for (let i = 0; i < 3; i++) expect((await post(url, "/v1/auth/token", { tenant, username: "carol", password: "carol password" })).status).toBe(200);
    expect(await keys("session")).toBe(3);
    const started = Date.now();
    while ((await keys("session")) > 0) {
      expect(Date.now() - started).toBeLessThan(6_000);
      await sleep(100);
    }
    await gw.close();
    // Closed: sessions made afterwards (by another gateway without a timer) stay.
    const { gw: other, url: otherUrl } = await gateway();
    try {
      expect((await post(otherUrl, "/v1/auth/token", { tenant, username: "carol", password: "carol password" })).status).toBe(200);
      await sleep(2_500);
      expect(await keys("session")).toBe(1);
    } finally {
      await other.close();
    }
  });
});
