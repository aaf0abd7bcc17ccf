/**
 * The operator's projection rebuild through the real gateway (port 0), a real projection
 * engine answering on its NATS control subject and a real nats-server with authorization on:
 * progress then the result as server-sent events, the generation goes up and the rows stay
 * the same; admins, writers and readers are refused and nothing is rebuilt; one rebuild at a
 * time; no engine → 503; a tenant admin cannot grant, change or remove `operator` over HTTP;
 * an operator still reads only its own tenant's rows.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createProjectionEngine, engineKey, genericProjection, serveProjectionControl } from "../projections/index.js";
import { BUCKETS, openTtlKv } from "../streams/index.js";
import type { ProjectionControl, ProjectionEngine } from "../projections/index.js";
import { seedTenant, tokenFor } from "../test/console-fixtures.js";
import { startProjectionGateway } from "../test/gateway.js";
import type { TestProjectionGateway } from "../test/gateway.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import type { Gateway } from "./index.js";

const A = uniqueName("opa");
const B = uniqueName("opb");
const PASSWORD = "correct horse battery";
const EVENTS = 2_000;
/**
 * A copy of `generic` over A's events whose batches each sleep a little, so its rebuild is
 * caught running (the event loop still turns between batches).
 */
const SLOW_MS_PER_BATCH = 40;
/** What each batch sleeps now; a test that must catch a rebuild running raises it. */
let slowMsPerBatch = SLOW_MS_PER_BATCH;
function slowProjection() {
  const base = genericProjection({ subjects: [`evt.${A}.>`] });
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  return {
    ...base,
    name: "slowgen",
    fold: undefined,
    apply: (...args: Parameters<typeof base.apply>) => {
      Atomics.wait(sleeper, 0, 0, slowMsPerBatch);
      base.apply(...args);
    },
  };
}
let running: TestProjectionGateway;
let nats: TestNats;
let gw: Gateway;
let engine: ProjectionEngine;
let control: ProjectionControl;
let url: string;
const tok: Record<string, string> = {};

interface SseEvent {
  readonly event: string;
  readonly data: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

function parseSse(text: string): SseEvent[] {
  return text.split("\n\n").filter((b) => b.includes("event:")).map((block) => {
    const lines = block.split("\n");
    const event = lines.find((l) => l.startsWith("event: "))!.slice(7);
    const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
    return { event, data: JSON.parse(data) };
  });
}

async function rebuild(token: string, name = "generic"): Promise<{ status: number; type: string | null; events: SseEvent[]; error: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const res = await fetch(`${url}/v1/projections/${name}/rebuild`, { method: "POST", headers: { authorization: `Bearer ${token}`, accept: "text/event-stream" } });
  const text = await res.text();
  const type = res.headers.get("content-type");
  if (type?.startsWith("text/event-stream")) return { status: res.status, type, events: parseSse(text), error: undefined };
  return { status: res.status, type, events: [], error: (JSON.parse(text) as { error: unknown }).error };
}

async function http(method: string, path: string, token: string, body?: unknown): Promise<{ status: number; json: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const res = await fetch(`${url}${path}`, { method, headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { "content-type": "application/json" } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : undefined };
}

async function generation(): Promise<number> {
  const r = await http("GET", "/v1/projections", tok.admin!);
  return (r.json.projections as Array<{ name: string; generation: number }>).find((p) => p.name === "generic")!.generation;
}

async function rowsOf(token: string): Promise<unknown[]> {
  const r = await http("GET", "/v1/projections/generic?limit=1000&sort=id", token);
  expect(r.status).toBe(200);
  return r.json.rows as unknown[];
}

beforeAll(async () => {
  running = await startProjectionGateway([genericProjection(), slowProjection()], {
    seed: async ({ nc }) => {
      await seedTenant(nc, A, { events: EVENTS });
      await seedTenant(nc, B, { events: 12 });
    },
  });
  ({ nats, gw, engine, url } = running);
  // Served here, not by the helper: a test closes it and serves a new one.
  control = await serveProjectionControl(nats.nc, engine);
  tok.operator = await tokenFor(gw, A, ["operator", "reader"]);
  tok.admin = await tokenFor(gw, A, ["admin"]);
  tok.writer = await tokenFor(gw, A, ["writer"]);
  tok.reader = await tokenFor(gw, A, ["reader"]);
  tok.adminB = await tokenFor(gw, B, ["admin"]);
  for (const until = Date.now() + 30_000; Date.now() < until;) {
    if ((await engine.status("generic"))[0]?.lag === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
}, 90_000);

afterAll(async () => {
  await control?.close();
  await running?.close();
});

describe("POST /v1/projections/:name/rebuild", () => {
  it("an operator's rebuild answers progress, then the result: the generation goes up and the rows are the same", async () => {
    const before = await rowsOf(tok.operator!);
    const gen = await generation();
    const r = await rebuild(tok.operator!);
    expect(r.status).toBe(200);
    const kinds = r.events.map((e) => e.event);
    expect(kinds[0]).toBe("ready");
    expect(kinds.at(-1)).toBe("done");
    const progress = r.events.filter((e) => e.event === "progress");
    expect(progress.length).toBeGreaterThan(0);
    const last = progress.at(-1)!.data;
    expect(last.total).toBeGreaterThanOrEqual(EVENTS);
    expect(last.done).toBe(last.total);
    // One instance runs here: the figures are its own.
    expect(last.instances).toHaveLength(1);
    const done = r.events.at(-1)!.data;
    expect(done).toMatchObject({ projection: "generic", generation: gen + 1, copies: 1 });
    expect(done.instances).toEqual([expect.objectContaining({ generation: gen + 1 })]);
    expect(done.events).toBeGreaterThanOrEqual(EVENTS);
    expect(await generation()).toBe(gen + 1);
    expect(await rowsOf(tok.operator!)).toEqual(before);
  }, 60_000);

  it("with a second instance on the deployment, done comes once both copies are swapped and names both", async () => {
    const dir = await mkdtemp(join(tmpdir(), "flexcore-second-"));
    const nc = await nats.connect();
    const second = createProjectionEngine(nc, { dataDir: dir, log: () => undefined, projections: [genericProjection()] });
    await second.start();
    const secondControl = await serveProjectionControl(nc, second, { instance: "second-instance" });
    // The server has its subscription before the gateway asks (another connection).
    await nc.flush();
    try {
      const before = [await generation(), (await second.status("generic"))[0]!.generation];
      const r = await rebuild(tok.operator!);
      expect(r.events.at(-1)?.event).toBe("done");
      const done = r.events.at(-1)!.data;
      expect(done.copies).toBe(2);
      expect(done.instances.map((i: { instance: string }) => i.instance)).toContain("second-instance");
      expect([await generation(), (await second.status("generic"))[0]!.generation]).toEqual(before.map((g) => g + 1));
      expect(r.events.filter((e) => e.event === "progress").at(-1)!.data.instances).toHaveLength(2);
    } finally {
      await secondControl.close();
      await second.close();
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it("refuses admins, writers and readers (403 FLEX_FORBIDDEN) and rebuilds nothing", async () => {
    const gen = await generation();
    for (const role of ["admin", "writer", "reader", "adminB"]) {
      const r = await rebuild(tok[role]!);
      expect(r.status, role).toBe(403);
      expect(r.error.code).toBe("FLEX_FORBIDDEN");
    }
    const anon = await fetch(`${url}/v1/projections/generic/rebuild`, { method: "POST" });
    expect(anon.status).toBe(401);
    expect((await engine.status("generic"))[0]?.rebuilding).toBe(false);
    expect(await generation()).toBe(gen);
  });

  it("one rebuild at a time: a second request while one runs answers 409 FLEX_REBUILD_IN_PROGRESS", async () => {
    // A rebuild started on the engine itself (as at a version change), slow enough that the
    // request (the engines listed, then asked) reaches it while it runs, even on a loaded machine...
    slowMsPerBatch = 4 * SLOW_MS_PER_BATCH;
    const direct = engine.rebuild("slowgen");
    const second = await rebuild(tok.operator!, "slowgen").finally(() => (slowMsPerBatch = SLOW_MS_PER_BATCH));
    expect(second.status).toBe(409);
    expect(second.error.code).toBe("FLEX_REBUILD_IN_PROGRESS");
    await direct;
    // ...and two asked at once through the gateway: the engine's control takes one at a time,
    // whichever projection the other names.
    const gen = await generation();
    const both = await Promise.all(["slowgen", "generic"].map((name) => fetch(`${url}/v1/projections/${name}/rebuild`, { method: "POST", headers: { authorization: `Bearer ${tok.operator}` } })));
    expect(both.map((r) => r.status).sort()).toEqual([200, 409]);
    const refused = both.find((r) => r.status === 409)!;
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe("FLEX_REBUILD_IN_PROGRESS");
    const accepted = both.find((r) => r.status === 200)!;
    const rest = await accepted.text();
    expect(rest).toContain("event: ready");
    expect(rest).toContain("event: done");
    const ranGeneric = accepted === both[1];
    expect(await generation()).toBe(ranGeneric ? gen + 1 : gen);
    // Once it is done, the next is accepted.
    expect((await rebuild(tok.operator!, "generic")).events.at(-1)?.event).toBe("done");
    expect(await generation()).toBe(ranGeneric ? gen + 2 : gen + 1);
  }, 60_000);

  it("an unknown projection is 404, a bad name 400, before any stream", async () => {
    const unknown = await rebuild(tok.operator!, "nosuch");
    expect(unknown.status).toBe(404);
    expect(unknown.error.code).toBe("FLEX_PROJECTION_NOT_FOUND");
    const bad = await rebuild(tok.operator!, "a*b");
    expect(bad.status).toBe(400);
  });

  it("answers 503 FLEX_ENGINE_UNREACHABLE when no engine listens on NATS", async () => {
    await control.close();
    try {
      const r = await rebuild(tok.operator!);
      expect(r.status).toBe(503);
      expect(r.error.code).toBe("FLEX_ENGINE_UNREACHABLE");
    } finally {
      control = await serveProjectionControl(nats.nc, engine);
    }
  });

  it("an instance listed as running that never answers is named: 503 FLEX_REBUILD_ENGINE_UNANSWERED, nothing rebuilt", async () => {
    await control.close();
    // A membership key with no engine behind it (an instance killed a moment ago).
    const leases = await openTtlKv(nats.nc, BUCKETS.leases);
    await leases.put(engineKey("ghost"), new TextEncoder().encode(JSON.stringify({ instance: "ghost", expiresAt: Date.now() + 60_000 })), 60_000);
    try {
      const gen = await generation();
      const r = await rebuild(tok.operator!);
      expect(r.status).toBe(503);
      expect(r.error.code).toBe("FLEX_REBUILD_ENGINE_UNANSWERED");
      expect(r.error.message).toContain("`ghost`");
      expect(await generation()).toBe(gen);
    } finally {
      await leases.kv.delete(engineKey("ghost"));
      control = await serveProjectionControl(nats.nc, engine);
    }
  }, 30_000);

  it("an operator of A still reads only A's rows", async () => {
    const rows = await rowsOf(tok.operator!);
    expect(rows.length).toBeGreaterThan(0);
    expect(JSON.stringify(rows)).not.toContain(B);
    const filtered = await http("GET", `/v1/projections/generic?filter=${encodeURIComponent(JSON.stringify({ tenant: B }))}`, tok.operator!);
    expect(filtered.json.rows ?? []).toEqual([]);
    expect((await http("GET", `/v1/projections/generic?tenant=${B}`, tok.operator!)).status).toBe(400);
  });
});

describe("granting operator", () => {
  it("a tenant admin cannot grant operator over HTTP: POST and PATCH answer 403 FLEX_ROLE_NOT_GRANTABLE naming roles, nothing changes", async () => {
    const name = uniqueName("eve");
    const add = await http("POST", "/v1/users", tok.admin!, { username: name, password: PASSWORD, roles: ["reader", "operator"] });
    expect(add.status).toBe(403);
    expect(add.json.error.code).toBe("FLEX_ROLE_NOT_GRANTABLE");
    expect(add.json.error.details.field).toBe("roles");
    expect(add.json.error.message).toContain("roles");
    expect(await gw.users.get(A, name)).toBeUndefined();

    await gw.users.add(A, "wes", PASSWORD, ["writer"]);
    const patch = await http("PATCH", "/v1/users/wes", tok.admin!, { roles: ["operator"] });
    expect(patch.status).toBe(403);
    expect(patch.json.error.code).toBe("FLEX_ROLE_NOT_GRANTABLE");
    expect(patch.json.error.details.field).toBe("roles");
    expect((await gw.users.get(A, "wes"))?.roles).toEqual(["writer"]);
  });

  it("a tenant admin can neither change nor remove an operator's account over HTTP (that would take the role away)", async () => {
    await gw.users.add(A, "olga", PASSWORD, ["operator", "reader"]);
    const patch = await http("PATCH", "/v1/users/olga", tok.admin!, { roles: ["reader"] });
    expect(patch.status).toBe(403);
    expect(patch.json.error.code).toBe("FLEX_ROLE_NOT_GRANTABLE");
    const del = await http("DELETE", "/v1/users/olga", tok.admin!);
    expect(del.status).toBe(403);
    expect((await gw.users.get(A, "olga"))?.roles).toEqual(["operator", "reader"]);
    // An operator's own sign-in works and its token carries the role.
    const signIn = await fetch(`${url}/v1/auth/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ tenant: A, username: "olga", password: PASSWORD }) });
    expect(signIn.status).toBe(200);
    const access = ((await signIn.json()) as { access_token: string }).access_token;
    expect((await http("GET", "/v1/auth/me", access)).json.roles).toEqual(["operator", "reader"]);
  });

  it("an unknown role is still 400 naming roles; tenant roles are granted as before", async () => {
    const bad = await http("POST", "/v1/users", tok.admin!, { username: uniqueName("u"), password: PASSWORD, roles: ["root"] });
    expect(bad.status).toBe(400);
    expect(bad.json.error.details.field).toBe("roles");
    const ok = await http("POST", "/v1/users", tok.admin!, { username: uniqueName("u"), password: PASSWORD, roles: ["reader"] });
    expect(ok.status).toBe(201);
  });
});
