// The SDKs' side of tenant instances: a plugin launched as `<name>_<tenant>` with
// FLEXCORE_PLUGIN_TENANT answers its tenant's calls and refuses another tenant's with 403
// (whoever sent it), for the TypeScript SDK (echo) and the Python one (echo-py); a
// FLEXCORE_PLUGIN_TENANT that is not the service name's tenant is a bad handshake (exit 78).
import { spawn } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPluginTestNats } from "../test/plugin-nats.js";
import type { PluginTestNats } from "../test/plugin-nats.js";
import { startPluginProcess } from "../test/plugin-process.js";
import type { PluginProcess } from "../test/plugin-process.js";
import { createPluginClient } from "./client.js";
import { echoPluginCommand } from "./echo/launch.js";
import { PluginRejectedError } from "./errors.js";
import { EXIT_PROTOCOL_MISMATCH } from "./protocol.js";

const RUN = { id: "r1", workflow: "w", attempt: 1 };
const IMPLEMENTATIONS = [
  { label: "TypeScript echo", name: "echo", command: echoPluginCommand },
  { label: "Python echo-py", name: "echo-py", command: () => ({ command: "python3", args: ["-B", join(import.meta.dirname, "echo-py", "main.py")] }) },
] as const;

let nats: PluginTestNats;
const running: PluginProcess[] = [];

beforeAll(async () => {
  nats = await startPluginTestNats({ plugins: IMPLEMENTATIONS.flatMap((i) => [`${i.name}_acme`, `${i.name}_globex`]) });
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
    const child = spawn(command, [...args], { env: { PATH: process.env.PATH ?? "", ...env }, stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr!.on("data", (d: Buffer) => void (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    expect(code).toBe(EXIT_PROTOCOL_MISMATCH);
    expect(err).toMatch(/FLEXCORE_PLUGIN_TENANT/u);
  }, 30_000);
});
