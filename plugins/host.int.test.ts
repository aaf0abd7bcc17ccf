// The plugin host against real echo services on a real server: a tenant's plugin never gets
// another tenant's data (refused before any call), a disabled plugin gets no call, call
// timeouts and successes reach the supervisor's hung detection, steps carry the caller's tenant.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pino } from "pino";
import { startPluginTestNats } from "../test/plugin-nats.js";
import type { PluginTestNats } from "../test/plugin-nats.js";
import { echoPlugin } from "./echo/plugin.js";
import { PluginRejectedError, PluginTimeoutError, PluginUnavailableError } from "./errors.js";
import type { ResolvedPlugins } from "./host-config.js";
import { createPluginHost } from "./host.js";
import { parseManifest } from "./manifest.js";
import type { PluginManifest } from "./manifest.js";
import { serve } from "./sdk.js";
import type { ServedPlugin } from "./sdk.js";
import type { PluginSupervisor } from "./supervisor.js";

const quiet = pino({ level: "silent" });
let nats: PluginTestNats;
const served: ServedPlugin[] = [];
const echoManifest = parseManifest(readFileSync(join(import.meta.dirname, "echo", "flexcore-plugin.yaml")));

function managed(name: string, tenant: string | undefined, callTimeoutMs = 5_000): ResolvedPlugins["managed"][number] {
  const manifest: PluginManifest = { ...echoManifest, name, limits: { ...echoManifest.limits, callTimeoutMs } };
  const entry = { name, managed: true as const, bundle: "/nowhere", allowUnsigned: false, instances: 1, config: {}, enabled: true, tenant };
  return { entry, manifest, installed: { manifest } as never, spec: { name, version: "1.0.0", command: ["node", "main.js"], bundleDir: "/nowhere" } };
}

/** Records what the host reports (the supervisor's hung detection is tested in supervisor.int.test.ts). */
function recordingSupervisor(): PluginSupervisor & { timeouts: string[]; oks: string[] } {
  const timeouts: string[] = [];
  const oks: string[] = [];
  return {
    timeouts,
    oks,
    reportCallTimeout: (n: string) => void timeouts.push(n),
    reportCallOk: (n: string) => void oks.push(n),
    status: ((n?: string) => (n === undefined ? [] : { name: n, state: "running", leaseHeld: true, instances: [], starts: 1, failures: 0, lastError: undefined })) as PluginSupervisor["status"],
    restart: () => undefined,
    setEnabled: async () => undefined,
    spec: () => { throw new Error("not used"); },
    upgrade: async () => { throw new Error("not used"); },
    follow: () => [],
    ready: async () => undefined,
    stop: async () => undefined,
    [Symbol.asyncDispose]: async () => undefined,
  };
}

beforeAll(async () => {
  nats = await startPluginTestNats({ plugins: ["echo", "acme-echo", "echo-hang"] });
  for (const [service, config] of [["echo", {}], ["acme-echo", {}], ["echo-hang", { hang: true }]] as const) {
    served.push(await serve(echoPlugin(), { env: nats.pluginEnv(service, { FLEXCORE_PLUGIN_CONFIG: JSON.stringify(config) }), handleSignals: false, logger: quiet, exit: (code) => { throw new Error(`exit ${code}`); } }));
  }
});
afterAll(async () => {
  for (const s of served) {
    await Promise.race([s.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 300))]);
    if (!s.nc.isClosed()) await s.nc.close();
  }
  await nats?.close();
});

const input = (tenant: string, i: number) => ({ seq: i, subject: `evt.${tenant}.x.k`, key: "k", id: `e${i}`, type: "T", time: new Date(0).toISOString(), data: { i } });

describe("plugin host", () => {
  it("sends a tenant's plugin only that tenant's data, and nothing at all to a disabled plugin", async () => {
    const supervisor = recordingSupervisor();
    const host = createPluginHost({ nc: nats.nc, plugins: { managed: [managed("echo", undefined), managed("acme-echo", "acme")], external: [] }, supervisor });
    expect(host.has("acme-echo/echo")).toBe(true);
    expect(host.has("acme-echo/shout")).toBe(false);
    expect(host.hasPlugin("acme-echo", "acme")).toBe(true);
    expect(host.hasPlugin("acme-echo", "globex")).toBe(false);
    expect(host.hasPlugin("echo", "globex")).toBe(true);
    const ok = await host.process({ processor: "p", kind: "acme-echo/echo", options: {}, tenant: "acme", states: { k: null }, inputs: [input("acme", 1)] });
    expect(ok.outputs).toHaveLength(1);
    const statsBefore = served[1]!.service.stats().endpoints.reduce((n, e) => n + e.num_requests, 0);
    const refused = await host.process({ processor: "p", kind: "acme-echo/echo", options: {}, tenant: "globex", states: { k: null }, inputs: [input("globex", 2)] }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(PluginRejectedError);
    expect((refused as PluginRejectedError).status).toBe(403);
    expect(host.isPermanent(refused)).toBe(true);
    await expect(host.callStep("acme-echo", "echo", { tenant: "globex", input: 1, run: { id: "r", workflow: "w", attempt: 1 } })).rejects.toBeInstanceOf(PluginRejectedError);
    // Nothing reached the plugin.
    expect(served[1]!.service.stats().endpoints.reduce((n, e) => n + e.num_requests, 0)).toBe(statsBefore);
    host.setEnabled("echo", false);
    const off = await host.process({ processor: "p", kind: "echo/echo", options: {}, tenant: "acme", states: { k: null }, inputs: [input("acme", 3)] }).catch((e: unknown) => e);
    expect(off).toBeInstanceOf(PluginUnavailableError);
    expect(host.isPermanent(off)).toBe(false);
    host.setEnabled("echo", true);
    const step = await host.callStep("echo", "echo", { tenant: "acme", input: { hi: 1 }, run: { id: "r", workflow: "w", attempt: 1 } });
    expect(step.output).toEqual({ hi: 1 });
    const m = host.metrics().find((x) => x.plugin === "acme-echo")!;
    expect(m.calls).toBe(1);
    expect(m.errors).toEqual({ FLEX_PLUGIN_REJECTED: 2 });
  });

  it("reports call timeouts and successes to the supervisor, and times a step out at its own timeout", async () => {
    const supervisor = recordingSupervisor();
    const host = createPluginHost({ nc: nats.nc, plugins: { managed: [managed("echo-hang", undefined, 200), managed("echo", undefined)], external: [] }, supervisor });
    for (let i = 0; i < 2; i++) {
      const err = await host.process({ processor: "p", kind: "echo-hang/echo", options: {}, tenant: "acme", states: { k: null }, inputs: [input("acme", i)] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PluginTimeoutError);
      expect(host.isPermanent(err)).toBe(false);
    }
    expect(supervisor.timeouts).toEqual(["echo-hang", "echo-hang"]);
    await host.process({ processor: "p", kind: "echo/echo", options: {}, tenant: "acme", states: { k: null }, inputs: [input("acme", 9)] });
    expect(supervisor.oks).toEqual(["echo"]);
    const started = performance.now();
    await expect(host.callStep("echo-hang", "echo", { tenant: "acme", input: 1, run: { id: "r", workflow: "w", attempt: 1 } }, { timeoutMs: 100 })).rejects.toBeInstanceOf(PluginTimeoutError);
    expect(performance.now() - started).toBeLessThan(1_000);
  });
});
