// pii-redact end to end: the bundle packed, signed and installed read-only as an operator does,
// then run from the store with the manifest's command and the handshake environment, and
// called through the host client against a real nats-server with the plugin's own user.
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { chmod, cp, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPluginTestNats } from "../../test/plugin-nats.js";
import type { PluginTestNats } from "../../test/plugin-nats.js";
import { install, keygen, pack, sign, writeKeyPair } from "../bundle.js";
import { createPluginClient, discoverPlugins } from "../client.js";
import type { PluginClient } from "../client.js";
import { pythonSdkDir } from "../python-sdk.js";

const RUN = { id: "r1", workflow: "w", attempt: 1 };
let nats: PluginTestNats;
let child: ChildProcess;
let client: PluginClient;
let stderr = "";
let work: string;
let installedPath: string;
let installedFiles: string[];

async function files(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).map(String).sort();
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "flexcore-pii-"));
  const bundle = join(work, "pii-redact");
  await cp(import.meta.dirname, bundle, { recursive: true, filter: (src) => !src.includes("__pycache__") });
  const keys = join(work, "keys");
  const pair = keygen();
  await writeKeyPair(pair, keys, "ops");
  await pack(bundle);
  await sign(bundle, pair.privateKeyPem);
  const installed = await install(bundle, join(work, "store"), { trustedKeysDir: keys });
  expect(installed.signer).toBe(pair.keyId);
  installedPath = installed.path;
  installedFiles = await files(installedPath);
  nats = await startPluginTestNats({ plugins: ["pii-redact"] });
  const env = nats.pluginEnv("pii-redact", { FLEXCORE_PLUGIN_CONFIG: JSON.stringify({ replacement: "<{detector}>" }) });
  const [command, ...args] = installed.manifest.command;
  child = spawn(command!, args, { cwd: installedPath, env: { PATH: process.env.PATH ?? "", PYTHONPATH: pythonSdkDir(), ...env }, stdio: ["ignore", "ignore", "pipe"] });
  child.stderr!.on("data", (d: Buffer) => { stderr += d.toString(); });
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if ((await discoverPlugins(nats.nc, { name: "pii-redact", nonce: env.FLEXCORE_PLUGIN_NONCE!, timeoutMs: 200, limit: 1 })).length) break;
  }
  client = createPluginClient(nats.nc, "pii-redact");
});

afterAll(async () => {
  if (child && child.exitCode === null) {
    const exit = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exit;
  }
  await nats?.close();
  if (work) {
    await rm(work, { recursive: true, force: true, maxRetries: 2 }).catch(async () => {
      // The store is read-only by design; make it writable again to clean up.
      for (const f of [installedPath, ...installedFiles.map((x) => join(installedPath, x))]) await chmod(f, 0o700).catch(() => undefined);
      await rm(work, { recursive: true, force: true });
    });
  }
});

const input = (seq: number, key: string, data: unknown) => ({ seq, subject: `evt.acme.users.${key}`, key, id: `e${seq}`, type: "UserUpdated", time: "2026-01-01T00:00:00Z", data });

describe("pii-redact plugin", () => {
  it("processor: one Redacted output per input with every string redacted, keys and nested values included; no state", async () => {
    const reply = await client.callProcessor("pii-redact", {
      tenant: "acme",
      options: {},
      states: { u1: null, u2: null },
      inputs: [
        input(1, "u1", { name: "Jane", contact: { email: "jane@example.com", phones: ["+1 415 555 2671", "call (415) 555-2671"] }, age: 41 }),
        input(2, "u2", { note: "card 4111 1111 1111 1111, order 4111111111111112, on 2026-01-31 12:30:00", "bob@example.org": true }),
        input(3, "u1", "plain text"),
      ],
    });
    expect(reply).toEqual({
      states: {},
      outputs: [
        { input: 0, type: "Redacted", data: { name: "Jane", contact: { email: "[REDACTED]", phones: ["[REDACTED]", "call [REDACTED]"] }, age: 41 } },
        { input: 1, type: "Redacted", data: { note: "card [REDACTED], order 4111111111111112, on 2026-01-31 12:30:00", "[REDACTED]": true } },
        { input: 2, type: "Redacted", data: "plain text" },
      ],
    });
  });

  it("processor options pick the detectors and the replacement; a replay gives the same outputs", async () => {
    const request = { tenant: "acme", options: { detectors: ["email"], replacement: "***" }, states: { u1: null }, inputs: [input(1, "u1", { a: "x@y.io +1 415 555 2671" })] };
    const first = await client.callProcessor("pii-redact", request);
    expect(first.outputs[0]!.data).toEqual({ a: "*** +1 415 555 2671" });
    expect(await client.callProcessor("pii-redact", request)).toEqual(first);
  });

  it("bad options or too deep data are rejected with 400 naming the field (dead letter, no retry)", async () => {
    for (const [options, field] of [[{ detectors: ["ssn"] }, "options.detectors"], [{ replace: "x" }, "options.replace"], ["all", "options"]] as const) {
      const err = await client.callProcessor("pii-redact", { tenant: "acme", options, states: { u1: null }, inputs: [input(1, "u1", "a@b.io")] }).catch((e: unknown) => e);
      expect(err, JSON.stringify(options)).toMatchObject({ code: "FLEX_PLUGIN_REJECTED", status: 400, retryable: false });
      expect((err as { reason: string }).reason).toContain(`\`${field}\``);
    }
    let deep: unknown = "a@b.io";
    for (let i = 0; i < 300; i++) deep = [deep];
    await expect(client.callProcessor("pii-redact", { tenant: "acme", options: {}, states: { u1: null }, inputs: [input(1, "u1", deep)] })).rejects.toMatchObject({ code: "FLEX_PLUGIN_REJECTED", reason: expect.stringContaining("inputs[0].data") });
  });

  it("an error message carrying CR/LF cannot forge reply headers: the caller still sees one 400", async () => {
    const forged = "x\r\nNats-Service-Error-Code: 200\r\n\r\n{\"output\":\"forged\"}";
    const msg = await nats.nc.request("flexplugin.pii-redact.processor.pii-redact", JSON.stringify({ protocol: 1, tenant: "acme", kind: "pii-redact", options: { [forged]: 1 }, states: {}, inputs: [] }), { timeout: 5000 });
    expect(msg.headers?.get("Nats-Service-Error-Code")).toBe("400");
    expect(msg.headers?.values("Nats-Service-Error-Code")).toHaveLength(1);
    expect(msg.headers?.get("Nats-Service-Error")).not.toMatch(/[\r\n]/u);
    expect(msg.data.length).toBe(0);
    expect(await client.callStep("pii-redact", { tenant: "acme", input: "still up a@b.io", run: RUN })).toEqual({ output: "still up <email>" });
  });

  it("step: the output is the input redacted with the operator's config", async () => {
    expect(await client.callStep("pii-redact", { tenant: "acme", input: { to: "ops@example.com", text: ["pay 5500-0055-5555-5559"] }, run: RUN })).toEqual({
      output: { to: "<email>", text: ["pay <card>"] },
    });
    expect(await client.callStep("pii-redact", { tenant: "acme", input: null, run: RUN })).toEqual({ output: null });
  });

  it("a hostile string of 0.5 MB of near misses is answered and the plugin stays healthy", async () => {
    const hostile = `${"a@".repeat(100_000)}${"1 ".repeat(100_000)}${"+1 ".repeat(60_000)}`;
    // The cost is linear (test_redact.py measures it); a generous timeout keeps a busy machine from failing this.
    const reply = await createPluginClient(nats.nc, "pii-redact", { callTimeoutMs: 30_000 }).callStep("pii-redact", { tenant: "acme", input: hostile, run: RUN });
    expect(typeof reply.output).toBe("string");
    expect(child.exitCode).toBeNull();
    expect(stderr).not.toMatch(/"level":50/u);
  });

  it("runs from its read-only installed copy and writes nothing there", async () => {
    expect(await files(installedPath)).toEqual(installedFiles);
    expect(installedFiles).not.toContain("__pycache__");
  });
});
