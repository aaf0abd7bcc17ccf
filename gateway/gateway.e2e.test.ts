import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamManager } from "@nats-io/jetstream";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { encodeEvent, ensureTopology, FlexError, STREAMS } from "../streams/index.js";
import { createProjectionEngine, genericProjection } from "../projections/index.js";
import { createGateway, ROLES } from "./index.js";
import type { Gateway, ReadModelChange, ReadModelQuery, ReadModels, Role } from "./index.js";

/**
 * An in-memory read model keyed by tenant, standing in for the projection engine so these
 * tests check what the gateway passes (the tenant from the token) and returns.
 */
class FakeReadModels implements ReadModels {
  readonly rows = new Map<string, Array<Record<string, unknown>>>();
  readonly queries: Array<{ name: string; query: ReadModelQuery }> = [];
  readonly waits: Array<{ name: string; seq: number }> = [];
  readonly listeners = new Set<(c: ReadModelChange) => void>();
  hang = false;
  query(name: string, query: ReadModelQuery) {
    this.queries.push({ name, query });
    if (name !== "readings") throw new FlexError("FLEX_PROJECTION_NOT_FOUND", `No projection named ${name}`);
    if (this.hang) return new Promise<never>(() => undefined);
    return { rows: (this.rows.get(query.tenant) ?? []).slice(0, query.limit ?? 100) };
  }
  async waitFor(name: string, seq: number) {
    this.waits.push({ name, seq });
  }
  onChange(_name: string, listener: (c: ReadModelChange) => void) {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }
  emit(change: ReadModelChange) {
    for (const l of this.listeners) l(change);
  }
}

let nats: TestNats;
let jsm: JetStreamManager;
let dir: string;
let gw: Gateway;
let base: string;
const models = new FakeReadModels();
const A = uniqueName("ta");
const B = uniqueName("tb");
const tokens: Record<string, string> = {};

async function count(filter: string): Promise<number> {
  const info = await jsm.streams.info(STREAMS.events, { subjects_filter: filter });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

async function http(method: string, path: string, token: string | undefined, init: { body?: string; headers?: Record<string, string> } = {}) {
  const headers: Record<string, string> = { ...init.headers };
  if (token) headers.authorization = `Bearer ${token}`;
  if (init.body !== undefined && !headers["content-type"]) headers["content-type"] = "application/json";
  const res = await fetch(`${base}${path}`, { method, headers, ...(init.body !== undefined ? { body: init.body } : {}) });
  const text = await res.text();
  let json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, headers: res.headers };
}

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  jsm = await jetstreamManager(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-gw-"));
  gw = await createGateway({ nc: nats.nc, dataDir: dir, port: 0, readModels: models, bodyLimit: 8 * 1024, batchBodyLimit: 64 * 1024, maxBatchEvents: 50, metricsIntervalMs: 0 });
  base = await gw.listen();
  for (const t of [A, B]) {
    tokens[`${t}:all`] = (await gw.issuer!.issueAccess({ tenant: t, subject: "root", roles: [...ROLES] })).token;
    for (const role of ROLES) tokens[`${t}:${role}`] = (await gw.issuer!.issueAccess({ tenant: t, subject: role, roles: [role] })).token;
  }
  models.rows.set(A, [{ id: "a1", tenant: A }]);
  models.rows.set(B, [{ id: "b1", tenant: B }, { id: "b2", tenant: B }]);
}, 60_000);

afterAll(async () => {
  await gw?.close();
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("RBAC", () => {
  interface Row { method: string; route: string; policy: string; allowed: Record<Role, boolean> }
  let table: Row[];

  beforeAll(async () => {
    const md = await readFile(new URL("../docs/gateway.md", import.meta.url), "utf8");
    const block = md.split("<!-- policy-table:start -->")[1]!.split("<!-- policy-table:end -->")[0]!;
    table = block.trim().split("\n").slice(2).map((line) => {
      const [method, route, policy, reader, writer, admin, operator] = line.split("|").slice(1, -1).map((c) => c.trim());
      return { method: method!, route: route!, policy: policy!, allowed: { reader: reader === "yes", writer: writer === "yes", admin: admin === "yes", operator: operator === "yes" } };
    });
  });

  it("the documented table lists exactly the routes that have a policy, with the same policy", () => {
    const served = gw.routes.filter((r) => r.policy !== undefined).map((r) => `${r.method} ${r.url} ${r.policy}`).sort();
    expect(table.map((r) => `${r.method} ${r.route} ${r.policy}`).sort()).toEqual(served);
  });

  it("every role × route answers as the table says (403 FLEX_FORBIDDEN when not allowed), and no route works without a token", async () => {
    const mismatches: string[] = [];
    for (const row of table) {
      const path = row.route.replace(":category", "sensor").replace(":id", "rbac1").replace(":name", row.route.startsWith("/v1/workflows") ? "nowf" : "readings").replace(":processor", "anomaly").replace(":username", "nobody").replace(":runId", "norun");
      const body = row.method === "POST" ? (row.route === "/v1/events" ? JSON.stringify([{ category: "sensor", stream: "r1", type: "T", data: {} }]) : row.route === "/v1/users" ? JSON.stringify({ username: uniqueName("u"), password: "long enough pw", roles: ["reader"] }) : row.route.startsWith("/v1/auth") ? undefined : row.route.startsWith("/v1/streams") ? JSON.stringify({ type: "T", data: {} }) : "{}") : undefined;
      for (const role of ROLES) {
        // Logout revokes the token it is called with: use a fresh one.
        const token = row.policy === "auth.logout" ? (await gw.issuer!.issueAccess({ tenant: A, subject: role, roles: [role] })).token : tokens[`${A}:${role}`]!;
        let status: number;
        if (row.route.endsWith("/live")) {
          const ac = new AbortController();
          const res = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${token}` }, signal: ac.signal });
          status = res.status;
          ac.abort();
        } else {
          status = (await http(row.method, path, token, body !== undefined ? { body } : {})).status;
        }
        const got = status !== 403 && status !== 401;
        if (got !== row.allowed[role]) mismatches.push(`${row.method} ${row.route} as ${role}: ${status}`);
      }
      const anon = await http(row.method, path, undefined, body !== undefined ? { body } : {});
      if (anon.status !== 401) mismatches.push(`${row.method} ${row.route} without a token: ${anon.status}`);
    }
    expect(mismatches).toEqual([]);
  });
});

describe("BOLA: tenant A's token against tenant B's ids", () => {
  let bEvents: number;

  beforeAll(async () => {
    const tb = tokens[`${B}:all`]!;
    expect((await http("POST", "/v1/streams/sensor/b1", tb, { body: JSON.stringify({ events: [{ type: "T", data: { secret: 1 } }, { type: "T", data: { secret: 2 } }] }) })).status).toBe(201);
    expect((await http("POST", "/v1/events", tb, { body: JSON.stringify([{ category: "sensor", stream: "b2", type: "T", data: { secret: 3 } }]) })).status).toBe(200);
    const js = jetstream(nats.nc);
    const e = encodeEvent({ type: "Anomaly", data: { secret: 4 } });
    await js.publish(`drv.${B}.anomaly.k1`, e.data, { headers: e.headers });
    await gw.users.add(B, "bob", "bob's password", ["admin"]);
    const wf = await http("POST", "/v1/workflows", tb, { body: JSON.stringify({ name: "hiddenwf", steps: [{ id: "s1", kind: "script", language: "bash", source: "echo '{}'" }] }) });
    expect(wf.status, JSON.stringify(wf.json)).toBe(201);
    const run = await http("POST", "/v1/workflows/hiddenwf/runs", tb, { body: JSON.stringify({ runId: "hiddenrun", input: { secret: 5 } }) });
    expect(run.status, JSON.stringify(run.json)).toBe(201);
    bEvents = await count(`evt.${B}.>`);
  });

  it("reads of B's streams, derived outputs, projections and users return nothing of B", async () => {
    const ta = tokens[`${A}:all`]!;
    const leaks: string[] = [];
    const check = async (path: string, expectStatus: number[], rowsOf?: (j: any) => unknown[]) => { // eslint-disable-line @typescript-eslint/no-explicit-any
      const r = await http("GET", path, ta);
      if (!expectStatus.includes(r.status)) leaks.push(`${path}: ${r.status}`);
      if (JSON.stringify(r.json ?? {}).includes("secret") || JSON.stringify(r.json ?? {}).includes(B)) leaks.push(`${path}: body mentions B: ${JSON.stringify(r.json)}`);
      if (rowsOf && r.status === 200 && rowsOf(r.json).some((x) => JSON.stringify(x).includes(B))) leaks.push(`${path}: B rows`);
    };
    await check("/v1/streams/sensor/b1", [404]);
    await check("/v1/streams/sensor/b2", [404]);
    await check("/v1/streams/sensor/b1?asOf=1000000", [404]);
    await check(`/v1/streams/sensor/b1?tenant=${B}`, [400]);
    await check("/v1/derived/anomaly", [200], (j) => j.outputs);
    await check("/v1/derived/anomaly?key=k1", [200], (j) => j.outputs);
    await check("/v1/projections/readings", [200], (j) => j.rows);
    await check(`/v1/projections/readings?filter=${encodeURIComponent(JSON.stringify({ tenant: B }))}`, [200], (j) => j.rows);
    await check(`/v1/projections/readings?tenant=${B}`, [400]);
    await check("/v1/users", [200], (j) => j.users);
    await check("/v1/workflows", [200], (j) => j.workflows);
    await check("/v1/workflows/hiddenwf", [404]);
    await check("/v1/runs/hiddenrun", [404]);
    await check("/v1/runs/hiddenrun/events", [404]);
    expect(leaks).toEqual([]);
    // Every read model query was A's, except the processors' own throughput reports, which
    // GET /v1/processors/metrics reads from `_system` (deployment-wide, docs/console.md).
    const systemMetrics = (q: (typeof models.queries)[number]): boolean => q.name === "performance_metrics" && q.query.tenant === "_system" && (q.query.filter as { kind?: unknown } | undefined)?.kind === "processor";
    expect(models.queries.filter((q) => q.query.tenant !== A && !systemMetrics(q)), JSON.stringify(models.queries)).toEqual([]);
    expect(models.queries.some((q) => q.query.tenant === B)).toBe(false);
    const own = await http("GET", "/v1/derived/anomaly", tokens[`${B}:all`]);
    expect(own.json.outputs, JSON.stringify(own.json)).toHaveLength(1);
  });

  it("writes aimed at B's ids land in A or fail; B's data is unchanged", async () => {
    const ta = tokens[`${A}:all`]!;
    const conflict = await http("POST", "/v1/streams/sensor/b1", ta, { body: JSON.stringify({ type: "T", data: {} }), headers: { "if-match": '"2"' } });
    expect(conflict.status).toBe(409);
    expect(conflict.json.error.details.currentRevision).toBe(0);
    const w = await http("POST", "/v1/streams/sensor/b1", ta, { body: JSON.stringify({ type: "T", data: {}, tenant: B, roles: ["admin"] }) });
    expect(w.status).toBe(201);
    expect(w.json.revision).toBe(1);
    const batch = await http("POST", "/v1/events", ta, { body: JSON.stringify([{ category: "sensor", stream: "b2", type: "T", data: {}, tenant: B }]) });
    expect(batch.json.accepted).toBe(1);
    expect((await http("POST", "/v1/workflows/hiddenwf/runs", ta, { body: "{}" })).status).toBe(404);
    expect((await http("POST", "/v1/runs/hiddenrun/cancel", ta, { body: "{}" })).status).toBe(404);
    expect((await http("GET", "/v1/runs/hiddenrun", tokens[`${B}:all`])).json.status).not.toBe("cancelled");
    const del = await http("DELETE", "/v1/users/bob", ta);
    expect(del.status).toBe(404);
    expect(await gw.users.get(B, "bob")).toBeDefined();
    expect(await count(`evt.${B}.>`)).toBe(bEvents);
    expect(await count(`evt.${A}.sensor.b1`)).toBe(1);
    expect(await count(`evt.${A}.sensor.b2`)).toBe(1);
    const own = await http("GET", "/v1/streams/sensor/b1", ta);
    expect(own.json.events.map((e: { data: unknown }) => e.data)).toEqual([{}]);
  });

  it("the live feed sends A only A's changes", async () => {
    const ac = new AbortController();
    const res = await fetch(`${base}/v1/projections/readings/live`, { headers: { authorization: `Bearer ${tokens[`${A}:reader`]}` }, signal: ac.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/event-stream");
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = "";
    const until = async (needle: string) => {
      while (!text.includes(needle)) text += decoder.decode((await reader.read()).value);
    };
    await until("event: ready");
    models.emit({ tenants: [B], seq: 41 });
    models.emit({ tenants: [A], seq: 42 });
    await until("42");
    ac.abort();
    expect(text).not.toContain("41");
    expect(text).toContain('event: change\ndata: {"seq":42}');
  });
});

describe("bad input changes nothing and answers 4xx with a code", () => {
  it("rejects each bad request", async () => {
    const t = tokens[`${A}:all`]!;
    const before = await count(`evt.${A}.>`);
    const big = JSON.stringify({ type: "T", data: "x".repeat(10 * 1024) });
    const cases: Array<[string, string, { body?: string; headers?: Record<string, string> }, number, string]> = [
      ["POST", "/v1/streams/sensor/bad1", { body: "{not json" }, 400, "FLEX_INVALID_JSON"],
      ["POST", "/v1/streams/sensor/bad1", { body: "" }, 400, "FLEX_INVALID_JSON"],
      ["POST", "/v1/streams/sensor/bad1", { body: "type=T", headers: { "content-type": "text/plain" } }, 415, "FLEX_UNSUPPORTED_MEDIA_TYPE"],
      ["POST", "/v1/streams/sensor/bad1", { body: '{"type":"T"}\n', headers: { "content-type": "application/x-ndjson" } }, 415, "FLEX_UNSUPPORTED_MEDIA_TYPE"],
      ["POST", "/v1/events", { body: "a,b", headers: { "content-type": "text/csv" } }, 415, "FLEX_UNSUPPORTED_MEDIA_TYPE"],
      ["POST", "/v1/streams/sensor/bad1", { body: big }, 413, "FLEX_BODY_TOO_LARGE"],
      ["POST", "/v1/events", { body: JSON.stringify(Array.from({ length: 40 }, () => ({ category: "c", stream: "s", type: "T", data: "x".repeat(2000) }))) }, 413, "FLEX_BODY_TOO_LARGE"],
      ["POST", "/v1/streams/sensor/a.b", { body: '{"type":"T","data":1}' }, 400, "FLEX_SUBJECT_TOKEN"],
      ["POST", "/v1/streams/sensor/a*", { body: '{"type":"T","data":1}' }, 400, "FLEX_SUBJECT_TOKEN"],
      ["POST", "/v1/streams/sen%20sor/x", { body: '{"type":"T","data":1}' }, 400, "FLEX_SUBJECT_TOKEN"],
      ["POST", "/v1/streams/sensor/bad1", { body: '{"data":1}' }, 400, "FLEX_INVALID_EVENT"],
      ["POST", "/v1/streams/sensor/bad1", { body: "[1,2]" }, 400, "FLEX_BAD_REQUEST"],
      ["POST", "/v1/streams/sensor/bad1", { body: '{"events":[]}' }, 400, "FLEX_BAD_REQUEST"],
      ["POST", "/v1/streams/sensor/bad1", { body: '{"type":"T","data":1}', headers: { "if-match": "abc" } }, 400, "FLEX_BAD_REQUEST"],
      ["POST", "/v1/streams/sensor/bad1", { body: '{"type":"T","data":1,"id":"x"}', headers: { "idempotency-key": "y" } }, 400, "FLEX_BAD_REQUEST"],
      ["POST", "/v1/events", { body: "[]" }, 400, "FLEX_BAD_REQUEST"],
      ["POST", "/v1/events", { body: '{"type":"T"}' }, 400, "FLEX_BAD_REQUEST"],
      ["POST", "/v1/events", { body: '{"category":"c","stream":"s","type":"T","data":1}\n{oops\n', headers: { "content-type": "application/x-ndjson" } }, 400, "FLEX_INVALID_JSON"],
      ["POST", "/v1/events", { body: JSON.stringify(Array.from({ length: 51 }, () => ({ category: "c", stream: "s", type: "T", data: 1 }))) }, 400, "FLEX_BAD_REQUEST"],
      ["GET", "/v1/streams/sensor/bad1?limit=5000", {}, 400, "FLEX_BAD_REQUEST"],
      ["GET", "/v1/streams/sensor/bad1?limit=abc", {}, 400, "FLEX_BAD_REQUEST"],
      ["GET", "/v1/streams/sensor/bad1?from=0", {}, 400, "FLEX_BAD_REQUEST"],
      ["GET", "/v1/streams/sensor/bad1?asOf=yesterday", {}, 400, "FLEX_BAD_REQUEST"],
      ["GET", "/v1/streams/sensor/a.b", {}, 400, "FLEX_SUBJECT_TOKEN"],
      ["GET", "/v1/projections/readings?filter=notjson", {}, 400, "FLEX_BAD_REQUEST"],
      ["GET", "/v1/projections/readings?filter=%5B1%5D", {}, 400, "FLEX_BAD_REQUEST"],
      ["GET", "/v1/projections/readings?limit=1001", {}, 400, "FLEX_BAD_REQUEST"],
      ["GET", "/v1/projections/unknown", {}, 404, "FLEX_PROJECTION_NOT_FOUND"],
      ["GET", "/v1/projections/a.b", {}, 400, "FLEX_SUBJECT_TOKEN"],
      ["GET", "/v1/derived/a.b", {}, 400, "FLEX_SUBJECT_TOKEN"],
      ["GET", "/v1/derived/anomaly?key=a.b", {}, 400, "FLEX_SUBJECT_TOKEN"],
      ["POST", "/v1/users", { body: '{"username":"x y","password":"long enough","roles":["reader"]}' }, 400, "FLEX_INVALID_OPTION"],
      ["POST", "/v1/users", { body: '{"username":"xy","password":"long enough","roles":["root"]}' }, 400, "FLEX_INVALID_OPTION"],
      ["GET", "/v1/nope", {}, 404, "FLEX_NOT_FOUND"],
    ];
    const wrong: string[] = [];
    for (const [method, path, init, status, code] of cases) {
      const r = await http(method, path, t, init);
      const ok = r.status === status && r.json?.error?.code === code && typeof r.json.error.message === "string" && "details" in r.json.error;
      if (!ok) wrong.push(`${method} ${path} ${init.body?.slice(0, 30) ?? ""}: ${r.status} ${JSON.stringify(r.json)}`);
    }
    expect(wrong).toEqual([]);
    expect(await count(`evt.${A}.>`)).toBe(before);
  });

  it("a batch stores the valid events and reports each invalid one", async () => {
    const t = tokens[`${A}:writer`]!;
    const r = await http("POST", "/v1/events", t, {
      body: ['{"category":"c","stream":"s1","type":"T","data":1,"id":"e-1"}', '{"category":"c.x","stream":"s1","type":"T","data":1}', '{"category":"c","stream":"s1","data":1}', "", '{"category":"c","stream":"s1","type":"T","data":2,"id":"e-1"}'].join("\n"),
      headers: { "content-type": "application/x-ndjson" },
    });
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ accepted: 1, duplicates: 1, rejected: 2 });
    expect(r.json.results.map((x: { error?: { code: string }; duplicate?: boolean }) => x.error?.code ?? x.duplicate)).toEqual([false, "FLEX_SUBJECT_TOKEN", "FLEX_INVALID_EVENT", true]);
  });
});

describe("appends", () => {
  it("Idempotency-Key stores a retried append once; If-None-Match and If-Match guard revisions", async () => {
    const t = tokens[`${A}:writer`]!;
    const id = uniqueName("s");
    const first = await http("POST", `/v1/streams/sensor/${id}`, t, { body: '{"type":"T","data":1}', headers: { "idempotency-key": "k-1", "if-none-match": "*" } });
    expect(first.status).toBe(201);
    expect(first.headers.get("etag")).toBe('"1"');
    const retry = await http("POST", `/v1/streams/sensor/${id}`, t, { body: '{"type":"T","data":1}', headers: { "idempotency-key": "k-1", "if-none-match": "*" } });
    expect(retry.status).toBe(200);
    expect(retry.json).toEqual({ ...first.json, duplicates: 1 });
    const next = await http("POST", `/v1/streams/sensor/${id}`, t, { body: '{"events":[{"type":"T","data":2},{"type":"T","data":3}]}', headers: { "if-match": '"1"' } });
    expect(next.json.revision).toBe(3);
    const stale = await http("POST", `/v1/streams/sensor/${id}`, t, { body: '{"type":"T","data":4}', headers: { "if-match": '"1"' } });
    expect(stale.status).toBe(409);
    expect(stale.json.error).toMatchObject({ code: "FLEX_CONCURRENCY", details: { expected: 1, currentRevision: 3 } });
    expect(await count(`evt.${A}.sensor.${id}`)).toBe(3);
    const page = await http("GET", `/v1/streams/sensor/${id}?from=2&limit=1`, tokens[`${A}:reader`]);
    expect(page.json.events.map((e: { data: number }) => e.data)).toEqual([2]);
    expect(page.json.next).toBe(3);
    const asOf = await http("GET", `/v1/streams/sensor/${id}?asOf=${first.json.seq}`, tokens[`${A}:reader`]);
    expect(asOf.json.events.map((e: { data: number }) => e.data)).toEqual([1]);
    const doc = uniqueName("doc");
    const put = async (data: unknown) => (await http("POST", `/v1/streams/thing/${doc}`, t, { body: JSON.stringify({ type: "Set", data }) })).json.seq as number;
    const s1 = await put({ colour: "red", size: 1 });
    await put({ colour: "blue", size: null });
    const now = await http("GET", `/v1/streams/thing/${doc}?view=state`, tokens[`${A}:reader`]);
    expect(now.json).toMatchObject({ state: { colour: "blue" }, revision: 2 });
    const then = await http("GET", `/v1/streams/thing/${doc}?view=state&asOf=${s1}`, tokens[`${A}:reader`]);
    expect(then.json).toMatchObject({ state: { colour: "red", size: 1 }, revision: 1, seq: s1 });
  });
});

describe("projection queries", () => {
  it("passes filter, sort, cursor, limit, and waits for minSeq", async () => {
    const r = await http("GET", `/v1/projections/readings?filter=${encodeURIComponent('{"id":"a1"}')}&sort=-id&limit=5&minSeq=7`, tokens[`${A}:reader`]);
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ rows: [{ id: "a1", tenant: A }], nextCursor: null });
    expect(models.waits.at(-1)).toEqual({ name: "readings", seq: 7 });
    expect(models.queries.at(-1)!.query).toEqual({ tenant: A, limit: 5, filter: { id: "a1" }, sort: "-id" });
  });
});

describe("limits", () => {
  it("per-tenant rate limit: 429 with Retry-After, other tenants unaffected; request timeout: 503", async () => {
    const slow = new FakeReadModels();
    slow.hang = true;
    const limited = await createGateway({ nc: nats.nc, dataDir: dir, port: 0, rateLimit: { perSecond: 1, burst: 2 }, signInRateLimit: { perSecond: 1, burst: 3 }, requestTimeoutMs: 300, readModels: slow, metricsIntervalMs: 0 });
    try {
      const me = (t: string) => limited.app.inject({ method: "GET", url: "/v1/auth/me", headers: { authorization: `Bearer ${t}` } });
      const first = await me(tokens[`${A}:reader`]!);
      expect(first.statusCode).toBe(200);
      // burst 2 at 1/s: 2 requests per 2 s window, announced in the headers.
      expect(first.headers["x-ratelimit-limit"]).toBe("2");
      expect(first.headers["x-ratelimit-remaining"]).toBe("1");
      expect((await me(tokens[`${A}:reader`]!)).statusCode).toBe(200);
      const third = await me(tokens[`${A}:reader`]!);
      expect(third.statusCode).toBe(429);
      expect(third.headers["retry-after"]).toBe("2");
      expect(third.json().error.code).toBe("FLEX_RATE_LIMITED");
      // Health is nobody's tenant: not limited.
      for (let i = 0; i < 5; i++) expect((await limited.app.inject({ method: "GET", url: "/healthz" })).statusCode).toBe(200);
      // Sign-in is limited per client address, before the password is checked.
      const signIn = () => limited.app.inject({ method: "POST", url: "/v1/auth/token", payload: { tenant: A, username: "nobody", password: "wrong-password" } });
      const codes: number[] = [];
      for (let i = 0; i < 5; i++) codes.push((await signIn()).statusCode);
      expect(codes, "3 per 3 s window").toEqual([401, 401, 401, 429, 429]);
      expect((await signIn()).json().error.code).toBe("FLEX_RATE_LIMITED");
      expect((await me(tokens[`${B}:reader`]!)).statusCode).toBe(200);
      const timedOut = await limited.app.inject({ method: "GET", url: "/v1/projections/readings", headers: { authorization: `Bearer ${tokens[`${B}:reader`]}` } });
      expect(timedOut.statusCode).toBe(503);
      expect(timedOut.json().error.code).toBe("FLEX_REQUEST_TIMEOUT");
    } finally {
      await limited.close();
    }
  });
});

describe("route reports", () => {
  // Only this gateway reports: the file's other gateways have reports off (metricsIntervalMs: 0).
  it("publishes MetricsReported per route for the performance_metrics read model", async () => {
    const startSeq = (await jsm.streams.info(STREAMS.events)).state.last_seq;
    const g = await createGateway({ nc: nats.nc, dataDir: dir, port: 0, workflows: false, metricsIntervalMs: 300 });
    try {
      for (let i = 0; i < 3; i++) expect((await g.app.inject({ method: "GET", url: "/v1/auth/me", headers: { authorization: `Bearer ${tokens[`${A}:reader`]}` } })).statusCode).toBe(200);
      // The three requests may straddle a report (or a minute): what counts is the sum.
      const reports = async (): Promise<Array<Record<string, number | string>>> => {
        const last = (await jsm.streams.info(STREAMS.events)).state.last_seq;
        const out: Array<Record<string, number | string>> = [];
        for (let seq = startSeq + 1; seq <= last; seq++) {
          const m = await jsm.streams.getMessage(STREAMS.events, { seq }).catch(() => null);
          if (m?.subject !== "evt._system.metrics.gateway") continue;
          const d = m.json<Record<string, number | string>>();
          if (d.component === "GET /v1/auth/me") out.push(d);
        }
        return out;
      };
      let found: Array<Record<string, number | string>> = [];
      for (let i = 0; i < 50; i++) {
        await new Promise((r) => setTimeout(r, 100));
        found = await reports();
        if (found.reduce((n, d) => n + Number(d.count), 0) >= 3) break;
      }
      expect(found.reduce((n, d) => n + Number(d.count), 0)).toBe(3);
      for (const d of found) {
        expect(d).toMatchObject({ kind: "gateway_route", errors: 0, throughput: Math.round((Number(d.count) / 60) * 1000) / 1000 });
        expect(typeof d.p99Ms).toBe("number");
      }
    } finally {
      await g.close();
    }
  });
});

describe("ops", () => {
  it("serves healthz, readyz, metrics and the OpenAPI document", async () => {
    expect((await http("GET", "/healthz", undefined)).json).toEqual({ status: "ok" });
    expect((await http("GET", "/readyz", undefined)).json.ready).toBe(true);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toContain('flexcore_http_request_duration_seconds_count{method="POST",route="/v1/streams/:category/:id",status="201"}');
    expect(metrics).toMatch(/flexcore_gateway_events_total\{route="batch",result="stored"\} \d+/);
    const doc = (await http("GET", "/docs", undefined)).json;
    expect(doc.openapi).toBe("3.1.0");
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(["/v1/streams/{category}/{id}", "/v1/events", "/v1/projections/{name}", "/v1/auth/token"]));
    expect(doc.paths["/v1/events"].post.security).toEqual([{ bearer: [] }]);
    // A browser gets the viewer, whose script (served by the gateway, no CDN) reads docs/json.
    const page = await fetch(`${base}/docs`, { headers: { accept: "text/html,application/xhtml+xml" } });
    expect(page.headers.get("content-type")).toMatch(/^text\/html/);
    expect(page.headers.get("content-security-policy")).toContain("script-src 'self'");
    const html = await page.text();
    expect(html).toContain('<script src="docs/viewer.js"></script>');
    const script = await fetch(`${base}/docs/viewer.js`);
    expect(script.headers.get("content-type")).toMatch(/^text\/javascript/);
    expect(await script.text()).toContain('fetch("docs/json"');
    expect(((await (await fetch(`${base}/docs/json`)).json()) as { openapi: string }).openapi).toBe("3.1.0");
  });
});

describe("with the projection engine (SQLite)", () => {
  it("A reads only its own rows, even filtering on B's tenant; minSeq gives read-your-writes", async () => {
    const pdir = await mkdtemp(join(tmpdir(), "flexcore-gw-proj-"));
    const engine = createProjectionEngine(nats.nc, { dataDir: pdir, projections: [genericProjection()], log: () => undefined });
    await engine.start();
    const real = await createGateway({ nc: nats.nc, dataDir: dir, port: 0, projections: engine, workflows: false });
    try {
      const post = async (tenant: string, id: string, data: unknown) => {
        const r = await real.app.inject({ method: "POST", url: `/v1/streams/device/${id}`, headers: { authorization: `Bearer ${tokens[`${tenant}:all`]}` }, payload: { type: "Set", data } });
        expect(r.statusCode).toBe(201);
        return r.json().seq as number;
      };
      await post(B, "d1", { secret: "b" });
      const seq = await post(A, "d1", { colour: "green" });
      const q = (query: string) => real.app.inject({ method: "GET", url: `/v1/projections/generic?${query}`, headers: { authorization: `Bearer ${tokens[`${A}:reader`]}` } });
      const mine = await q(`minSeq=${seq}&filter=${encodeURIComponent('{"category":"device"}')}`);
      expect(mine.statusCode, mine.body).toBe(200);
      expect(mine.json().rows.map((r: { tenant: string; id: string; doc: unknown }) => [r.tenant, r.id, r.doc])).toEqual([[A, "d1", { colour: "green" }]]);
      const theirs = await q(`filter=${encodeURIComponent(JSON.stringify({ tenant: B }))}`);
      expect(theirs.json().rows).toEqual([]);
      const bad = await q(`filter=${encodeURIComponent('{"nosuchcolumn":1}')}`);
      expect(bad.statusCode).toBe(400);
      expect(bad.json().error.code).toBe("FLEX_INVALID_QUERY");

      // The live feed over real HTTP: B's writes send A nothing, A's own write sends a change.
      const url = await real.listen();
      const ac = new AbortController();
      const res = await fetch(`${url}/v1/projections/generic/live`, { headers: { authorization: `Bearer ${tokens[`${A}:reader`]}` }, signal: ac.signal });
      const reader = res.body!.getReader();
      const decoder = new TextDecoder();
      let text = "";
      const until = async (needle: string) => {
        while (!text.includes(needle)) text += decoder.decode((await reader.read()).value);
      };
      await until("event: ready");
      const bSeq = await post(B, "d2", { secret: "b2" });
      const aSeq = await post(A, "d2", { colour: "blue" });
      await until(`"seq":${aSeq}`);
      ac.abort();
      expect(text).not.toContain(`"seq":${bSeq}`);
    } finally {
      await real.close();
      await engine.close();
      await rm(pdir, { recursive: true, force: true });
    }
  });
});
