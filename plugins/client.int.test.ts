import { jetstreamManager } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPluginTestNats } from "../test/plugin-nats.js";
import type { PluginTestNats } from "../test/plugin-nats.js";
// The plugin side (discovery, PING/INFO/STATS, each call kind, 4xx/5xx, bad replies, the
// in-flight bound, SIGTERM drain, exit 78, fault switches) is in conformance.int.test.ts,
// run against the TypeScript and the Python echo alike. Here: the host client's own duties.
import { createPluginClient } from "./client.js";
import { echoPlugin } from "./echo/plugin.js";
import { PluginTimeoutError, PluginUnavailableError } from "./errors.js";
import type { ProcessorRequest } from "./protocol.js";
import { serve } from "./sdk.js";
import type { Plugin, ServedPlugin } from "./sdk.js";
import { pino } from "pino";

const quiet = pino({ level: "silent" });
const RUN = { id: "r1", workflow: "w", attempt: 1 };

let nats: PluginTestNats;
const served: ServedPlugin[] = [];

async function serveAs(service: string, plugin: Plugin, more: Record<string, string> = {}): Promise<ServedPlugin> {
  const env = nats.pluginEnv(service, more);
  const s = await serve(plugin, { env, handleSignals: false, logger: quiet, exit: (code) => { throw new Error(`plugin ${service} would exit ${code}`); } });
  served.push(s);
  return s;
}

beforeAll(async () => {
  nats = await startPluginTestNats({ plugins: ["echo", "echo-hang", "echo-no"] });
});

afterAll(async () => {
  // A hung handler never finishes, so its drain would not either: give each a moment, then close.
  for (const s of served) {
    await Promise.race([s.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 500))]);
    if (!s.nc.isClosed()) await s.nc.close();
  }
  await nats?.close();
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

  it("maps no instance to FLEX_PLUGIN_UNAVAILABLE", async () => {
    const err = await createPluginClient(nats.nc, "echo-no").callStep("echo", { tenant: "t", input: 1, run: RUN }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginUnavailableError);
    expect((err as PluginUnavailableError).code).toBe("FLEX_PLUGIN_UNAVAILABLE");
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
