// The http-sink plugin as a child process on a real nats-server, delivering to a real local
// HTTP server (node:http on port 0) that checks signatures and counts by idempotency key.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { startPluginProcess } from "../../test/plugin-process.js";
import type { PluginProcess } from "../../test/plugin-process.js";
import { startPluginTestNats } from "../../test/plugin-nats.js";
import type { PluginTestNats } from "../../test/plugin-nats.js";
import { createPluginClient, PluginFailedError, PluginRejectedError } from "../index.js";
import type { PluginClient, SinkEvent } from "../index.js";
import { httpSinkPluginCommand } from "./launch.js";

const SECRET = "whsec-0123456789abcdef";
let nats: PluginTestNats;
let proc: PluginProcess;
let client: PluginClient;
let server: Server;
let base: string;

/** What the endpoint saw. */
const seen = { attempts: new Map<string, number>(), accepted: new Map<string, number>(), badSignatures: 0, bodies: [] as unknown[], redirected: 0 };
/** Per path: how the endpoint answers the nth attempt of a key. */
let failFirst = 2;
let refuse = new Set<string>();

function verify(body: Buffer, header: string | undefined): boolean {
  const expected = Buffer.from(`sha256=${createHmac("sha256", SECRET).update(body).digest("hex")}`);
  const got = Buffer.from(header ?? "");
  return got.length === expected.length && timingSafeEqual(got, expected);
}

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      if (req.url === "/target") {
        seen.redirected += 1;
        res.writeHead(200).end();
        return;
      }
      if (req.url === "/redirect") {
        res.writeHead(302, { location: `${base}/target` }).end();
        return;
      }
      if (req.url === "/hang") return; // never answers
      if (!verify(body, req.headers["x-flexcore-signature"] as string | undefined)) {
        seen.badSignatures += 1;
        res.writeHead(401).end("bad signature");
        return;
      }
      const key = String(req.headers["idempotency-key"]);
      const n = (seen.attempts.get(key) ?? 0) + 1;
      seen.attempts.set(key, n);
      if (refuse.has(key)) {
        res.writeHead(422).end("unprocessable");
        return;
      }
      if (n <= failFirst) {
        res.writeHead(503).end("try later");
        return;
      }
      // An idempotent receiver: a repeated key is acknowledged but counted once.
      if (!seen.accepted.has(key)) seen.bodies.push(JSON.parse(body.toString()));
      seen.accepted.set(key, (seen.accepted.get(key) ?? 0) + 1);
      res.writeHead(200).end("ok");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  nats = await startPluginTestNats({ plugins: ["http-sink"] });
  proc = await startPluginProcess(nats, "http-sink", httpSinkPluginCommand(), { FLEXCORE_PLUGIN_CONFIG: JSON.stringify({ secrets: { hook: SECRET } }) });
  client = createPluginClient(nats.nc, "http-sink", { callTimeoutMs: 20_000 });
}, 30_000);

afterAll(async () => {
  await proc?.kill();
  await nats?.close();
  server?.closeAllConnections();
  await new Promise((r) => server?.close(r));
});

beforeEach(() => {
  seen.attempts.clear();
  seen.accepted.clear();
  seen.bodies.length = 0;
  seen.badSignatures = 0;
  seen.redirected = 0;
  failFirst = 0;
  refuse = new Set();
});

let n = 0;
const events = (count: number): SinkEvent[] => Array.from({ length: count }, () => ({ seq: ++n, id: `evt-${n}`, subject: `evt.acme.orders.o${n}`, type: "OrderPlaced", time: "2026-01-01T00:00:00Z", data: { n } }));
const fast = { backoffMs: 5, maxBackoffMs: 20 };

describe("http-sink plugin: webhook", () => {
  it("retries 5xx with backoff and answers delivered only once the endpoint confirmed each event; signed, one delivery per idempotency key, in order", async () => {
    failFirst = 2;
    const batch = events(4);
    const reply = await client.callSink("webhook", { tenant: "acme", options: { url: `${base}/hook`, secretName: "hook", ...fast }, events: batch });
    expect(reply).toEqual({ delivered: 4 });
    expect(seen.badSignatures).toBe(0);
    expect([...seen.attempts.values()]).toEqual([3, 3, 3, 3]);
    expect([...seen.accepted.entries()]).toEqual(batch.map((e) => [e.id, 1]));
    expect(seen.bodies).toEqual(batch.map((e) => ({ id: e.id, tenant: "acme", subject: e.subject, type: e.type, time: e.time, seq: e.seq, data: e.data })));
    // The same batch again (a host retry): the receiver sees the same keys, so it can dedupe.
    await client.callSink("webhook", { tenant: "acme", options: { url: `${base}/hook`, secret: SECRET, ...fast }, events: batch });
    expect([...seen.accepted.keys()]).toEqual(batch.map((e) => e.id));
  });

  it("a wrong secret is refused by the endpoint (401): the call answers 400, nothing is accepted", async () => {
    const err = await client.callSink("webhook", { tenant: "acme", options: { url: `${base}/hook`, secret: "not-the-right-secret", ...fast }, events: events(2) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginRejectedError);
    expect((err as PluginRejectedError).status).toBe(400);
    expect(seen.badSignatures).toBe(1);
    expect(seen.accepted.size).toBe(0);
  });

  it("gives up on a 4xx: first event → 400 (dead letter); a later event → the ones before it are delivered", async () => {
    const [a, b, c] = events(3);
    refuse = new Set([a!.id]);
    const first = await client.callSink("webhook", { tenant: "acme", options: { url: `${base}/hook`, secret: SECRET, ...fast }, events: [a!, b!, c!] }).catch((e: unknown) => e);
    expect((first as PluginRejectedError).status).toBe(400);
    expect((first as Error).message).toMatch(/422/);
    expect(seen.attempts.get(a!.id)).toBe(1);
    refuse = new Set([c!.id]);
    await expect(client.callSink("webhook", { tenant: "acme", options: { url: `${base}/hook`, secret: SECRET, ...fast }, events: [b!, c!] })).resolves.toEqual({ delivered: 1 });
  });

  it("retries spent on timeouts or a closed port: 503 (the host retries later), nothing counted delivered", async () => {
    const t0 = Date.now();
    const hung = await client.callSink("webhook", { tenant: "acme", options: { url: `${base}/hang`, secret: SECRET, timeoutMs: 100, maxAttempts: 3, ...fast }, events: events(1) }).catch((e: unknown) => e);
    expect(hung).toBeInstanceOf(PluginFailedError);
    expect((hung as PluginFailedError).status).toBe(503);
    expect((hung as PluginFailedError).retryable).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const refused = await client.callSink("webhook", { tenant: "acme", options: { url: `http://127.0.0.1:${port}/`, secret: SECRET, maxAttempts: 2, ...fast }, events: events(1) }).catch((e: unknown) => e);
    expect((refused as PluginFailedError).status).toBe(503);
    expect((refused as Error).message).toMatch(/connection failed/);
  });

  it("does not follow redirects (the signed body never reaches another URL)", async () => {
    const err = await client.callSink("webhook", { tenant: "acme", options: { url: `${base}/redirect`, secret: SECRET, ...fast }, events: events(1) }).catch((e: unknown) => e);
    expect((err as PluginRejectedError).status).toBe(400);
    expect(seen.redirected).toBe(0);
  });

  it("bad options answer 400 naming the option, before any request", async () => {
    const err = await client.callSink("webhook", { tenant: "acme", options: { url: "file:///etc/passwd", secret: SECRET }, events: events(1) }).catch((e: unknown) => e);
    expect((err as PluginRejectedError).status).toBe(400);
    expect((err as Error).message).toMatch(/options\.url/);
    expect(seen.attempts.size).toBe(0);
  });
});
