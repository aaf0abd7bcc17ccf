import { createServer } from "node:http";
import type { Server } from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { jetstreamManager } from "@nats-io/jetstream";
import { startTestGateway } from "../test/gateway.js";
import type { TestGateway } from "../test/gateway.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { STREAMS, SYSTEM_TENANT, TenantReservedError } from "../streams/index.js";
import { createGateway, generateNatsUsers } from "./index.js";
import type { Gateway } from "./index.js";

// Tenants starting with `_` belong to FlexCore (`_system`: system metrics, plugin status).
// No user, token, issuer claim or request may name one, so no tenant reads or forges them.
let nats: TestNats;
let dir: string;
let gw: Gateway;
let url: string;
const tenant = uniqueName("acme");

let fixture: TestGateway;

beforeAll(async () => {
  fixture = await startTestGateway();
  ({ nats, gw, url, dir } = fixture);
  await gw.users.add(tenant, "root", "admin password", ["admin", "writer", "reader"]);
}, 60_000);

afterAll(async () => {
  await fixture?.close();
});

async function call(method: string, path: string, token: string | undefined, body?: unknown): Promise<{ status: number; json: any }> {
  const r = await fetch(`${url}${path}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { "content-type": "application/json" }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : undefined };
}

/** Messages FLEX_EVENTS holds under `evt._system.>`. */
async function systemEvents(): Promise<number> {
  const jsm = await jetstreamManager(nats.nc);
  const info = await jsm.streams.info(STREAMS.events, { subjects_filter: `evt.${SYSTEM_TENANT}.>` });
  return Object.values(info.state.subjects ?? {}).reduce((a, n) => a + n, 0);
}

/** A token signed with the gateway's own key, as a stolen or forged signer would make it. */
function forged(claimedTenant: string, roles = ["admin", "writer", "reader"]): Promise<string> {
  return new SignJWT({ tenant: claimedTenant, roles })
    .setProtectedHeader({ alg: "RS256", typ: "at+jwt", kid: gw.keys!.activeKid })
    .setIssuer("flexcore").setAudience("flexcore-api").setSubject("mallory").setJti(uniqueName("j")).setIssuedAt().setExpirationTime("5m")
    .sign(gw.keys!.signingKey);
}

describe("reserved tenants over HTTP", () => {
  it("sign-in to `_system` is refused with 400 FLEX_TENANT_RESERVED naming the field", async () => {
    for (const name of [SYSTEM_TENANT, "_anything"]) {
      const r = await call("POST", "/v1/auth/token", undefined, { tenant: name, username: "root", password: "admin password" });
      expect(r.status).toBe(400);
      expect(r.json.error).toMatchObject({ code: "FLEX_TENANT_RESERVED", details: { field: "tenant" } });
    }
  });

  it("a validly signed token naming `_system` reads and writes nothing: 401 on every route", async () => {
    const own = await forged(tenant);
    const evil = await forged(SYSTEM_TENANT);
    const event = { type: "MetricsReported", data: { component: "gateway", forged: true } };
    // Control: the same requests with a normal tenant work, so the refusal below is the tenant's doing.
    expect((await call("POST", "/v1/streams/sensor/gateway", own, event)).status).toBe(201);
    const before = await systemEvents();
    const attempts: Array<[string, string, unknown]> = [
      ["POST", "/v1/streams/metrics/gateway", event],
      ["POST", "/v1/streams/plugin/fake", { type: "PluginStarted", data: {} }],
      ["POST", "/v1/events", [{ category: "metrics", stream: "gateway", ...event }]],
      ["GET", "/v1/streams/metrics/gateway", undefined],
      ["GET", "/v1/projections/performance_metrics", undefined],
      ["GET", "/v1/derived/anomaly", undefined],
      ["GET", "/v1/users", undefined],
      ["GET", "/v1/auth/me", undefined],
    ];
    for (const [method, path, body] of attempts) {
      const r = await call(method, path, evil, body);
      expect({ path, status: r.status, code: r.json?.error?.code }).toEqual({ path, status: 401, code: "FLEX_UNAUTHENTICATED" });
      expect(r.json.error.details.reason).toMatch(/reserved/u);
    }
    expect(await systemEvents()).toBe(before);
  });

  it("an admin cannot create a user in `_system` through a body field: the user lands in its own tenant", async () => {
    const token = (await call("POST", "/v1/auth/token", undefined, { tenant, username: "root", password: "admin password" })).json.access_token as string;
    const r = await call("POST", "/v1/users", token, { tenant: SYSTEM_TENANT, username: "sneaky", password: "sneaky password", roles: ["admin"] });
    expect(r.status).toBe(201);
    expect(r.json.tenant).toBe(tenant);
    expect(await gw.users.list()).not.toContainEqual(expect.objectContaining({ tenant: SYSTEM_TENANT }));
  });

  it("the user store, the issuer and nats-users refuse reserved tenants", async () => {
    await expect(gw.users.add(SYSTEM_TENANT, "ops", "ops password", ["admin"])).rejects.toBeInstanceOf(TenantReservedError);
    await expect(gw.users.list("_x")).rejects.toMatchObject({ code: "FLEX_TENANT_RESERVED" });
    await expect(gw.issuer!.issueAccess({ tenant: SYSTEM_TENANT, subject: "svc", roles: ["reader"] })).rejects.toMatchObject({ code: "FLEX_TENANT_RESERVED" });
    await expect(gw.issuer!.issueRefresh({ tenant: SYSTEM_TENANT, subject: "svc", sid: "s", gen: 1 })).rejects.toMatchObject({ code: "FLEX_TENANT_RESERVED" });
    await expect(generateNatsUsers({ tenants: ["acme", SYSTEM_TENANT], seedsDir: join(dir, "seeds") })).rejects.toMatchObject({ code: "FLEX_TENANT_RESERVED" });
    expect(await gw.users.list()).not.toContainEqual(expect.objectContaining({ tenant: SYSTEM_TENANT }));
  });
});

describe("reserved tenants from an external issuer", () => {
  let server: Server;
  let ext: Gateway;
  let extUrl: string;
  let sign: (org: string) => Promise<string>;

  beforeAll(async () => {
    const pair = await generateKeyPair("RS256");
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: "idp-1", alg: "RS256", use: "sig" };
    server = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    ext = await createGateway({
      nc: nats.nc, port: 0, metricsIntervalMs: 0, workflows: false,
      external: { jwksUrl: `http://127.0.0.1:${port}/jwks`, issuer: "https://idp.example", audience: "flexcore", tenantClaim: "org" },
    });
    extUrl = await ext.listen();
    sign = (org) => new SignJWT({ org, roles: ["writer", "reader"] }).setProtectedHeader({ alg: "RS256", typ: "at+jwt", kid: "idp-1" })
      .setIssuer("https://idp.example").setAudience("flexcore").setSubject("dana").setIssuedAt().setExpirationTime("5m").sign(pair.privateKey);
  });
  afterAll(async () => {
    await ext?.close();
    await new Promise((r) => server?.close(r));
  });

  it("a tenant claim of `_system` is refused with 401, a normal one accepted", async () => {
    const me = async (token: string) => {
      const r = await fetch(`${extUrl}/v1/auth/me`, { headers: { authorization: `Bearer ${token}` } });
      return { status: r.status, body: (await r.json()) as any };
    };
    expect((await me(await sign(tenant))).status).toBe(200);
    const before = await systemEvents();
    const r = await me(await sign(SYSTEM_TENANT));
    expect(r.status).toBe(401);
    expect(r.body.error).toMatchObject({ code: "FLEX_UNAUTHENTICATED", details: { reason: expect.stringMatching(/`org`.*reserved/u) } });
    const write = await fetch(`${extUrl}/v1/streams/metrics/gateway`, {
      method: "POST",
      headers: { authorization: `Bearer ${await sign(SYSTEM_TENANT)}`, "content-type": "application/json" },
      body: JSON.stringify({ type: "MetricsReported", data: {} }),
    });
    expect(write.status).toBe(401);
    expect(await systemEvents()).toBe(before);
  });
});
