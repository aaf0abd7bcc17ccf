// Sessions and revoked token ids in flex_auth expire by themselves (per-message TTL,
// nats-server 2.11+): nothing has to sweep them for the bucket to stay small.
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import { startTestGateway } from "../test/gateway.js";
import type { TestGateway } from "../test/gateway.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { BUCKETS } from "../streams/index.js";
import type { Gateway } from "./index.js";

let nats: TestNats;
let gw: Gateway;
let auth: KV;
const tenant = uniqueName("ttl");

let fixture: TestGateway;

beforeAll(async () => {
  fixture = await startTestGateway({ issuer: { accessTtlSeconds: 1, refreshTtlSeconds: 2 } });
  ({ nats, gw } = fixture);
  await gw.users.add(tenant, "alice", "correct horse", ["reader"]);
  auth = await new Kvm(nats.nc).open(BUCKETS.auth);
}, 60_000);

afterAll(async () => {
  await fixture?.close();
});

async function keys(filter: string): Promise<string[]> {
  const out: string[] = [];
  for await (const k of await auth.keys(filter)) out.push(k);
  return out;
}

async function waitGone(filter: string, ms: number): Promise<boolean> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if ((await keys(filter)).length === 0) return true;
    await sleep(200);
  }
  return false;
}

describe("flex_auth entries expire by themselves", () => {
  it("a session ends when its refresh token expires: the entry is gone and the refresh token is refused", async () => {
    const r = await gw.app.inject({ method: "POST", url: "/v1/auth/token", payload: { tenant, username: "alice", password: "correct horse" } });
    expect(r.statusCode, r.body).toBe(200);
    const { refresh_token } = r.json() as { refresh_token: string };
    const filter = "session.>";
    expect(await keys(filter)).toHaveLength(1);
    // No sweep runs here: only the server's TTL can remove it (flex_auth has no max_age).
    expect(await waitGone(filter, 6_000)).toBe(true);
    const again = await gw.app.inject({ method: "POST", url: "/v1/auth/refresh", payload: { refresh_token } });
    expect(again.statusCode).toBe(401);
  });

  it("a revoked token id is kept until the token expires, then removed by the server", async () => {
    const r = await gw.app.inject({ method: "POST", url: "/v1/auth/token", payload: { tenant, username: "alice", password: "correct horse" } });
    const { access_token } = r.json() as { access_token: string };
    const out = await gw.app.inject({ method: "POST", url: "/v1/auth/logout", headers: { authorization: `Bearer ${access_token}` } });
    expect(out.statusCode, out.body).toBeLessThan(300);
    const me = await gw.app.inject({ method: "GET", url: "/v1/auth/me", headers: { authorization: `Bearer ${access_token}` } });
    expect(me.statusCode).toBe(401);
    expect((await keys("revoked.>")).length).toBeGreaterThan(0);
    expect(await waitGone("revoked.>", 8_000)).toBe(true);
  });
});
