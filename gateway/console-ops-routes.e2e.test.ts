/**
 * The small endpoints the console's processors, workflows and users pages need, through the
 * real gateway (port 0) over a real nats-server and the real projection engine:
 * `GET /v1/processors/metrics` (the runtime's own per-minute reports, never a tenant's rows),
 * `GET /v1/runs` (the caller's tenant's runs only), `PATCH /v1/users/:username` (admins
 * only, the tenant's own users only, and the user's sessions end).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createProjectionEngine } from "../projections/index.js";
import type { ProjectionEngine } from "../projections/index.js";
import { encodeEvent, ensureTopology, METRICS_EVENT_TYPES } from "../streams/index.js";
import { tokenFor } from "../test/console-fixtures.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { createGateway } from "./index.js";
import type { Gateway, Role } from "./index.js";

const A = uniqueName("coa");
const B = uniqueName("cob");
const PROC = uniqueName("proc");
const PASSWORD = "correct horse battery";
let t: { nats: TestNats; gw: Gateway; url: string };
let engine: ProjectionEngine;
let dir: string;

async function http(method: string, path: string, bearer: string | undefined, body?: unknown): Promise<{ status: number; json: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const headers: Record<string, string> = {};
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${t.url}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : undefined };
}
const tok = (tenant: string, roles: readonly Role[]): Promise<string> => tokenFor(t.gw, tenant, roles);

async function report(tenant: string, component: string, kind: string, minute: string, count: number): Promise<number> {
  const e = encodeEvent({ id: `${tenant}-${component}-${kind}-${minute}`, type: METRICS_EVENT_TYPES.reported, data: { component, kind, minute, count, errors: 1, p50Ms: 2, p95Ms: 5, p99Ms: 9, throughput: count / 60 } });
  return (await jetstream(t.nats.nc).publish(`evt.${tenant}.metrics.${component.replace(/\W/gu, "_")}`, e.data, { headers: e.headers })).seq;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-coa-"));
  const nats = await startTestNats();
  await ensureTopology(nats.nc);
  engine = createProjectionEngine(nats.nc, { dataDir: join(dir, "data"), log: () => undefined });
  await engine.start();
  const gw = await createGateway({ nc: nats.nc, dataDir: dir, port: 0, metricsIntervalMs: 0, projections: engine });
  t = { nats, gw, url: await gw.listen() };
}, 60_000);

afterAll(async () => {
  await t?.gw.close();
  await engine?.close();
  await t?.nats.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("GET /v1/processors/metrics", () => {
  it("answers the runtime's per-minute processor reports, never a tenant's rows nor other kinds", async () => {
    const now = Date.now();
    const minute = (ago: number): string => new Date(Math.floor((now - ago * 60_000) / 60_000) * 60_000).toISOString();
    await report("_system", PROC, "processor", minute(2), 120);
    await report("_system", PROC, "processor", minute(1), 60);
    await report("_system", PROC, "processor", minute(90), 999);
    await report("_system", `GET /v1/${PROC}`, "gateway_route", minute(1), 5);
    // A tenant's own metrics rows (FlexCore acting for B) must not show, to B or anyone.
    const last = await report(B, `${PROC}_b`, "processor", minute(1), 7);
    await engine.waitFor("performance_metrics", last, { timeout: 10_000 });

    const reader = await tok(A, ["reader"]);
    const res = await http("GET", "/v1/processors/metrics?minutes=30", reader);
    expect(res.status).toBe(200);
    const mine = res.json.processors.filter((p: { processor: string }) => p.processor.includes(PROC));
    expect(mine).toEqual([{ processor: PROC, minutes: [
      { minute: minute(2), count: 120, errors: 1, throughput: 2, p50Ms: 2, p95Ms: 5, p99Ms: 9 },
      { minute: minute(1), count: 60, errors: 1, throughput: 1, p50Ms: 2, p95Ms: 5, p99Ms: 9 },
    ] }]);
    const asB = await http("GET", "/v1/processors/metrics?minutes=30", await tok(B, ["admin"]));
    expect(JSON.stringify(asB.json)).not.toContain(`${PROC}_b`);
    expect((await http("GET", "/v1/processors/metrics?minutes=120", reader)).json.processors.find((p: { processor: string }) => p.processor === PROC).minutes).toHaveLength(3);
  });

  it("refuses a bad window naming the field, and anonymous callers", async () => {
    const reader = await tok(A, ["reader"]);
    const bad = await http("GET", "/v1/processors/metrics?minutes=0", reader);
    expect(bad.status).toBe(400);
    expect(bad.json.error.code).toBe("FLEX_BAD_REQUEST");
    expect(bad.json.error.message).toContain("minutes");
    expect((await http("GET", "/v1/processors/metrics?minutes=100000", reader)).status).toBe(400);
    expect((await http("GET", "/v1/processors/metrics", undefined)).status).toBe(401);
  });
});

describe("GET /v1/runs", () => {
  it("lists the caller's tenant's runs only, newest first, by workflow", async () => {
    const def = { name: "hello", steps: [{ id: "a", kind: "script", language: "javascript", source: "function main() { return 1; }" }] };
    for (const tenant of [A, B]) {
      const admin = await tok(tenant, ["admin"]);
      expect((await http("POST", "/v1/workflows", admin, def)).status).toBe(201);
      expect((await http("POST", "/v1/workflows/hello/runs", admin, { runId: `${tenant}-r1` })).status).toBe(201);
    }
    const writer = await tok(A, ["writer"]);
    const second = await http("POST", "/v1/workflows/hello/runs", writer, { runId: `${A}-r2`, input: { x: 1 } });
    expect(second.status).toBe(201);
    const seq = (await jetstream(t.nats.nc).streams.get("FLEX_EVENTS").then((s) => s.info())).state.last_seq;
    await engine.waitFor("workflow_history", seq, { timeout: 10_000 });
    const list = await http("GET", "/v1/runs?workflow=hello", writer);
    expect(list.status).toBe(200);
    expect(list.json.runs.map((r: { runId: string }) => r.runId).sort()).toEqual([`${A}-r1`, `${A}-r2`]);
    expect(list.json.runs[0]).toMatchObject({ workflow: "hello", status: "running", trigger: "manual" });
    expect(JSON.stringify(list.json)).not.toContain(B);
    expect((await http("GET", "/v1/runs?status=running&limit=1", writer)).json.runs).toHaveLength(1);
    const bad = await http("GET", "/v1/runs?status=exploded", writer);
    expect(bad.status).toBe(400);
    expect((await http("GET", "/v1/runs?workflow=a.b", writer)).status).toBe(400);
  });
});

describe("PATCH /v1/users/:username", () => {
  it("an admin changes a user's roles; the user's sessions end; readers and other tenants cannot", async () => {
    await t.gw.users.add(A, "rita", PASSWORD, ["reader"]);
    await t.gw.users.add(B, "rita", PASSWORD, ["reader"]);
    const signIn = await http("POST", "/v1/auth/token", undefined, { tenant: A, username: "rita", password: PASSWORD });
    expect(signIn.status).toBe(200);
    const rita = signIn.json as { access_token: string; refresh_token: string };

    // A reader (rita herself) may not make herself an admin.
    const self = await http("PATCH", "/v1/users/rita", rita.access_token, { roles: ["admin"] });
    expect(self.status).toBe(403);
    expect(self.json.error.code).toBe("FLEX_FORBIDDEN");
    expect((await t.gw.users.get(A, "rita"))?.roles).toEqual(["reader"]);

    const admin = await tok(A, ["admin"]);
    const bad = await http("PATCH", "/v1/users/rita", admin, { roles: ["root"] });
    expect(bad.status).toBe(400);
    expect(bad.json.error.message).toContain("roles");
    expect((await http("PATCH", "/v1/users/nobody", admin, { roles: ["reader"] })).status).toBe(404);

    const ok = await http("PATCH", "/v1/users/rita", admin, { roles: ["writer"] });
    expect(ok.status).toBe(200);
    expect(ok.json).toMatchObject({ tenant: A, username: "rita", roles: ["writer"] });
    expect((await t.gw.users.get(B, "rita"))?.roles).toEqual(["reader"]);
    // Her old tokens carried "reader": they stop working, and she signs in again as a writer.
    expect((await http("GET", "/v1/auth/me", rita.access_token)).status).toBe(401);
    expect((await http("POST", "/v1/auth/refresh", undefined, { refresh_token: rita.refresh_token })).status).toBe(401);
    const again = await http("POST", "/v1/auth/token", undefined, { tenant: A, username: "rita", password: PASSWORD });
    expect((await http("GET", "/v1/auth/me", again.json.access_token)).json.roles).toEqual(["writer"]);
  });
});
