// One conformance suite for every echo implementation (TypeScript `echo`, Python `echo-py`):
// each is launched as a child process with the handshake environment against a real
// nats-server whose plugin users have the contract's permissions, and must behave the same.
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPluginTestNats } from "../test/plugin-nats.js";
import type { PluginTestNats } from "../test/plugin-nats.js";
import { createPluginClient, discoverPlugins, pingPlugin, pluginStats } from "./client.js";
import { echoPluginCommand } from "./echo/launch.js";
import { PluginBadReplyError, PluginFailedError, PluginRejectedError } from "./errors.js";
import { RESPONSE_TYPES, checkControlResponse } from "./protocol.js";
import type { SrvVerb } from "./protocol.js";
import { pythonSdkDir } from "./python-sdk.js";

const RUN = { id: "r1", workflow: "w", attempt: 1 };
const CASES = ["disc", "srv", "calls", "err", "rej", "fail", "bad", "big", "huge", "conc", "term", "p78", "env78", "spam", "crash", "lost"] as const;
type Case = (typeof CASES)[number];

interface Implementation {
  readonly label: string;
  /** Service names are `<prefix>-<case>`, one per case, so a case never reaches another's child. */
  readonly prefix: string;
  readonly command: () => { command: string; args: readonly string[] };
  /**
   * On a lost NATS connection the Python SDK exits 1 (the supervisor restarts it: no reconnect
   * code in a stdlib-only file); the TypeScript SDK (nats.js) reconnects without end.
   */
  readonly onLostConnection: "exit" | "reconnect";
}

/** The command from the Python manifest, run from this checkout. */
function pythonEchoCommand(): { command: string; args: readonly string[] } {
  return { command: "python3", args: ["-B", join(import.meta.dirname, "echo-py", "main.py")] };
}

const IMPLEMENTATIONS: readonly Implementation[] = [
  { label: "TypeScript echo", prefix: "echo", command: echoPluginCommand, onLostConnection: "reconnect" },
  { label: "Python echo-py", prefix: "echo-py", command: pythonEchoCommand, onLostConnection: "exit" },
];

let nats: PluginTestNats;
const children: ChildProcess[] = [];

beforeAll(async () => {
  nats = await startPluginTestNats({ plugins: IMPLEMENTATIONS.flatMap((impl) => CASES.map((c) => `${impl.prefix}-${c}`)) });
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await nats?.close();
});

interface Launched {
  readonly child: ChildProcess;
  readonly service: string;
  readonly nonce: string;
  readonly exit: Promise<number | null>;
  stderr(): string;
  stdoutBytes(): number;
}

function launch(impl: Implementation, c: Case, config: Record<string, unknown> = {}, more: Record<string, string> = {}, on: PluginTestNats = nats): Launched {
  const service = `${impl.prefix}-${c}`;
  const env = on.pluginEnv(service, { FLEXCORE_PLUGIN_CONFIG: JSON.stringify(config), ...more });
  const { command, args } = impl.command();
  const child = spawn(command, [...args], { env: { PATH: process.env.PATH ?? "", PYTHONPATH: pythonSdkDir(), ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let err = "";
  let out = 0;
  child.stderr!.on("data", (d: Buffer) => { err += d.toString(); });
  child.stdout!.on("data", (d: Buffer) => { out += d.length; });
  const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, service, nonce: env.FLEXCORE_PLUGIN_NONCE!, exit, stderr: () => err, stdoutBytes: () => out };
}

async function ready(p: Launched, on: PluginTestNats = nats): Promise<string> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (p.child.exitCode !== null) throw new Error(`${p.service} exited ${p.child.exitCode}: ${p.stderr()}`);
    const found = await discoverPlugins(on.nc, { name: p.service, nonce: p.nonce, timeoutMs: 200, limit: 1 });
    if (found.length) return found[0]!.id;
  }
  throw new Error(`${p.service} not ready: ${p.stderr()}`);
}

async function start(impl: Implementation, c: Case, config: Record<string, unknown> = {}, more: Record<string, string> = {}): Promise<Launched & { id: string }> {
  const p = launch(impl, c, config, more);
  return Object.assign(p, { id: await ready(p) });
}

async function stop(p: Launched): Promise<void> {
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
  await p.exit;
}

describe.each(IMPLEMENTATIONS)("conformance: $label", (impl) => {
  it("discovery: INFO carries the launch nonce; an impostor of the same name with another nonce is ignored", async () => {
    const real = await start(impl, "disc");
    const impostor = await start(impl, "disc");
    try {
      const all = await discoverPlugins(nats.nc, { name: real.service, timeoutMs: 300 });
      expect(all.map((i) => i.id).sort()).toEqual([real.id, impostor.id].sort());
      const kept = await discoverPlugins(nats.nc, { name: real.service, nonce: real.nonce, timeoutMs: 300 });
      expect(kept.map((i) => i.id)).toEqual([real.id]);
      expect(kept[0]!.metadata).toEqual({ "flexcore.protocol": "1", "flexcore.nonce": real.nonce });
      expect(await discoverPlugins(nats.nc, { name: real.service, nonce: "wrong", timeoutMs: 300 })).toEqual([]);
    } finally {
      await stop(real);
      await stop(impostor);
    }
  });

  it("answers PING, INFO and STATS on all three subject forms with the micro v1 shapes and honest stats", async () => {
    const p = await start(impl, "srv");
    try {
      await createPluginClient(nats.nc, p.service).callStep("echo", { tenant: "acme", input: { a: 1 }, run: RUN });
      for (const verb of ["PING", "INFO", "STATS"] as const satisfies readonly SrvVerb[]) {
        for (const subject of [`$SRV.${verb}`, `$SRV.${verb}.${p.service}`, `$SRV.${verb}.${p.service}.${p.id}`]) {
          const mine = [];
          for await (const m of await nats.nc.requestMany(subject, "", { strategy: "timer", maxWait: 300 })) {
            const body = m.json<{ id: string }>();
            if (body.id === p.id) mine.push(body);
          }
          expect(mine, subject).toHaveLength(1);
          const checked = checkControlResponse(verb, mine[0]);
          expect(checked.ok, `${subject}: ${JSON.stringify(checked)}`).toBe(true);
          expect(mine[0]).toMatchObject({ type: RESPONSE_TYPES[verb], name: p.service, version: "1.0.0" });
        }
      }
      const info = (await discoverPlugins(nats.nc, { name: p.service, nonce: p.nonce }))[0]!;
      expect(info.endpoints.map((e) => [e.name, e.subject, e.queue_group]).sort()).toEqual(
        ["processor", "sink", "source", "step"].map((k) => [`${k}-echo`, `flexplugin.${p.service}.${k}.echo`, "q"]),
      );
      expect(await pingPlugin(nats.nc, p.service, { id: p.id })).toMatchObject({ type: RESPONSE_TYPES.PING, id: p.id });
      const stats = await pluginStats(nats.nc, p.service, { id: p.id });
      const step = stats.endpoints.find((e) => e.name === "step-echo")!;
      expect(step).toMatchObject({ num_requests: 1, num_errors: 0, last_error: "", queue_group: "q" });
      expect(step.processing_time).toBeGreaterThan(0);
      expect(step.average_processing_time).toBe(step.processing_time);
      expect(stats.endpoints.find((e) => e.name === "sink-echo")).toMatchObject({ num_requests: 0, processing_time: 0, average_processing_time: 0 });
      expect(Number.isNaN(Date.parse(stats.started))).toBe(false);
    } finally {
      await stop(p);
    }
  });

  it("answers each call kind with the documented reply", async () => {
    const p = await start(impl, "calls", { sourceEnd: 12 });
    try {
      const client = createPluginClient(nats.nc, p.service);
      const input = (seq: number, key: string, v: unknown) => ({ seq, subject: `evt.acme.x.${key}`, key, id: String(seq), type: "T", time: "2026-01-01T00:00:00Z", data: { v } });
      const reply = await client.callProcessor("echo", { tenant: "acme", options: {}, states: { a: { count: 5 }, b: null }, inputs: [input(1, "a", 1), input(2, "b", "two"), input(3, "a", [3])] });
      expect(reply).toEqual({ states: { a: { count: 7 }, b: { count: 1 } }, outputs: [{ input: 0, type: "Echoed", data: { v: 1 } }, { input: 1, type: "Echoed", data: { v: "two" } }, { input: 2, type: "Echoed", data: { v: [3] } }] });
      expect(await client.callStep("echo", { tenant: "acme", input: { deep: { ü: "ß", n: 1.5, z: null } }, run: RUN })).toEqual({ output: { deep: { ü: "ß", n: 1.5, z: null } } });
      const event = { seq: 1, id: "e1", subject: "evt.acme.x.a", type: "T", time: "2026-01-01T00:00:00Z", data: {} };
      expect(await client.callSink("echo", { tenant: "acme", options: {}, events: [event, { ...event, seq: 2, id: "e2" }] })).toEqual({ delivered: 2 });
      expect(await client.callSource("echo", { tenant: "acme", options: {}, cursor: null, max: 2 })).toEqual({
        records: [1, 2].map((n) => ({ id: `echo-${n}`, key: "echo", type: "Number", data: { n } })),
        cursor: "2",
      });
      expect(await client.callSource("echo", { tenant: "acme", options: {}, cursor: "10", max: 5 })).toMatchObject({ cursor: "12", records: [{ id: "echo-11" }, { id: "echo-12" }] });
      expect(await client.callSource("echo", { tenant: "acme", options: {}, cursor: "12", max: 5 })).toEqual({ records: [], cursor: "12" });
      await expect(client.callSource("echo", { tenant: "acme", options: {}, cursor: "x", max: 5 })).rejects.toMatchObject({ code: "FLEX_PLUGIN_REJECTED", status: 400 });
    } finally {
      await stop(p);
    }
  });

  it("refuses a request of another protocol or not JSON with 400, and keeps serving", async () => {
    const p = await start(impl, "err");
    try {
      const subject = `flexplugin.${p.service}.step.echo`;
      for (const body of [JSON.stringify({ protocol: 2, tenant: "t", step: "echo", input: 1, run: RUN }), "{not json", "[1]", `${"[".repeat(100_000)}`]) {
        const msg = await nats.nc.request(subject, body, { timeout: 5000 });
        expect(msg.headers?.get("Nats-Service-Error-Code"), body.slice(0, 40)).toBe("400");
        expect(msg.data.length).toBe(0);
      }
      await expect(createPluginClient(nats.nc, p.service).callStep("echo", { tenant: "t", input: 1, run: RUN })).resolves.toEqual({ output: 1 });
    } finally {
      await stop(p);
    }
  });

  it("maps a PluginInputError to 400 → FLEX_PLUGIN_REJECTED and counts it in STATS", async () => {
    const p = await start(impl, "rej", { reject: true });
    try {
      const err = await createPluginClient(nats.nc, p.service).callStep("echo", { tenant: "t", input: 1, run: RUN }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PluginRejectedError);
      expect(err).toMatchObject({ code: "FLEX_PLUGIN_REJECTED", status: 400, reason: "echo: rejected by the `reject` fault switch", retryable: false });
      const step = (await pluginStats(nats.nc, p.service, { id: p.id })).endpoints.find((e) => e.name === "step-echo")!;
      expect(step).toMatchObject({ num_requests: 1, num_errors: 1, last_error: "400:echo: rejected by the `reject` fault switch" });
    } finally {
      await stop(p);
    }
  });

  it("maps any other failure to 500 → FLEX_PLUGIN_FAILED (retryable) and logs it on stderr", async () => {
    const p = await start(impl, "fail", { fail: true });
    try {
      const err = await createPluginClient(nats.nc, p.service).callSink("echo", { tenant: "t", options: {}, events: [] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PluginFailedError);
      expect(err).toMatchObject({ code: "FLEX_PLUGIN_FAILED", status: 500, reason: "echo: failed by the `fail` fault switch", retryable: true });
      await expect.poll(() => p.stderr()).toMatch(/"level":50,.*handler failed/u);
    } finally {
      await stop(p);
    }
  });

  it("a malformed reply is FLEX_PLUGIN_BAD_REPLY", async () => {
    const p = await start(impl, "bad", { malformed: true });
    try {
      const err = await createPluginClient(nats.nc, p.service).callStep("echo", { tenant: "t", input: 1, run: RUN }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PluginBadReplyError);
      expect((err as Error).message).toMatch(/expected JSON/u);
    } finally {
      await stop(p);
    }
  });

  it("an oversized reply is FLEX_PLUGIN_BAD_REPLY; one over the server's max_payload becomes a 500 and the plugin stays up", async () => {
    const p = await start(impl, "big", { oversized: true, oversizedBytes: 100_000 });
    const q = await start(impl, "huge", { oversized: true, oversizedBytes: 2 * 1024 * 1024 });
    try {
      const err = await createPluginClient(nats.nc, p.service, { maxReplyBytes: 65_536 }).callStep("echo", { tenant: "t", input: 1, run: RUN }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PluginBadReplyError);
      expect((err as Error).message).toMatch(/at most 65536 bytes, got 1000\d\d bytes/u);
      const huge = createPluginClient(nats.nc, q.service, { callTimeoutMs: 3000 });
      for (let i = 0; i < 2; i++) {
        await expect(huge.callStep("echo", { tenant: "t", input: 1, run: RUN })).rejects.toMatchObject({ code: "FLEX_PLUGIN_FAILED", status: 500 });
      }
      expect(q.child.exitCode).toBeNull();
      expect(await pingPlugin(nats.nc, q.service, { id: q.id })).toMatchObject({ id: q.id });
    } finally {
      await stop(p);
      await stop(q);
    }
  });

  it("handles at most FLEXCORE_PLUGIN_CONCURRENCY calls at once; the others wait and are all answered", async () => {
    const p = await start(impl, "conc", { delayMs: 300 }, { FLEXCORE_PLUGIN_CONCURRENCY: "2" });
    try {
      const client = createPluginClient(nats.nc, p.service, { callTimeoutMs: 10_000 });
      const t0 = performance.now();
      const outs = await Promise.all(Array.from({ length: 6 }, (_, i) => client.callStep("echo", { tenant: "t", input: i, run: RUN })));
      const elapsed = performance.now() - t0;
      expect(outs.map((o) => o.output)).toEqual([0, 1, 2, 3, 4, 5]);
      // 6 calls of 300 ms, 2 at a time: three rounds. Unbounded, they would take one round.
      expect(elapsed).toBeGreaterThanOrEqual(3 * 300 - 50);
    } finally {
      await stop(p);
    }
  });

  it("drains on SIGTERM: the call in flight completes, then it exits 0", async () => {
    const p = await start(impl, "term", { delayMs: 1500 });
    const client = createPluginClient(nats.nc, p.service, { callTimeoutMs: 5000 });
    const call = client.callStep("echo", { tenant: "t", input: { in: "flight" }, run: RUN });
    // SIGTERM once the plugin has the call (its STATS count it), not after a guessed delay.
    await expect.poll(async () => (await pluginStats(nats.nc, p.service, { id: p.id })).endpoints.find((e) => e.name === "step-echo")!.num_requests, { timeout: 5000 }).toBe(1);
    p.child.kill("SIGTERM");
    await expect(call).resolves.toEqual({ output: { in: "flight" } });
    expect(await p.exit).toBe(0);
    expect(p.stderr()).toMatch(/"msg":"draining"/u);
    expect(await discoverPlugins(nats.nc, { name: p.service, timeoutMs: 200 })).toEqual([]);
  });

  it("exits 78 with one stderr line when it shares no protocol with the host", async () => {
    const p = launch(impl, "p78", {}, { FLEXCORE_PLUGIN_PROTOCOLS: "2,3" });
    expect(await p.exit).toBe(78);
    const lines = p.stderr().trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/no protocol version in common/u);
    expect(await discoverPlugins(nats.nc, { name: p.service, timeoutMs: 200 })).toEqual([]);
  });

  it("exits 78 with one stderr line naming the variable when the environment is unusable", async () => {
    for (const [variable, value] of [["FLEXCORE_PLUGIN_CONFIG", "[1,2"], ["FLEXCORE_PLUGIN_CONCURRENCY", "0"], ["FLEXCORE_PLUGIN_NAME", "Bad.Name"]] as const) {
      const p = launch(impl, "env78", {}, { [variable]: value });
      expect(await p.exit, variable).toBe(78);
      const lines = p.stderr().trim().split("\n");
      expect(lines, variable).toHaveLength(1);
      expect(lines[0]).toContain(variable);
    }
  });

  it("stdout spam is harmless; ignoreSigterm keeps it serving", async () => {
    const p = await start(impl, "spam", { stdoutSpam: true, ignoreSigterm: true });
    try {
      p.child.kill("SIGTERM");
      const client = createPluginClient(nats.nc, p.service, { callTimeoutMs: 5000 });
      const outs = await Promise.all(Array.from({ length: 20 }, (_, i) => client.callStep("echo", { tenant: "t", input: i, run: RUN })));
      expect(outs.map((o) => o.output)).toEqual(Array.from({ length: 20 }, (_, i) => i));
      await expect.poll(() => p.stdoutBytes()).toBe(20 * 100 * 1024);
      expect(p.child.exitCode).toBeNull();
    } finally {
      await stop(p);
    }
  });

  it("crashAfter: N calls are answered, then it exits 1 on the next", async () => {
    const p = await start(impl, "crash", { crashAfter: 2 });
    const client = createPluginClient(nats.nc, p.service, { callTimeoutMs: 1000 });
    await expect(client.callStep("echo", { tenant: "t", input: 1, run: RUN })).resolves.toEqual({ output: 1 });
    await expect(client.callSink("echo", { tenant: "t", options: {}, events: [] })).resolves.toEqual({ delivered: 0 });
    const third = await client.callStep("echo", { tenant: "t", input: 3, run: RUN }).catch((e: unknown) => e);
    expect(["FLEX_PLUGIN_TIMEOUT", "FLEX_PLUGIN_UNAVAILABLE"]).toContain((third as { code?: string }).code);
    expect(await p.exit).toBe(1);
  });

  it(`on a lost NATS connection: ${impl.onLostConnection === "exit" ? "exits 1 (the supervisor restarts it)" : "keeps running to reconnect"}`, async () => {
    const own = await startPluginTestNats({ plugins: [`${impl.prefix}-lost`] });
    const p = launch(impl, "lost", {}, {}, own);
    await ready(p, own);
    await own.close();
    const code = await Promise.race([p.exit, new Promise((r) => setTimeout(() => r("still running"), impl.onLostConnection === "exit" ? 15_000 : 2_000))]);
    await stop(p);
    expect(code).toBe(impl.onLostConnection === "exit" ? 1 : "still running");
  });
});
