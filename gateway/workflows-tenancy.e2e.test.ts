/**
 * The workflow boundaries of a tenant, attacked through the real gateway (port 0) and the
 * real broker, with a real runner and the real script sandbox:
 * - trusted code comes only from the operator (API refuses it, forged KV entries never run trusted);
 * - run streams belong to the runner (reserved categories, definition by reference);
 * - names with `+`, `:`, `/` and non-ASCII letters work end to end (KV keys are encoded).
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { BUCKETS, createEventStore, ensureTopology, eventSubject } from "../streams/index.js";
import type { EventStore } from "../streams/index.js";
import { createOperatorTrust, definitionKey, runIndexKey, startWorkflowRunner } from "../workflows/index.js";
import type { WorkflowRunner } from "../workflows/index.js";
import { createGateway, ROLES } from "./index.js";
import type { Gateway } from "./index.js";

let nats: TestNats;
let dir: string;
let gw: Gateway;
let base: string;
let runner: WorkflowRunner;
let store: EventStore;
let workflowsKv: KV;
const logs: string[] = [];
const T = uniqueName("wt");
// A file a trusted step would write on the host: it must never appear.
let marker: string;
const HOST_SECRET = `host-secret-${uniqueName("s")}`;
let natsAccepted = 0;
const natsConnections = (): number => natsAccepted;

async function token(tenant: string, roles: readonly string[]): Promise<string> {
  return (await gw.issuer!.issueAccess({ tenant, subject: roles.join("+"), roles: [...roles] as (typeof ROLES)[number][] })).token;
}

async function http(method: string, path: string, bearer: string | undefined, body?: unknown, contentType = "application/json") {
  const headers: Record<string, string> = {};
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["content-type"] = contentType;
  const res = await fetch(`${base}${path}`, { method, headers, ...(body !== undefined ? { body: typeof body === "string" ? body : JSON.stringify(body) } : {}) });
  const text = await res.text();
  let json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json };
}

async function waitForRun(tenant: string, runId: string, bearer: string, timeoutMs = 20_000): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await http("GET", `/v1/runs/${encodeURIComponent(runId)}`, bearer);
    if (r.status === 200 && r.json.status !== "running") return r.json;
    if (Date.now() > deadline) throw new Error(`run ${tenant}/${runId} did not end: ${JSON.stringify(r.json)}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

const trustedMarkerStep = (): Record<string, unknown> => ({
  id: "evil",
  kind: "script",
  language: "javascript",
  trusted: true,
  source: `function main() { require("node:fs").writeFileSync(${JSON.stringify(marker)}, "pwned"); return { secret: process.env.FLEX_TEST_HOST_SECRET ?? null }; }`,
});

beforeAll(async () => {
  process.env.FLEX_TEST_HOST_SECRET = HOST_SECRET;
  // -D: the server logs every client connection it accepts (counted by the networked-step test).
  nats = await startTestNats({ args: ["-D"], log: (line) => void (/Client connection created/u.test(line) && (natsAccepted += 1)) });
  await ensureTopology(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-wft-"));
  marker = join(dir, "marker");
  gw = await createGateway({ nc: nats.nc, dataDir: dir, port: 0 });
  base = await gw.listen();
  // The operator's trust holds one definition (of another tenant), as flexcore.yaml's files would.
  const trust = createOperatorTrust();
  trust.add("operator-demo", { name: "ops", steps: [{ id: "a", kind: "script", language: "javascript", trusted: true, source: "function main() { return 1; }" }] });
  runner = await startWorkflowRunner(await nats.connect(), { trust, leaseMs: 1_000, pollMs: 50, rescanMs: 200, scriptRunnerOptions: { sandbox: "auto", maxConcurrent: 2 }, log: (l) => logs.push(l) });
  store = await createEventStore(nats.nc);
  workflowsKv = await new Kvm(nats.nc).open(BUCKETS.workflows);
});

afterAll(async () => {
  delete process.env.FLEX_TEST_HOST_SECRET;
  await runner?.close();
  await store?.close();
  await gw?.close();
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("trusted code comes only from the operator", () => {
  it("a tenant admin's definition with trusted: true is refused naming the path (JSON and YAML), and nothing is stored", async () => {
    const admin = await token(T, ["admin"]);
    const before = await http("GET", "/v1/workflows", admin);
    const json = await http("POST", "/v1/workflows", admin, { name: "own", steps: [{ id: "ok", kind: "script", language: "bash", source: "echo 1" }, trustedMarkerStep()] });
    expect(json.status).toBe(400);
    expect(json.json.error.code).toBe("FLEX_WORKFLOW_INVALID");
    expect(json.json.error.details.field).toBe("steps[1].trusted");
    expect(json.json.error.message).toContain("`steps[1].trusted`");
    const yaml = await http("POST", "/v1/workflows", admin, "name: own\nsteps:\n  - id: a\n    kind: script\n    language: javascript\n    trusted: true\n    source: 'function main() { return 1; }'\n", "application/yaml");
    expect(yaml.status).toBe(400);
    expect(yaml.json.error.details.field).toBe("steps[0].trusted");
    const after = await http("GET", "/v1/workflows", admin);
    expect(after.json.workflows).toEqual(before.json.workflows);
    expect((await http("GET", "/v1/workflows/own", admin)).status).toBe(404);
    expect(existsSync(marker)).toBe(false);
  });

  it("a definition forged straight into the KV bucket (trusted step, origin operator) never runs trusted: its run fails once, no marker", async () => {
    const tenant = uniqueName("forge");
    const writer = await token(tenant, ["writer"]);
    const def = { name: "forged", steps: [trustedMarkerStep()] };
    const body = { name: "forged", version: 1, definition: def, source: JSON.stringify(def), origin: "operator", storedAt: new Date().toISOString() };
    await workflowsKv.put(definitionKey(tenant, "forged"), new TextEncoder().encode(JSON.stringify(body)));
    const started = await http("POST", "/v1/workflows/forged/runs", writer, { runId: "f1" });
    expect(started.status).toBe(201);
    const run = await waitForRun(tenant, "f1", writer);
    expect(run.status).toBe("failed");
    expect(run.error.code).toBe("FLEX_WORKFLOW_UNTRUSTED");
    const events = await store.read(eventSubject(tenant, "workflow", "f1"));
    expect(events.map((e) => e.type)).toEqual(["RunStarted", "RunFailed"]);
    expect(existsSync(marker)).toBe(false);
  });

  it("a forged entry whose stored object says trusted but whose source does not runs the source, in the sandbox", async () => {
    const tenant = uniqueName("forge");
    const writer = await token(tenant, ["writer"]);
    const claimed = { name: "twofaced", steps: [trustedMarkerStep()] };
    const source = { name: "twofaced", steps: [{ id: "evil", kind: "script", language: "javascript", source: "function main() { return { secret: process.env.FLEX_TEST_HOST_SECRET ?? null, canRequire: typeof require === 'function' && (() => { try { require('node:fs').writeFileSync(" + JSON.stringify(marker) + ", 'x'); return true; } catch { return false; } })() }; }" }] };
    const body = { name: "twofaced", version: 1, definition: claimed, source: JSON.stringify(source), origin: "operator", storedAt: new Date().toISOString() };
    await workflowsKv.put(definitionKey(tenant, "twofaced"), new TextEncoder().encode(JSON.stringify(body)));
    expect((await http("POST", "/v1/workflows/twofaced/runs", writer, { runId: "t1" })).status).toBe(201);
    const run = await waitForRun(tenant, "t1", writer);
    expect(run.status).toBe("succeeded");
    // Sandboxed: no host environment, and the host file was not written.
    expect(run.output.secret).toBeNull();
    expect(existsSync(marker)).toBe(false);
  });
});

describe("networked steps cannot reach FlexCore's insides", () => {
  it("a tenant's step with network: true, run through the gateway, connects to neither the gateway nor NATS on loopback; neither sees a connection", async () => {
    const tenant = uniqueName("net");
    const admin = await token(tenant, ["admin", "writer", "reader"]);
    const gatewayPort = Number(new URL(base).port);
    const natsPort = nats.server.port;
    // Each try: a TCP connect to 127.0.0.1:<port> (bash /dev/tcp), 2 s at most.
    const probe = (port: number) => `$(timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/${port}' 2>/dev/null && echo open || echo closed)`;
    const source = `printf '{"gateway":"%s","nats":"%s"}\\n' "${probe(gatewayPort)}" "${probe(natsPort)}"`;
    const put = await http("POST", "/v1/workflows", admin, { name: "reach", steps: [{ id: "probe", kind: "script", language: "bash", network: true, source }] });
    expect(put.status, JSON.stringify(put.json)).toBe(201);
    // Connections the gateway accepts from now on, other than the test's own requests below.
    let accepted = 0;
    const count = (): void => void (accepted += 1);
    gw.app.server.on("connection", count);
    const natsClientsBefore = natsConnections();
    // The log does count connections: the fixture's own ones were seen.
    expect(natsClientsBefore).toBeGreaterThan(0);
    try {
      const sub = `evt.${tenant}.workflow.n1`;
      const start = await http("POST", "/v1/workflows/reach/runs", admin, { runId: "n1" });
      expect(start.status, JSON.stringify(start.json)).toBe(201);
      const startedWith = accepted;
      // Wait on the run stream through NATS, not HTTP, so the gateway's connection count is the step's alone.
      const deadline = Date.now() + 30_000;
      let events = await store.read(sub);
      while (!events.some((e) => e.type === "RunSucceeded" || e.type === "RunFailed") && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        events = await store.read(sub);
      }
      const end = events.find((e) => e.type === "RunSucceeded" || e.type === "RunFailed");
      expect(end?.type, JSON.stringify(events.map((e) => [e.type, e.data]))).toBe("RunSucceeded");
      expect((end!.data as { result: unknown }).result).toEqual({ gateway: "closed", nats: "closed" });
      expect(accepted).toBe(startedWith);
      expect(natsConnections()).toBe(natsClientsBefore);
    } finally {
      gw.app.server.off("connection", count);
    }
  });
});

describe("run streams belong to the runner", () => {
  it("a writer's POST /v1/streams/{workflow,plugin,metrics}/<id> is 403 FLEX_CATEGORY_RESERVED and appends nothing", async () => {
    const writer = await token(T, ["writer", "admin"]);
    for (const category of ["workflow", "plugin", "metrics"]) {
      const forged = { type: "RunStarted", data: { workflow: "x", version: 1, definition: { name: "x", steps: [trustedMarkerStep()] } } };
      const r = await http("POST", `/v1/streams/${category}/w1`, writer, forged);
      expect(r.status, category).toBe(403);
      expect(r.json.error.code).toBe("FLEX_CATEGORY_RESERVED");
      expect(await store.read(eventSubject(T, category, "w1"))).toEqual([]);
    }
    // An ordinary category still works (the refusal is not a broken route).
    expect((await http("POST", "/v1/streams/sensor/w1", writer, { type: "X", data: {} })).status).toBe(201);
  });

  it("POST /v1/events rejects reserved-category events with the code, stores the others", async () => {
    const writer = await token(T, ["writer"]);
    const r = await http("POST", "/v1/events", writer, [
      { category: "workflow", stream: "b1", type: "RunStarted", data: { workflow: "x", version: 1 } },
      { category: "sensor", stream: "b1", type: "X", data: {} },
      { category: "plugin", stream: "b1", type: "PluginStarted", data: {} },
    ]);
    expect(r.status).toBe(200);
    expect(r.json.accepted).toBe(1);
    expect(r.json.results.map((x: { error?: { code: string } }) => x.error?.code ?? "ok")).toEqual(["FLEX_CATEGORY_RESERVED", "ok", "FLEX_CATEGORY_RESERVED"]);
    expect(await store.read(eventSubject(T, "workflow", "b1"))).toEqual([]);
    expect(await store.read(eventSubject(T, "plugin", "b1"))).toEqual([]);
  });

  it("a RunStarted forged on NATS can at most start the tenant's stored definition by name and version; its definition, tenant and a later RunStarted are ignored", async () => {
    const tenant = uniqueName("victim");
    const admin = await token(tenant, ["admin", "writer"]);
    const put = await http("POST", "/v1/workflows", admin, { name: "benign", steps: [{ id: "b", kind: "script", language: "javascript", source: "function main(a) { return { got: a.x, secret: process.env.FLEX_TEST_HOST_SECRET ?? null }; }" }] });
    expect(put.status).toBe(201);
    const subject = eventSubject(tenant, "workflow", "forged1");
    // Standing in for a tenant publishing to NATS directly: the definition, the tenant and a
    // second RunStarted try to decide what runs.
    await store.append(subject, [
      { type: "RunStarted", data: { runId: "forged1", workflow: "benign", version: 1, tenant: "operator-demo", trigger: "manual", triggerInfo: { kind: "manual" }, input: { x: 1 }, definition: { name: "benign", triggers: [], steps: [{ ...trustedMarkerStep(), needs: [], retry: { maxAttempts: 1, backoffMs: 0, factor: 1, maxBackoffMs: 0 }, continueOnError: false, network: false, env: {} }] } } },
      { type: "RunStarted", data: { runId: "forged1", workflow: "ops", version: 1, input: { x: 666 } } },
    ]);
    // Starting that run id through the API finds the run stored and gets it driven.
    const again = await http("POST", "/v1/workflows/benign/runs", admin, { runId: "forged1" });
    expect(again.status).toBe(200);
    expect(again.json.created).toBe(false);
    const run = await waitForRun(tenant, "forged1", admin);
    expect(run.status).toBe("succeeded");
    expect(run.workflow).toBe("benign");
    expect(run.tenant).toBe(tenant);
    expect(run.output).toEqual({ got: 1, secret: null });
    expect(existsSync(marker)).toBe(false);
  });

  it("a RunStarted naming a missing workflow fails once with FLEX_WORKFLOW_DEFINITION_UNAVAILABLE; the runner does not loop", async () => {
    const tenant = uniqueName("ghost");
    const reader = await token(tenant, ["reader"]);
    await store.append(eventSubject(tenant, "workflow", "g1"), [{ type: "RunStarted", data: { runId: "g1", workflow: "nope", version: 3, input: null } }]);
    // A stale index entry (or one written by a start retried) points a runner at it.
    await workflowsKv.put(runIndexKey(tenant, "g1"), new TextEncoder().encode(JSON.stringify({ workflow: "nope", version: 3 })));
    const run = await waitForRun(tenant, "g1", reader);
    expect(run.status).toBe("failed");
    expect(run.error.code).toBe("FLEX_WORKFLOW_DEFINITION_UNAVAILABLE");
    // Several rescans later: still one RunFailed, one log line, and the index entry is gone.
    await new Promise((r) => setTimeout(r, 1_500));
    const events = await store.read(eventSubject(tenant, "workflow", "g1"));
    expect(events.map((e) => e.type)).toEqual(["RunStarted", "RunFailed"]);
    expect(logs.filter((l) => l.includes(`${tenant}/g1`))).toHaveLength(1);
    expect((await workflowsKv.get(runIndexKey(tenant, "g1")))?.operation ?? "DEL").not.toBe("PUT");
  });
});

describe("names with +, :, / and non-ASCII letters work end to end", () => {
  for (const [tenant, workflow, runId, username] of [
    ["acme+eu", "flow:1/x", "run:1/a", "bob.eu@acme"],
    ["café", "工作流", "运行:1", "zoe_1"],
  ] as const) {
    it(`tenant ${tenant}, workflow ${workflow}, run ${runId}, user ${username}`, async () => {
      const root = await token(tenant, ["admin", "writer", "reader"]);
      const def = {
        name: workflow,
        steps: [
          { id: "score", kind: "processor", processor: "anomaly", options: { emit: "all", min_points: 2 }, input: { value: "${{ input.v }}" } },
          { id: "say", kind: "script", language: "bash", source: "read -r x; echo \"{\\\"in\\\": $x}\"", input: { wf: "${{ run.workflow }}", tenant: "${{ run.tenant }}" } },
        ],
      };
      const put = await http("POST", "/v1/workflows", root, def);
      expect(put.status, JSON.stringify(put.json)).toBe(201);
      const list = await http("GET", "/v1/workflows", root);
      expect(list.json.workflows.map((w: { name: string }) => w.name)).toEqual([workflow]);
      expect((await http("GET", `/v1/workflows/${encodeURIComponent(workflow)}`, root)).json.name).toBe(workflow);
      const start = await http("POST", `/v1/workflows/${encodeURIComponent(workflow)}/runs`, root, { runId, input: { v: 20 } });
      expect(start.status, JSON.stringify(start.json)).toBe(201);
      const run = await waitForRun(tenant, runId, root);
      expect(run.status, JSON.stringify(run)).toBe("succeeded");
      expect(run.output).toEqual({ in: { wf: workflow, tenant } });
      expect(run.steps.score.status).toBe("succeeded");
      // Users of the tenant: created by its admin, then signing in.
      const created = await http("POST", "/v1/users", root, { username, password: "correct horse battery", roles: ["reader"] });
      expect(created.status, JSON.stringify(created.json)).toBe(201);
      const users = await http("GET", "/v1/users", root);
      expect(users.json.users.map((u: { username: string }) => u.username)).toContain(username);
      const login = await http("POST", "/v1/auth/token", undefined, { tenant, username, password: "correct horse battery" });
      expect(login.status, JSON.stringify(login.json)).toBe(200);
      expect((await http("GET", `/v1/runs/${encodeURIComponent(runId)}`, login.json.access_token)).json.status).toBe("succeeded");
    });
  }
});
