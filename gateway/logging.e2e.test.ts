/**
 * The gateway's log and readiness, through the real gateway (port 0) on a real broker:
 * a 5xx is logged once with its request id (the one the client got back) and its cause
 * chain, while the client learns nothing of the cause; a failing `/readyz` check makes the
 * instance not ready.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { ensureTopology } from "../streams/index.js";
import { createGateway, ROLES } from "./index.js";
import type { Gateway, ReadModels } from "./index.js";

let nats: TestNats;
let dir: string;
let gw: Gateway;
let base: string;
let token: string;
const lines: Array<Record<string, any>> = []; // eslint-disable-line @typescript-eslint/no-explicit-any
const SECRET = `db-password-${uniqueName("s")}`;
let processorsRunning = true;

// A read model whose storage fails the way a driver does: a plain Error wrapping the cause.
const broken: ReadModels = {
  query() {
    throw new Error("read model storage failed", { cause: new Error(`connection refused (${SECRET})`) });
  },
  async waitFor() {},
  onChange: () => () => undefined,
};

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-gwlog-"));
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(l));
      done();
    },
  });
  gw = await createGateway({
    nc: nats.nc,
    dataDir: dir,
    port: 0,
    readModels: broken,
    metricsIntervalMs: 0,
    logger: pino({ level: "info" }, sink).child({ area: "gateway" }),
    readiness: { processors: () => ({ ok: processorsRunning, detail: { running: processorsRunning } }), workflows: () => Promise.reject(new Error("runner gone")) },
  });
  base = await gw.listen();
  token = (await gw.issuer!.issueAccess({ tenant: uniqueName("t"), subject: "u", roles: [...ROLES] })).token;
});

afterAll(async () => {
  await gw?.close();
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("gateway log", () => {
  it("a 5xx is logged at error level with the request id the client got and the cause chain; the client sees neither", async () => {
    const res = await fetch(`${base}/v1/projections/readings`, { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(500);
    const requestId = res.headers.get("request-id");
    expect(requestId).toMatch(/^[0-9a-f-]{36}$/u);
    const body = await res.text();
    expect(body).not.toContain(SECRET);
    expect(JSON.parse(body)).toEqual({ error: { code: "FLEX_INTERNAL", message: "Internal error; see the gateway log", details: null } });
    const logged = lines.filter((l) => l.reqId === requestId);
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ level: 50, area: "gateway", msg: "request failed", status: 500, code: "FLEX_INTERNAL", method: "GET", route: "/v1/projections/:name" });
    // pino's error serializer follows `cause`: in the message and in the stack.
    expect(logged[0]!.err.message).toBe(`read model storage failed: connection refused (${SECRET})`);
    expect(logged[0]!.err.stack).toContain(`caused by: Error: connection refused (${SECRET})`);
    // The token never reaches the log.
    expect(JSON.stringify(lines)).not.toContain(token);
  });

  it("a 4xx is not logged, and successful requests are not either", async () => {
    const before = lines.length;
    expect((await fetch(`${base}/v1/projections/readings`)).status).toBe(401);
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect(lines.length).toBe(before);
  });
});

describe("readiness", () => {
  it("/readyz fails with the name of a failing check, and a check that throws fails too", async () => {
    processorsRunning = true;
    let res = await fetch(`${base}/readyz`);
    let body = (await res.json()) as { error: { code: string; message: string; details: { checks: Record<string, { ok: boolean; detail?: unknown }> } } };
    expect(res.status).toBe(503);
    expect(body.error.code).toBe("FLEX_NOT_READY");
    expect(body.error.details.checks.processors).toEqual({ ok: true, detail: { running: true } });
    expect(body.error.details.checks.workflows).toEqual({ ok: false, detail: "runner gone" });
    processorsRunning = false;
    res = await fetch(`${base}/readyz`);
    body = (await res.json()) as typeof body;
    expect(body.error.message).toBe("Not ready: processors, workflows");
  });
});
