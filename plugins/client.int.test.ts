import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { jetstreamManager } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPluginTestNats } from "../test/plugin-nats.js";
import type { PluginTestNats } from "../test/plugin-nats.js";
import { createPluginClient, discoverPlugins, pingPlugin, pluginStats } from "./client.js";
import { echoPluginCommand } from "./echo/launch.js";
import { echoPlugin } from "./echo/plugin.js";
import { PluginBadReplyError, PluginFailedError, PluginInputError, PluginRejectedError, PluginTimeoutError, PluginUnavailableError } from "./errors.js";
import { RESPONSE_TYPES } from "./protocol.js";
import type { ProcessorRequest } from "./protocol.js";
import { definePlugin, serve } from "./sdk.js";
import type { Plugin, ServedPlugin } from "./sdk.js";
import { pino } from "pino";

const quiet = pino({ level: "silent" });
const RUN = { id: "r1", workflow: "w", attempt: 1 };

let nats: PluginTestNats;
const served: ServedPlugin[] = [];
const children: ChildProcess[] = [];

async function serveAs(service: string, plugin: Plugin, more: Record<string, string> = {}): Promise<ServedPlugin & { nonce: string }> {
  const env = nats.pluginEnv(service, more);
  const s = await serve(plugin, { env, handleSignals: false, logger: quiet, exit: (code) => { throw new Error(`plugin ${service} would exit ${code}`); } });
  served.push(s);
  return Object.assign(s, { nonce: env.FLEXCORE_PLUGIN_NONCE! });
}

const failing = definePlugin({
  version: "1.0.0",
  description: "throws",
  protocols: [1],
  steps: {
    boom: { run: () => { throw new Error("database on fire"); } },
    bad: { run: () => { throw new PluginInputError("field `x` must be a number"); } },
  },
});

beforeAll(async () => {
  nats = await startPluginTestNats({ plugins: ["echo", "echo-hang", "echo-bad", "echo-big", "echo-no", "failing", "echo-kid", "echo-old", "slow"] });
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  // A hung handler never finishes, so its drain would not either: give each a moment, then close.
  for (const s of served) {
    await Promise.race([s.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 500))]);
    if (!s.nc.isClosed()) await s.nc.close();
  }
  await nats?.close();
});

describe("services protocol", () => {
  it("answers PING, INFO and STATS on all three subject forms with the micro v1 shapes", async () => {
    const s = await serveAs("echo", echoPlugin());
    const client = createPluginClient(nats.nc, "echo");
    await client.callStep("echo", { tenant: "acme", input: { a: 1 }, run: RUN });
    for (const verb of ["PING", "INFO", "STATS"] as const) {
      for (const subject of [`$SRV.${verb}`, `$SRV.${verb}.echo`, `$SRV.${verb}.echo.${s.service.id}`]) {
        const replies = await nats.nc.requestMany(subject, "", { strategy: "timer", maxWait: 300 });
        const mine = [];
        for await (const m of replies) {
          const body = m.json<{ id: string; type: string }>();
          if (body.id === s.service.id) mine.push(body);
        }
        expect(mine, subject).toHaveLength(1);
        expect(mine[0]!.type).toBe(RESPONSE_TYPES[verb]);
      }
    }
    const info = (await discoverPlugins(nats.nc, { name: "echo", nonce: s.nonce }))[0]!;
    expect(info).toMatchObject({ name: "echo", version: "1.0.0", metadata: { "flexcore.protocol": "1", "flexcore.nonce": s.nonce } });
    expect(info.endpoints.map((e) => [e.name, e.subject, e.queue_group]).sort()).toEqual([
      ["processor-echo", "flexplugin.echo.processor.echo", "q"],
      ["sink-echo", "flexplugin.echo.sink.echo", "q"],
      ["source-echo", "flexplugin.echo.source.echo", "q"],
      ["step-echo", "flexplugin.echo.step.echo", "q"],
    ]);
    const ping = await pingPlugin(nats.nc, "echo", { id: s.service.id });
    expect(ping).toMatchObject({ type: RESPONSE_TYPES.PING, name: "echo", id: s.service.id });
    const stats = await pluginStats(nats.nc, "echo", { id: s.service.id });
    const step = stats.endpoints.find((e) => e.name === "step-echo")!;
    expect(step).toMatchObject({ num_requests: 1, num_errors: 0, last_error: "", queue_group: "q" });
    expect(step.processing_time).toBeGreaterThan(0);
    expect(step.average_processing_time).toBe(step.processing_time);
    expect(Number.isNaN(Date.parse(stats.started))).toBe(false);
  });

  it("discovery keeps only the instance with the launch nonce; an impostor of the same name is ignored", async () => {
    const real = await serveAs("echo-old", echoPlugin());
    const impostor = await serveAs("echo-old", echoPlugin());
    const all = await discoverPlugins(nats.nc, { name: "echo-old", timeoutMs: 300 });
    expect(all.map((i) => i.id).sort()).toEqual([real.service.id, impostor.service.id].sort());
    const kept = await discoverPlugins(nats.nc, { name: "echo-old", nonce: real.nonce, timeoutMs: 300 });
    expect(kept.map((i) => i.id)).toEqual([real.service.id]);
    expect(await discoverPlugins(nats.nc, { name: "echo-old", nonce: "wrong", timeoutMs: 300 })).toEqual([]);
    expect(await discoverPlugins(nats.nc, { name: "nobody-here", timeoutMs: 200 })).toEqual([]);
  });

  it("runs the echo processor: one Echoed per input, state counts per key", async () => {
    const client = createPluginClient(nats.nc, "echo");
    const reply = await client.callProcessor("echo", {
      tenant: "acme",
      options: {},
      states: { a: { count: 5 }, b: null },
      inputs: [
        { seq: 1, subject: "evt.acme.x.a", key: "a", id: "1", type: "T", time: "2026-01-01T00:00:00Z", data: { v: 1 } },
        { seq: 2, subject: "evt.acme.x.b", key: "b", id: "2", type: "T", time: "2026-01-01T00:00:00Z", data: { v: 2 } },
        { seq: 3, subject: "evt.acme.x.a", key: "a", id: "3", type: "T", time: "2026-01-01T00:00:00Z", data: { v: 3 } },
      ],
    });
    expect(reply.states).toEqual({ a: { count: 7 }, b: { count: 1 } });
    expect(reply.outputs).toEqual([0, 1, 2].map((i) => ({ input: i, type: "Echoed", data: { v: [1, 2, 3][i] } })));
    expect(await client.callSink("echo", { tenant: "acme", options: {}, events: [] })).toEqual({ delivered: 0 });
    expect(await client.callSource("echo", { tenant: "acme", options: {}, cursor: "10", max: 2 })).toEqual({
      records: [
        { id: "echo-11", key: "echo", type: "Number", data: { n: 11 } },
        { id: "echo-12", key: "echo", type: "Number", data: { n: 12 } },
      ],
      cursor: "12",
    });
  });
});

describe("call errors", () => {
  it("maps a hung plugin to FLEX_PLUGIN_TIMEOUT", async () => {
    await serveAs("echo-hang", echoPlugin(), { FLEXCORE_PLUGIN_CONFIG: JSON.stringify({ hang: true }) });
    const err = await createPluginClient(nats.nc, "echo-hang", { callTimeoutMs: 300 }).callStep("echo", { tenant: "t", input: 1, run: RUN }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginTimeoutError);
    expect((err as PluginTimeoutError).code).toBe("FLEX_PLUGIN_TIMEOUT");
    expect((err as PluginTimeoutError).retryable).toBe(true);
    const stopped = await createPluginClient(nats.nc, "echo-hang", { callTimeoutMs: 60_000 }).callStep("echo", { tenant: "t", input: 1, run: RUN }, AbortSignal.timeout(50)).catch((e: unknown) => e);
    expect((stopped as Error).name).toBe("TimeoutError");
    expect(stopped).not.toBeInstanceOf(PluginTimeoutError);
  });

  it("bounds the calls in flight to FLEXCORE_PLUGIN_CONCURRENCY; the others wait and are answered", async () => {
    let now = 0;
    let most = 0;
    const slow = definePlugin({
      version: "1.0.0",
      description: "counts",
      protocols: [1],
      steps: {
        slow: {
          async run(req) {
            now += 1;
            most = Math.max(most, now);
            await new Promise((r) => setTimeout(r, 30));
            now -= 1;
            return { output: req.input };
          },
        },
      },
    });
    await serveAs("slow", slow, { FLEXCORE_PLUGIN_CONCURRENCY: "2" });
    const client = createPluginClient(nats.nc, "slow");
    const outs = await Promise.all(Array.from({ length: 10 }, (_, i) => client.callStep("slow", { tenant: "t", input: i, run: RUN })));
    expect(outs.map((o) => o.output)).toEqual(Array.from({ length: 10 }, (_, i) => i));
    expect(most).toBe(2);
  });

  it("maps no instance to FLEX_PLUGIN_UNAVAILABLE", async () => {
    const err = await createPluginClient(nats.nc, "echo-no").callStep("echo", { tenant: "t", input: 1, run: RUN }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginUnavailableError);
    expect((err as PluginUnavailableError).code).toBe("FLEX_PLUGIN_UNAVAILABLE");
  });

  it("maps PluginInputError to 400 → FLEX_PLUGIN_REJECTED and any other throw to 500 → FLEX_PLUGIN_FAILED", async () => {
    const s = await serveAs("failing", failing);
    const client = createPluginClient(nats.nc, "failing");
    const rejected = await client.callStep("bad", { tenant: "t", input: 1, run: RUN }).catch((e: unknown) => e);
    expect(rejected).toBeInstanceOf(PluginRejectedError);
    expect(rejected).toMatchObject({ code: "FLEX_PLUGIN_REJECTED", status: 400, reason: "field `x` must be a number", retryable: false });
    const failed = await client.callStep("boom", { tenant: "t", input: 1, run: RUN }).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(PluginFailedError);
    expect(failed).toMatchObject({ code: "FLEX_PLUGIN_FAILED", status: 500, reason: "database on fire", retryable: true });
    const stats = s.service.stats().endpoints.find((e) => e.name === "step-boom")!;
    expect(stats).toMatchObject({ num_requests: 1, num_errors: 1, last_error: "500:database on fire" });
  });

  it("a request with the wrong protocol is refused with 400", async () => {
    const msg = await nats.nc.request("flexplugin.echo.step.echo", JSON.stringify({ protocol: 2, tenant: "t", step: "echo", input: 1, run: RUN }));
    expect(msg.headers?.get("Nats-Service-Error-Code")).toBe("400");
  });

  it("maps a malformed reply to FLEX_PLUGIN_BAD_REPLY", async () => {
    await serveAs("echo-bad", echoPlugin(), { FLEXCORE_PLUGIN_CONFIG: JSON.stringify({ malformed: true }) });
    const err = await createPluginClient(nats.nc, "echo-bad").callStep("echo", { tenant: "t", input: 1, run: RUN }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginBadReplyError);
    expect((err as PluginBadReplyError).message).toMatch(/expected JSON/);
  });

  it("maps an oversized reply to FLEX_PLUGIN_BAD_REPLY", async () => {
    await serveAs("echo-big", echoPlugin(), { FLEXCORE_PLUGIN_CONFIG: JSON.stringify({ oversized: true, oversizedBytes: 100_000 }) });
    const err = await createPluginClient(nats.nc, "echo-big", { maxReplyBytes: 65_536 }).callStep("echo", { tenant: "t", input: 1, run: RUN }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginBadReplyError);
    expect((err as PluginBadReplyError).message).toMatch(/at most 65536 bytes, got 1000\d\d bytes/);
  });
});

describe("plugin credentials", () => {
  it("cannot publish evt.> nor reach the JetStream API; the host's own publish shows the probe works", async () => {
    const seen: string[] = [];
    const spy = nats.nc.subscribe(">", { callback: (_e, m) => { if (m.subject.startsWith("evt.") || m.subject.startsWith("$JS.API")) seen.push(m.subject); } });
    await nats.nc.flush();
    const pnc = await nats.connectAsPlugin("echo");
    pnc.publish("evt.acme.orders.o1", "{}");
    pnc.publish("$JS.API.STREAM.DELETE.FLEX_EVENTS", "");
    await pnc.flush();
    await expect(jetstreamManager(pnc, { timeout: 1000 }).then((m) => m.streams.list().next())).rejects.toThrow();
    await new Promise((r) => setTimeout(r, 200));
    expect(seen).toEqual([]);
    nats.nc.publish("evt.acme.orders.control", "{}");
    await nats.nc.flush();
    await new Promise((r) => setTimeout(r, 100));
    expect(seen).toEqual(["evt.acme.orders.control"]);
    spy.unsubscribe();
  });

  it("cannot serve another plugin's subjects", async () => {
    const pnc = await nats.connectAsPlugin("echo");
    const sub = pnc.subscribe("flexplugin.failing.>");
    const closed = await Promise.race([sub.closed.then(() => "closed", (e: unknown) => String(e)), new Promise((r) => setTimeout(() => r("open"), 1000))]);
    expect(closed).not.toBe("open");
  });
});

describe("batch over max payload", () => {
  it("splits a processor batch by key, keeps each key whole, merges states and outputs in input order", async () => {
    await using small = await startPluginTestNats({ plugins: ["echo"], extraConfig: "max_payload: 8192" });
    const env = small.pluginEnv("echo");
    const s = await serve(echoPlugin(), { env, handleSignals: false, logger: quiet, exit: () => undefined });
    try {
      const keys = Array.from({ length: 60 }, (_, i) => `k${(i * 7) % 9}`);
      const request: Omit<ProcessorRequest, "protocol" | "kind"> = {
        tenant: "acme",
        options: {},
        states: Object.fromEntries([...new Set(keys)].map((k) => [k, { count: 100 }])),
        inputs: keys.map((key, i) => ({ seq: i + 1, subject: `evt.acme.x.${key}`, key, id: `e${i}`, type: "T", time: "2026-01-01T00:00:00Z", data: { i, pad: "p".repeat(400) } })),
      };
      expect(Buffer.byteLength(JSON.stringify(request))).toBeGreaterThan(8192);
      const reply = await createPluginClient(small.nc, "echo").callProcessor("echo", request);
      expect(reply.outputs.map((o) => o.input)).toEqual(keys.map((_, i) => i));
      expect(reply.outputs.map((o) => (o.data as { i: number }).i)).toEqual(keys.map((_, i) => i));
      const expected = Object.fromEntries([...new Set(keys)].map((k) => [k, { count: 100 + keys.filter((x) => x === k).length }]));
      expect(reply.states).toEqual(expected);
      const calls = s.service.stats().endpoints.find((e) => e.name === "processor-echo")!.num_requests;
      expect(calls).toBeGreaterThan(3);
      const tooBig = await createPluginClient(small.nc, "echo").callProcessor("echo", { ...request, inputs: request.inputs.map((i) => ({ ...i, key: "one" })), states: { one: null } }).catch((e: unknown) => e);
      expect(tooBig).toMatchObject({ code: "FLEX_PLUGIN_REJECTED", status: 413 });
    } finally {
      await s.stop();
    }
  });
});

function startEcho(service: string, more: Record<string, string> = {}): { child: ChildProcess; nonce: string; stderr: () => string; exit: Promise<number | null> } {
  const env = nats.pluginEnv(service, more);
  const { command, args } = echoPluginCommand();
  const child = spawn(command, [...args], { env: { PATH: process.env.PATH ?? "", ...env }, stdio: ["ignore", "ignore", "pipe"] });
  children.push(child);
  let err = "";
  child.stderr!.on("data", (d: Buffer) => { err += d.toString(); });
  const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, nonce: env.FLEXCORE_PLUGIN_NONCE!, stderr: () => err, exit };
}

async function ready(service: string, nonce: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if ((await discoverPlugins(nats.nc, { name: service, nonce, timeoutMs: 200, limit: 1 })).length) return;
  }
  throw new Error(`${service} not ready`);
}

describe("the echo plugin as a child process", () => {
  it("drains on SIGTERM: the call in flight completes, then it exits 0", async () => {
    const echo = startEcho("echo-kid", { FLEXCORE_PLUGIN_CONFIG: JSON.stringify({ delayMs: 1500 }) });
    await ready("echo-kid", echo.nonce);
    const client = createPluginClient(nats.nc, "echo-kid", { callTimeoutMs: 5000 });
    const call = client.callStep("echo", { tenant: "t", input: { in: "flight" }, run: RUN });
    await new Promise((r) => setTimeout(r, 300));
    echo.child.kill("SIGTERM");
    await expect(call).resolves.toEqual({ output: { in: "flight" } });
    expect(await echo.exit).toBe(0);
    expect(echo.stderr()).toMatch(/"msg":"draining"/);
  });

  it("fault switches: ignoreSigterm keeps it running, stdoutSpam only writes stdout, crashAfter exits 1", async () => {
    const env = nats.pluginEnv("echo-kid", { FLEXCORE_PLUGIN_CONFIG: JSON.stringify({ crashAfter: 2, ignoreSigterm: true, stdoutSpam: 3 }) });
    const { command, args } = echoPluginCommand();
    const child = spawn(command, [...args], { env: { PATH: process.env.PATH ?? "", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    let out = 0;
    child.stdout!.on("data", (d: Buffer) => { out += d.length; });
    child.stderr!.resume();
    const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    await ready("echo-kid", env.FLEXCORE_PLUGIN_NONCE!);
    const client = createPluginClient(nats.nc, "echo-kid", { callTimeoutMs: 1000 });
    child.kill("SIGTERM");
    await expect(client.callStep("echo", { tenant: "t", input: 1, run: RUN })).resolves.toEqual({ output: 1 });
    await expect(client.callStep("echo", { tenant: "t", input: 2, run: RUN })).resolves.toEqual({ output: 2 });
    expect(out).toBe(2 * 3 * 1024);
    const third = await client.callStep("echo", { tenant: "t", input: 3, run: RUN }).catch((e: unknown) => e);
    expect(["FLEX_PLUGIN_TIMEOUT", "FLEX_PLUGIN_UNAVAILABLE"]).toContain((third as { code?: string }).code);
    expect(await exit).toBe(1);
  });

  it("exits 78 with one stderr line when it shares no protocol with the host", async () => {
    const echo = startEcho("echo-kid", { FLEXCORE_PLUGIN_PROTOCOLS: "2,3" });
    expect(await echo.exit).toBe(78);
    const lines = echo.stderr().trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/no protocol version in common/);
    expect(await discoverPlugins(nats.nc, { name: "echo-kid", nonce: echo.nonce, timeoutMs: 200 })).toEqual([]);
  });
});
