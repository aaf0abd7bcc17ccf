import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUCKETS, createEventStore, ensureTopology, openTtlKv, PLUGIN_EVENT_TYPES } from "../streams/index.js";
import type { EventInput } from "../streams/index.js";
import { createProjectionEngine, pluginStatusProjection } from "../projections/index.js";
import { createPluginLifecycle } from "./lifecycle.js";
import { startTestNats } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { alive, fixtureBundle, processTree, until } from "./fixtures/harness.js";
import { generatePluginUsers, pluginCredentials } from "./nats-users.js";
import { createScriptRunner } from "../processors/index.js";
import { descendants, pluginUid, startPluginSupervisor } from "./supervisor.js";
import type { PluginLaunchSpec, PluginSupervisor, PluginSupervisorOptions } from "./supervisor.js";

let nats: TestNats;
let bundle: { dir: string; close(): Promise<void> };
let credentialsDir: string;
const supervisors: PluginSupervisor[] = [];
const NAMES = ["ready-one", "impostor", "proto", "hung", "spam", "membomb", "forkbomb", "stubborn", "loop", "takeover", "stolen", "killed"];

beforeAll(async () => {
  credentialsDir = await mkdtemp(join(tmpdir(), "flexcore-plugin-creds-"));
  const users = await generatePluginUsers({ services: NAMES, dir: credentialsDir });
  nats = await startTestNats({ extraUsers: users.entries });
  await ensureTopology(nats.nc);
  bundle = await fixtureBundle();
}, 60_000);

afterAll(async () => {
  for (const s of supervisors) await s.stop();
  await nats?.close();
  await bundle?.close();
  await rm(credentialsDir, { recursive: true, force: true });
});

function spec(name: string, config: Record<string, unknown> = {}, more: Partial<PluginLaunchSpec> = {}): PluginLaunchSpec {
  return { name, version: "0.0.1", command: ["node", "plugin.mjs"], bundleDir: bundle.dir, config, ...more };
}

async function supervise(plugins: PluginLaunchSpec[], more: Partial<PluginSupervisorOptions> = {}): Promise<{ sup: PluginSupervisor; lines: string[] }> {
  const lines: string[] = [];
  const sup = await startPluginSupervisor({ nc: nats.nc, plugins, natsUrl: nats.server.url, credentialsDir, log: (l) => void lines.push(l), graceMs: 1_000, leaseTtlMs: 2_000, ...more });
  supervisors.push(sup);
  return { sup, lines };
}

const call = (name: string, body = "hi", timeout = 2_000) => nats.nc.request(`flexplugin.${name}.processor.echo`, body, { timeout });

describe("plugin supervisor", () => {
  it("launches the instances sandboxed, takes each as ready when INFO carries its nonce, and they answer calls", async () => {
    const started: string[] = [];
    const store = await createEventStore(nats.nc);
    const lifecycle = createPluginLifecycle({ store: { append: (ref, events, opts) => (events.forEach((e) => started.push(e.type)), store.append(ref, events, opts)) } });
    const { sup, lines } = await supervise([spec("ready-one", {}, { instances: 2 })], { lifecycle });
    await sup.ready("ready-one", 20_000).catch((e) => { console.log(lines.join("\n")); throw e; });
    const st = sup.status("ready-one");
    expect(st.state).toBe("running");
    expect(st.instances).toHaveLength(2);
    expect(new Set(st.instances.map((i) => i.id)).size).toBe(2);
    expect((await call("ready-one")).string()).toBe("hi");
    // One start of the plugin, not one per instance: plugin_status must not count the second as a restart.
    await until(() => started.filter((t) => t === PLUGIN_EVENT_TYPES.started).length >= 1, 2_000, "PluginStarted");
    await new Promise((r) => setTimeout(r, 200));
    expect(started.filter((t) => t !== PLUGIN_EVENT_TYPES.health)).toEqual([PLUGIN_EVENT_TYPES.loaded, PLUGIN_EVENT_TYPES.started]);
    // Sandboxed: the plugin process runs under bubblewrap as a uid of its own, not the steps' 65534.
    const tree = processTree(st.instances.map((i) => i.pid));
    const uids = tree.map((p) => /Uid:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, "utf8"))?.[1]);
    expect(uids).toContain(String(pluginUid("ready-one")));
    expect(uids).not.toContain("65534");
    expect(lines.some((l) => l.startsWith("[plugin ready-one] fixture ready-one ready"))).toBe(true);
    // The bundle is read-only, /tmp is the sandbox's own, and the password is on no command line.
    expect(lines).toContain("[plugin ready-one] fixture: cannot write /work/written-by-plugin: EROFS");
    expect(lines).toContain("[plugin ready-one] fixture: wrote /tmp/written-by-plugin");
    expect(lines).toContain(`[plugin ready-one] fixture: uid ${pluginUid("ready-one")}`);
    // Terminal escapes and carriage returns of a plugin do not reach the log as such.
    expect(lines).toContain("[plugin ready-one] fixture: escapes \uFFFD[2J\uFFFD[31mred\uFFFD[plugin other] forged");
    expect(existsSync(join(bundle.dir, "written-by-plugin"))).toBe(false);
    expect(existsSync("/tmp/written-by-plugin")).toBe(false);
    const { password } = await pluginCredentials(credentialsDir, "ready-one");
    for (const p of tree) expect(safeRead(`/proc/${p}/cmdline`)).not.toContain(password);
    // A script step, even one without bubblewrap (`sandbox: plain`, the host's PID namespace,
    // uid 65534), cannot read a plugin's environment, where its NATS password is.
    await using steps = await createScriptRunner({ sandbox: "plain", maxConcurrent: 1 });
    const probe = await steps.run({
      language: "javascript",
      source: `function main(){ const fs=require("fs"); const got=[]; for (const p of fs.readdirSync("/proc").filter((x)=>/^\\d+$/.test(x))) { try { got.push(fs.readFileSync("/proc/"+p+"/environ","latin1")); } catch {} } return { read: got.length, leaked: got.filter((e)=>e.includes("FLEXCORE_PLUGIN_NATS_PASSWORD")).length }; }`,
      limits: { timeoutMs: 10_000 },
    }, {});
    expect(probe.status, JSON.stringify(probe)).toBe("succeeded");
    expect((probe.output as { leaked: number }).leaked).toBe(0);
    await sup.stop();
    for (const p of tree) expect(alive(p), `pid ${p}`).toBe(false);
  }, 40_000);

  it("does not take an impostor's INFO with the wrong nonce as ready: the launch times out and is killed", async () => {
    // An impostor service under the same name, from a connection that is not the launched process.
    const impostor = await nats.connect();
    impostor.subscribe("$SRV.INFO.impostor", { callback: (_e, m) => void m.respond(JSON.stringify({ type: "io.nats.micro.v1.info_response", name: "impostor", id: "fake", version: "6.6.6", metadata: { "flexcore.protocol": "1", "flexcore.nonce": "guessed" }, endpoints: [] })) });
    await impostor.flush();
    const { sup } = await supervise([spec("impostor", { fault: "wrong-nonce" }, { limits: { startTimeoutMs: 1_500 } })], { backoff: { initialMs: 60_000, maxMs: 60_000 } });
    await until(() => sup.status("impostor").instances.length > 0, 5_000, "a launch");
    const pid = sup.status("impostor").instances[0]!.pid!;
    const tree = processTree([pid]);
    await new Promise((r) => setTimeout(r, 1_000));
    expect(sup.status("impostor").instances[0]!.ready).toBe(false);
    expect(sup.status("impostor").state).toBe("starting");
    await until(() => sup.status("impostor").failures === 1, 3_000, "the start timeout");
    expect(sup.status("impostor").lastError?.code).toBe("FLEX_PLUGIN_START_TIMEOUT");
    expect(sup.status("impostor").starts).toBe(0);
    await until(() => tree.every((p) => !alive(p)), 1_000, "the timed-out launch to be gone");
    await sup.stop();
  }, 30_000);

  it("never restarts a plugin that exits 78 (no common protocol) before it is ready", async () => {
    const { sup, lines } = await supervise([spec("proto", { fault: "exit-78" })], { backoff: { initialMs: 50, maxMs: 50 } });
    await until(() => sup.status("proto").state === "failed", 10_000, "the protocol failure");
    expect(sup.status("proto").lastError?.code).toBe("FLEX_PLUGIN_PROTOCOL");
    expect(lines.some((l) => l.includes("no common protocol"))).toBe(true);
    await new Promise((r) => setTimeout(r, 1_500));
    expect(sup.status("proto").failures).toBe(1);
    expect(sup.status("proto").instances.every((i) => i.pid === undefined || !alive(i.pid))).toBe(true);
    await sup.stop();
  }, 30_000);

  it("restarts a crashing plugin with growing backoff, stops after 5 failures in the window (crash loop), and plugin_status counts them", async () => {
    const store = await createEventStore(nats.nc);
    const published: { type: string; data: Record<string, unknown>; at: number }[] = [];
    const lifecycle = createPluginLifecycle({
      store: {
        append: (ref, events: readonly EventInput[], opts) => {
          for (const e of events) published.push({ type: e.type, data: e.data as Record<string, unknown>, at: Date.now() });
          return store.append(ref, events, opts);
        },
      },
    });
    const { sup } = await supervise([spec("loop", { fault: "crash-at-start" })], { lifecycle, backoff: { initialMs: 100, maxMs: 10_000 } });
    await until(() => sup.status("loop").state === "failed", 20_000, "the crash loop");
    const failed = published.filter((e) => e.type === PLUGIN_EVENT_TYPES.failed);
    expect(failed).toHaveLength(5);
    expect(failed.slice(0, 4).map((e) => e.data.willRestart)).toEqual([true, true, true, true]);
    const delays = failed.slice(0, 4).map((e) => e.data.nextRestartInMs as number);
    delays.forEach((d, i) => {
      expect(d).toBeGreaterThanOrEqual(100 * 2 ** i);
      expect(d).toBeLessThanOrEqual(125 * 2 ** i);
    });
    // Each relaunch waited at least its announced delay.
    for (let i = 1; i < failed.length; i++) expect(failed[i]!.at - failed[i - 1]!.at).toBeGreaterThanOrEqual(delays[i - 1]! - 5);
    expect(failed[4]!.data).toMatchObject({ willRestart: false, attempt: 5, error: { code: "FLEX_PLUGIN_CRASH_LOOP" } });
    await new Promise((r) => setTimeout(r, 1_500));
    expect(sup.status("loop").failures).toBe(5);

    const dataDir = await mkdtemp(join(tmpdir(), "flexcore-plugin-status-"));
    const engine = createProjectionEngine(nats.nc, { dataDir, projections: [pluginStatusProjection()], log: () => undefined });
    try {
      await engine.start();
      let row: Record<string, unknown> | undefined;
      await until(async () => {
        row = (await engine.query("plugin_status", { tenant: "_system", filter: { plugin: "loop" } })).rows[0];
        return row?.failures === 5;
      }, 10_000, "plugin_status to fold the failures");
      expect(row).toMatchObject({ plugin: "loop", state: "failed", version: "0.0.1", failures: 5, restarts: 0 });
      expect(String(row!.last_error)).toMatch(/FLEX_PLUGIN_CRASH_LOOP|5 times/);

      // The operator's restart launches it again.
      sup.restart("loop");
      await until(() => sup.status("loop").failures === 6, 10_000, "the relaunch after restart()");
      await sup.stop();
      await until(async () => (await engine.query("plugin_status", { tenant: "_system", filter: { plugin: "loop" } })).rows[0]?.state === "stopped", 10_000, "PluginStopped to be folded");
    } finally {
      await engine.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);

  it("replaces a hung plugin after 3 call timeouts in a row", async () => {
    const { sup } = await supervise([spec("hung", { fault: "hang", after: 1 })]);
    await sup.ready("hung", 20_000);
    const first = sup.status("hung").instances[0]!.pid!;
    const tree = processTree([first]);
    expect((await call("hung")).string()).toBe("hi");
    await expect(call("hung", "hi", 300)).rejects.toThrow();
    sup.reportCallTimeout("hung");
    sup.reportCallTimeout("hung");
    expect(sup.status("hung").instances[0]!.pid).toBe(first);
    sup.reportCallTimeout("hung");
    await until(() => sup.status("hung").starts === 2 && sup.status("hung").state === "running", 15_000, "the replacement");
    expect(sup.status("hung").instances[0]!.pid).not.toBe(first);
    for (const p of tree) expect(alive(p), `pid ${p}`).toBe(false);
    expect((await call("hung")).string()).toBe("hi");
    await sup.stop();
  }, 40_000);

  it("keeps the host responsive under stdout spam: lines cut at 4 KiB and at most 100 a second", async () => {
    const { sup, lines } = await supervise([spec("spam", { fault: "spam" })]);
    await sup.ready("spam", 20_000);
    let maxLag = 0;
    let last = performance.now();
    const lag = setInterval(() => {
      const now = performance.now();
      maxLag = Math.max(maxLag, now - last - 20);
      last = now;
    }, 20);
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 2_500));
    expect((await call("spam")).string()).toBe("hi");
    clearInterval(lag);
    const seconds = (Date.now() - t0) / 1000;
    const spam = lines.filter((l) => l.startsWith("[plugin spam]"));
    expect(spam.length).toBeLessThanOrEqual(Math.ceil(seconds + 2) * 101);
    expect(spam.some((l) => /lines dropped/.test(l))).toBe(true);
    expect(Math.max(...spam.map((l) => Buffer.byteLength(l)))).toBeLessThanOrEqual(4096 + "[plugin spam]  [cut]".length);
    expect(spam.some((l) => l.endsWith("[cut]"))).toBe(true);
    expect(maxLag).toBeLessThan(500);
    await sup.stop();
  }, 40_000);

  it("contains a memory bomb: the plugin dies at its memory limit and is restarted, the host is untouched", async () => {
    const { sup, lines } = await supervise([spec("membomb", { fault: "memory" }, { limits: { memoryMb: 192 } })], { backoff: { initialMs: 100, maxMs: 100 }, crashLoop: { failures: 50, windowMs: 60_000 } });
    const rss = process.memoryUsage().rss;
    await until(() => sup.status("membomb").failures >= 2, 20_000, "the bomb to hit its limit");
    // It was ready (it allocates only once serving), then died, twice: the limit holds on every launch.
    expect(sup.status("membomb").starts, lines.join("\n")).toBeGreaterThanOrEqual(2);
    expect(sup.status("membomb").lastError?.message).toMatch(/killed by SIG|exited with code/);
    expect(process.memoryUsage().rss - rss).toBeLessThan(150 * 1024 * 1024);
    await sup.stop();
  }, 40_000);

  it("contains a fork bomb at maxProcesses, and stop() leaves nothing of it", async () => {
    const { sup, lines } = await supervise([spec("forkbomb", { fault: "fork-bomb" }, { limits: { maxProcesses: 32 } })]);
    await sup.ready("forkbomb", 20_000);
    const pid = sup.status("forkbomb").instances[0]!.pid!;
    // Sample the sandbox's threads while the bomb runs: never over the limit (+ bubblewrap's two processes).
    let peak = 0;
    const seen = new Set<number>();
    for (const end = Date.now() + 1_500; Date.now() < end; await new Promise((r) => setTimeout(r, 10))) {
      const tree = processTree([pid]);
      tree.forEach((p) => seen.add(p));
      peak = Math.max(peak, tree.reduce((n, p) => n + Number(/Threads:\s+(\d+)/.exec(safeRead(`/proc/${p}/status`))?.[1] ?? 0), 0));
    }
    expect(lines.some((l) => l.includes("Cannot fork")), lines.join("\n")).toBe(true);
    expect(seen.size).toBeGreaterThan(5);
    expect(peak).toBeLessThanOrEqual(32 + 2);
    expect((await call("forkbomb")).string()).toBe("hi");
    const t0 = Date.now();
    await sup.stop();
    expect(Date.now() - t0).toBeLessThan(1_000 + 1_000 + 500);
    await until(() => [...seen].every((p) => !alive(p)), 500, "every process of the bomb to be gone");
  }, 40_000);

  it("kills a plugin that ignores SIGTERM within grace + 1 s on stop()", async () => {
    const { sup, lines } = await supervise([spec("stubborn", { fault: "ignore-sigterm" }, { instances: 2 })]);
    await sup.ready("stubborn", 20_000);
    const tree = processTree(sup.status("stubborn").instances.map((i) => i.pid));
    const t0 = Date.now();
    await sup.stop();
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(2_000);
    expect(lines.some((l) => l.includes("ignoring SIGTERM"))).toBe(true);
    for (const p of tree) expect(alive(p), `pid ${p}`).toBe(false);
  }, 30_000);

  it("leaves no plugin process after the host's SIGKILL, and a second supervisor waits for the lease, then takes over", async () => {
    const host = spawn(process.execPath, ["--import", "tsx", fileURLToPath(new URL("./fixtures/host.ts", import.meta.url))], {
      env: {
        ...process.env,
        ...nats.env,
        HOST_PLUGIN_SPEC: JSON.stringify(spec("takeover", {}, { instances: 2 })),
        HOST_CREDENTIALS_DIR: credentialsDir,
        HOST_INSTANCE_ID: "host-a",
        HOST_LEASE_TTL_MS: "2000",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    host.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
    const rl = createInterface({ input: host.stdout! });
    const [line] = (await Promise.race([once(rl, "line"), new Promise((_, rej) => setTimeout(() => rej(new Error(`host not ready: ${stderr}`)), 30_000))])) as [string];
    const pids = JSON.parse(line.replace(/^READY /, "")) as number[];
    const tree = processTree(pids);
    expect(tree.length).toBeGreaterThanOrEqual(4);

    const { sup } = await supervise([spec("takeover", {}, { instances: 2 })], { instanceId: "host-b" });
    await new Promise((r) => setTimeout(r, 1_500));
    expect(sup.status("takeover")).toMatchObject({ state: "standby", leaseHeld: false, instances: [] });

    host.kill("SIGKILL");
    await once(host, "exit");
    await until(() => tree.every((p) => !alive(p)), 2_000, `every plugin pid of the killed host to die (${tree.join(", ")})`);
    await sup.ready("takeover", 20_000);
    expect(sup.status("takeover").leaseHeld).toBe(true);
    expect((await call("takeover")).string()).toBe("hi");
    await sup.stop();
  }, 60_000);

  it("stops its processes when its lease is taken, and launches again once it can take it back", async () => {
    const { sup } = await supervise([spec("stolen")], { instanceId: "victim", leaseTtlMs: 1_000 });
    await sup.ready("stolen", 20_000);
    const tree = processTree(sup.status("stolen").instances.map((i) => i.pid));
    const leases = await openTtlKv(nats.nc, BUCKETS.leases);
    const entry = await leases.kv.get("plugin.stolen");
    expect(entry?.json<{ owner: string }>().owner).toBe("victim");
    // Another owner overwrites the key (as after a partition): the victim's next renewal fails.
    await leases.update("plugin.stolen", new TextEncoder().encode(JSON.stringify({ owner: "thief", expiresAt: Date.now() + 60_000 })), entry!.revision, 60_000);
    await until(() => tree.every((p) => !alive(p)), 5_000, "the processes of a lost lease to stop");
    expect(sup.status("stolen")).toMatchObject({ leaseHeld: false });
    await new Promise((r) => setTimeout(r, 800));
    expect(sup.status("stolen").instances.every((i) => !i.pid || !alive(i.pid))).toBe(true);
    await leases.kv.delete("plugin.stolen");
    await until(() => sup.status("stolen").state === "running" && sup.status("stolen").leaseHeld, 20_000, "the relaunch after the lease came back");
    expect((await call("stolen")).string()).toBe("hi");
    await sup.stop();
  }, 40_000);

  it("restarts a plugin killed after a healthy run at once, and a second kill within the window waits on the doubling sequence", async () => {
    const failed: Record<string, unknown>[] = [];
    const lifecycle = { loaded: async () => undefined, started: async () => undefined, health: async () => undefined, stopped: async () => undefined, close: async () => undefined, failed: async (e: Record<string, unknown>) => void failed.push(e) };
    const { sup } = await supervise([spec("killed")], { lifecycle: lifecycle as unknown as PluginSupervisorOptions["lifecycle"], backoff: { initialMs: 400, maxMs: 10_000 } });
    await sup.ready("killed", 20_000);
    const kill = () => {
      const outer = sup.status("killed").instances[0]!.pid!;
      const inner = descendants(outer).at(-1)!;
      process.kill(inner, "SIGKILL");
    };
    kill();
    await until(() => failed.length === 1 && sup.status("killed").state === "running", 10_000, "the quick restart");
    expect(failed[0]).toMatchObject({ willRestart: true, attempt: 1, signal: null });
    expect(failed[0]!.nextRestartInMs as number).toBeLessThanOrEqual(Math.round(25 * 1.25));
    expect((await call("killed")).string()).toBe("hi");
    kill();
    await until(() => failed.length === 2, 10_000, "the second failure");
    expect(failed[1]).toMatchObject({ willRestart: true, attempt: 2 });
    expect(failed[1]!.nextRestartInMs as number).toBeGreaterThanOrEqual(800);
    expect(failed[1]!.nextRestartInMs as number).toBeLessThanOrEqual(1_000);
    await sup.stop();
  }, 40_000);
});

function safeRead(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}
