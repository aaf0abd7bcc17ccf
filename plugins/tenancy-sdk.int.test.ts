// The SDKs' side of tenant instances: a plugin launched as `<name>_<tenant>` with
// FLEXCORE_PLUGIN_TENANT answers its tenant's calls and refuses another tenant's with 403
// (whoever sent it), for the TypeScript SDK (echo) and the Python one (echo-py); a
// FLEXCORE_PLUGIN_TENANT that is not the service name's tenant is a bad handshake (exit 78).
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ensureTopology } from "../streams/index.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPluginTestNats } from "../test/plugin-nats.js";
import type { PluginTestNats } from "../test/plugin-nats.js";
import { startPluginProcess } from "../test/plugin-process.js";
import type { PluginProcess } from "../test/plugin-process.js";
import { createPluginClient } from "./client.js";
import { startPluginEndpoints } from "./endpoints.js";
import { launchSpec } from "./host-config.js";
import { createPluginHost } from "./host.js";
import { parseManifest } from "./manifest.js";
import { echoPluginCommand } from "./echo/launch.js";
import { PluginRejectedError, PluginUnavailableError } from "./errors.js";
import { EXIT_PROTOCOL_MISMATCH } from "./protocol.js";
import { pythonSdkDir } from "./python-sdk.js";

const RUN = { id: "r1", workflow: "w", attempt: 1 };
const IMPLEMENTATIONS = [
  { label: "TypeScript echo", name: "echo", command: echoPluginCommand },
  { label: "Python echo-py", name: "echo-py", command: () => ({ command: "python3", args: ["-B", join(import.meta.dirname, "echo-py", "main.py")] }) },
] as const;

let nats: PluginTestNats;
const running: PluginProcess[] = [];

beforeAll(async () => {
  nats = await startPluginTestNats({ plugins: [...IMPLEMENTATIONS.flatMap((i) => [`${i.name}_acme`, `${i.name}_globex`]), "hecho_acme", "hecho_globex"] });
  await ensureTopology(nats.nc);
});

afterAll(async () => {
  for (const p of running) await p.kill();
  await nats?.close();
});

describe.each(IMPLEMENTATIONS)("$label as a tenant instance", (impl) => {
  it("answers its own tenant's calls and refuses another tenant's with 403, on every capability", async () => {
    const service = `${impl.name}_acme`;
    const p = await startPluginProcess(nats, service, impl.command(), { FLEXCORE_PLUGIN_TENANT: "acme" });
    running.push(p);
    const client = createPluginClient(nats.nc, service, { callTimeoutMs: 5_000 });
    expect(await client.callStep("echo", { tenant: "acme", input: { x: 1 }, run: RUN })).toEqual({ output: { x: 1 } });
    const calls: Array<[string, () => Promise<unknown>]> = [
      ["step", () => client.callStep("echo", { tenant: "globex", input: { x: 1 }, run: RUN })],
      ["processor", () => client.callProcessor("echo", { tenant: "globex", options: {}, states: {}, inputs: [{ seq: 1, subject: "evt.globex.o.k", key: "k", id: "1", type: "T", time: new Date().toISOString(), data: { secret: 1 } }] })],
      ["sink", () => client.callSink("echo", { tenant: "globex", options: {}, events: [] })],
      ["source", () => client.callSource("echo", { tenant: "globex", options: {}, cursor: null, max: 1 })],
    ];
    for (const [kind, call] of calls) {
      const err = await call().then(() => undefined, (e: unknown) => e);
      expect(err, kind).toBeInstanceOf(PluginRejectedError);
      expect((err as PluginRejectedError).status, kind).toBe(403);
      expect((err as PluginRejectedError).reason, kind).toMatch(/acme/u);
    }
    // A request with no tenant at all is another tenant's too.
    const raw = await nats.nc.request(`flexplugin.${service}.step.echo`, JSON.stringify({ protocol: 1, step: "echo", input: 1, run: RUN }), { timeout: 5_000 });
    expect(raw.headers?.get("Nats-Service-Error-Code")).toBe("403");
  }, 60_000);

  it("exits 78 when FLEXCORE_PLUGIN_TENANT is not the service name's tenant", async () => {
    const env = nats.pluginEnv(`${impl.name}_globex`, { FLEXCORE_PLUGIN_TENANT: "acme" });
    const { command, args } = impl.command();
    const child = spawn(command, [...args], { env: { PATH: process.env.PATH ?? "", PYTHONPATH: pythonSdkDir(), ...env }, stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr!.on("data", (d: Buffer) => void (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    expect(code).toBe(EXIT_PROTOCOL_MISMATCH);
    expect(err).toMatch(/FLEXCORE_PLUGIN_TENANT/u);
  }, 30_000);
});

describe("the host's other paths to a tenant plugin", () => {
  it("workflow steps, sinks and sources call the tenant's instance set, never the bare name nor another tenant's", async () => {
    // Only acme's set runs (the TypeScript echo as hecho_acme): a call reaching it for globex
    // would be a 403; a call to the bare name or to hecho_globex finds nobody.
    const p = await startPluginProcess(nats, "hecho_acme", echoPluginCommand(), { FLEXCORE_PLUGIN_TENANT: "acme" });
    running.push(p);
    const manifest = parseManifest((await readFile(join(import.meta.dirname, "echo", "flexcore-plugin.yaml"), "utf8")).replace(/^name: echo$/mu, "name: hecho").replace(/^tenancy: system$/mu, "tenancy: tenant"));
    const entry = { name: "hecho", managed: true as const, bundle: "/nonexistent", allowUnsigned: true, instances: 1, config: {}, enabled: true, tenant: undefined, tenants: ["acme", "globex"] };
    const plugins = { managed: [{ entry, manifest, installed: undefined as never, spec: launchSpec(manifest, "/nonexistent", entry), tenants: ["acme", "globex"] }], external: [] };
    const host = createPluginHost({ nc: nats.nc, plugins });
    // A workflow step: the run's tenant picks the set.
    expect(await host.callStep("hecho", "echo", { tenant: "acme", input: "hi", run: RUN })).toEqual({ output: "hi" });
    await expect(host.callStep("hecho", "echo", { tenant: "globex", input: "hi", run: RUN }, { timeoutMs: 500 })).rejects.toBeInstanceOf(PluginUnavailableError);
    await expect(host.callStep("hecho", "echo", { tenant: "initech", input: "hi", run: RUN })).rejects.toBeInstanceOf(PluginRejectedError);
    expect(host.hasPlugin("hecho", "initech")).toBe(false);
    // A source and a sink of acme's, and a source of globex's (whose set is not running).
    const endpoints = await startPluginEndpoints(nats.nc, {
      plugins,
      instanceId: "tenancy-test",
      sinks: [{ name: "out", kind: "hecho/echo", tenant: "acme", stream: "events", subjects: ["evt.acme.numbers.>"], options: {}, batchSize: 16 }],
      sources: [
        { name: "nums", kind: "hecho/echo", tenant: "acme", category: "numbers", options: {}, max: 5, intervalMs: 100 },
        { name: "nums", kind: "hecho/echo", tenant: "globex", category: "numbers", options: {}, max: 5, intervalMs: 100 },
      ],
    });
    try {
      const deadline = Date.now() + 20_000;
      const acme = () => endpoints.metrics().sources.find((x) => x.tenant === "acme")!;
      while ((acme().appended < 10 || endpoints.metrics().sinks[0]!.delivered < 10) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(acme().appended).toBeGreaterThanOrEqual(10);
      expect(endpoints.metrics().sinks[0]!.delivered).toBeGreaterThanOrEqual(10);
      expect(endpoints.metrics().sinks[0]!.deadLettered).toBe(0);
      const globex = endpoints.metrics().sources.find((x) => x.tenant === "globex")!;
      expect(globex.appended).toBe(0);
      expect(globex.failed).toBeGreaterThan(0);
    } finally {
      await endpoints.close();
    }
  }, 60_000);
});
