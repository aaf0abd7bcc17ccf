/**
 * The figures of the plugins suite that need managed plugins, in the real sandbox as
 * `flexcore up` runs them (bubblewrap, a uid of their own, read-only bundle, rlimits):
 * kill -9 → answering again (TypeScript echo and Python echo-py), and the idle memory of the
 * shipped plugins. Bundles are built as an operator packs them: TypeScript plugins bundled by
 * esbuild into one `main.js` beside the manifest (native modules copied beside it), Python ones
 * copied as they are (the host provides the SDK: `sdk: python`).
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { chmod, copyFile, cp, mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createPluginClient, generatePluginUsers, launchSpec, parseManifest, startPluginSupervisor } from "../plugins/index.js";
import type { PluginLaunchSpec, PluginLifecycle, PluginSupervisor } from "../plugins/index.js";
import { ensureTopology } from "../streams/index.js";
import { startTestNats } from "../test/nats-server.js";
import { percentile } from "./harness.js";
import type { BenchResult } from "./harness.js";

/** The shipped plugins (issue #15's six, the echo counted in both languages). */
export const SHIPPED = ["echo", "echo-py", "json-transform", "schema-validate", "pii-redact", "http-sink", "sqlite-source"] as const;
/** Kills per echo for the restart figure (`--kills N` or FLEXCORE_BENCH_PLUGIN_KILLS). */
export const DEFAULT_KILLS = 10;
/** Seconds the plugins idle before their memory is read. */
const IDLE_MS = 5_000;
/**
 * The crash-loop window of the bench's supervisor: each kill must be the first failure of its
 * window to measure a kill after a healthy run (with the default 60 s window, ten kills a few
 * seconds apart would be a crash loop, as they should be in production).
 */
const BENCH_CRASH_WINDOW_MS = 1_500;
const GOALS_MS: Record<string, number> = { echo: 1_000, "echo-py": 1_500 };
/** Native modules a bundle carries beside main.js (esbuild cannot inline a .node file). */
const NATIVE: Record<string, readonly string[]> = { "sqlite-source": ["better-sqlite3"] };

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json")) || !existsSync(join(dir, "plugins", "echo", "flexcore-plugin.yaml"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("bench: cannot find FlexCore's checkout above bench/");
    dir = parent;
  }
  return dir;
}

async function chmodTree(path: string): Promise<void> {
  const s = await stat(path);
  await chmod(path, s.isDirectory() ? 0o755 : 0o644);
  if (s.isDirectory()) for (const e of await readdir(path)) await chmodTree(join(path, e));
}

/** A bundle folder for `name` under `into`, readable by the plugin's uid. */
async function buildBundle(name: string, into: string): Promise<string> {
  const root = repoRoot();
  const src = join(root, "plugins", name);
  const dir = join(into, name);
  await mkdir(dir, { recursive: true });
  if (existsSync(join(src, "main.py"))) {
    await cp(src, dir, { recursive: true, filter: (p) => !/__pycache__|test_[^/]*\.py$|\.test\.ts$/.test(p) });
  } else {
    const { build } = await import("esbuild");
    const external = NATIVE[name] ?? [];
    await build({
      entryPoints: [join(src, "main.ts")],
      bundle: true,
      platform: "node",
      format: "esm",
      target: "node20",
      outfile: join(dir, "main.js"),
      external: [...external],
      banner: { js: "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);" },
      logLevel: "error",
    });
    await copyFile(join(src, "flexcore-plugin.yaml"), join(dir, "flexcore-plugin.yaml"));
    for (const mod of external) {
      const from = join(root, "node_modules", mod);
      const deps = [mod, ...Object.keys((JSON.parse(readFileSync(join(from, "package.json"), "utf8")) as { dependencies?: Record<string, string> }).dependencies ?? {})];
      for (const d of deps.filter((x) => x !== "prebuild-install")) {
        // Only what runs: package.json, lib/, the compiled addon (not the 28 MB of sources).
        const dfrom = join(root, "node_modules", d);
        await cp(dfrom, join(dir, "node_modules", d), { recursive: true, dereference: true, filter: (p) => !/\/(deps|src|obj|obj\.target)(\/|$)|\.a$|test_extension/.test(p.slice(dfrom.length)) });
      }
    }
  }
  await chmodTree(dir);
  return dir;
}

/** RSS, PSS and USS (private pages only) of a process in kB, from /proc/<pid>/smaps_rollup. */
function memoryOf(pid: number): { rssKb: number; pssKb: number; ussKb: number } {
  try {
    const text = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? 0);
    return { rssKb: kb("Rss"), pssKb: kb("Pss"), ussKb: kb("Private_Clean") + kb("Private_Dirty") };
  } catch {
    return { rssKb: 0, pssKb: 0, ussKb: 0 };
  }
}

/** The pid and its descendants, from /proc. */
function tree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const e of readdirSyncSafe("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const s = readFileSync(`/proc/${e}/stat`, "utf8");
      const ppid = Number(s.slice(s.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(e)]);
    } catch {
      // gone
    }
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]!) ?? []));
  return out;
}

function readdirSyncSafe(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "latin1").replaceAll("\0", " ").trim();
  } catch {
    return "";
  }
}

interface Managed {
  readonly sup: PluginSupervisor;
  readonly nc: Awaited<ReturnType<typeof startTestNats>>["nc"];
  readonly events: { type: "failed" | "started"; plugin: string; at: number; data: Record<string, unknown> }[];
  /** Epoch ms of each "plugin ready" log line of the plugins (their SDK's own clock reading). */
  readonly readyLogs: { plugin: string; time: number }[];
  close(): Promise<void>;
}

async function startManaged(names: readonly string[], log: (line: string) => void): Promise<Managed> {
  const work = await mkdtemp(join(tmpdir(), "flexcore-bench-plugins-"));
  await chmod(work, 0o755);
  const credentialsDir = join(work, "creds");
  const users = await generatePluginUsers({ services: names, dir: credentialsDir });
  const nats = await startTestNats({ extraUsers: users.entries });
  await ensureTopology(nats.nc);
  const specs: PluginLaunchSpec[] = [];
  for (const name of names) {
    const dir = await buildBundle(name, join(work, "bundles"));
    const manifest = parseManifest(readFileSync(join(dir, "flexcore-plugin.yaml")));
    specs.push(launchSpec(manifest, dir, { instances: 1, config: {} }));
  }
  const events: Managed["events"] = [];
  const readyLogs: Managed["readyLogs"] = [];
  const lifecycle = {
    loaded: async () => undefined,
    health: async () => undefined,
    stopped: async () => undefined,
    close: async () => undefined,
    started: async (e: Record<string, unknown>) => void events.push({ type: "started", plugin: String(e.plugin), at: performance.now(), data: e }),
    failed: async (e: Record<string, unknown>) => void events.push({ type: "failed", plugin: String(e.plugin), at: performance.now(), data: e }),
  } as unknown as PluginLifecycle;
  const sup = await startPluginSupervisor({
    nc: nats.nc,
    plugins: specs,
    natsUrl: nats.server.url,
    credentialsDir,
    lifecycle,
    graceMs: 2_000,
    crashLoop: { failures: 5, windowMs: BENCH_CRASH_WINDOW_MS },
    log: (line, level) => {
      const ready = /^\[plugin ([a-z0-9-]+)\] (\{.*"msg":"plugin ready".*\})$/.exec(line);
      if (ready) {
        readyLogs.push({ plugin: ready[1]!, time: Number((JSON.parse(ready[2]!) as { time: number }).time) });
        return;
      }
      if (level && !/"level":30/.test(line)) log(line);
    },
  });
  for (const name of names) await sup.ready(name, 60_000);
  return {
    sup,
    nc: nats.nc,
    events,
    readyLogs,
    close: async () => {
      await sup.stop();
      await nats.close();
      await rm(work, { recursive: true, force: true });
    },
  };
}

/** Idle memory of every shipped plugin: RSS and PSS of all processes of its sandbox (bubblewrap included), per plugin and in total. */
export async function idleMemory(log: (line: string) => void, env: Record<string, unknown>): Promise<BenchResult[]> {
  const m = await startManaged(SHIPPED, log);
  try {
    await new Promise((r) => setTimeout(r, IDLE_MS));
    const results: BenchResult[] = [];
    let rss = 0;
    let pss = 0;
    let uss = 0;
    const detail: Record<string, unknown> = {};
    for (const name of SHIPPED) {
      const pids = m.sup.status(name).instances.flatMap((i) => (i.pid === undefined ? [] : tree(i.pid)));
      const per = pids.map((p) => ({ pid: p, cmd: cmdline(p).slice(0, 80), ...memoryOf(p) }));
      const r = per.reduce((a, b) => a + b.rssKb, 0) / 1024;
      const p = per.reduce((a, b) => a + b.pssKb, 0) / 1024;
      const u = per.reduce((a, b) => a + b.ussKb, 0) / 1024;
      rss += r;
      pss += p;
      uss += u;
      detail[name] = per;
      results.push({ name: `idle-memory.${name}.pss`, unit: "MB", median: p, samples: [p], extra: { rssMb: r, ussMb: u, processes: per.length } });
      log(`  ${name}: PSS ${p.toFixed(1)} MB, USS ${u.toFixed(1)} MB, RSS ${r.toFixed(1)} MB in ${per.length} processes`);
    }
    env.idleMemoryProcesses = detail;
    results.push({ name: "idle-memory.all.pss", unit: "MB", median: pss, samples: [pss], extra: { goal: "≤ 300 MB", met: pss <= 300, ussMb: uss, rssSumMb: rss, plugins: SHIPPED.length, note: "PSS splits pages shared between processes (the node and python3 binaries, shared libraries) among them; the RSS sum counts them once per process" } });
    return results;
  } finally {
    await m.close();
  }
}

/**
 * kill -9 of the plugin's process (the interpreter inside the sandbox), then `echo` step calls
 * until one is answered; `kills` times per echo, each after a healthy run.
 */
export async function killToAnswer(kills: number, log: (line: string) => void): Promise<BenchResult[]> {
  const names = ["echo", "echo-py"] as const;
  const m = await startManaged(names, log);
  const results: BenchResult[] = [];
  try {
    for (const name of names) {
      const client = createPluginClient(m.nc, name, { callTimeoutMs: 250 });
      const call = () => client.callStep("echo", { tenant: "bench", input: { ok: 1 }, run: { id: "bench", workflow: "bench", attempt: 1 } });
      const total: number[] = [];
      const parts = { detect: [] as number[], delay: [] as number[], launchToPluginReady: [] as number[], pluginReadyToAnswer: [] as number[], supervisorSeesReady: [] as number[] };
      for (let k = 0; k < kills; k++) {
        await call();
        // Each kill after a healthy run: the last failure is out of the crash-loop window.
        await new Promise((r) => setTimeout(r, BENCH_CRASH_WINDOW_MS + 200));
        const outer = m.sup.status(name).instances[0]!.pid!;
        // The interpreter itself (prlimit and setpriv exec into it), not bubblewrap, whose command line names main.* too.
        const inner = tree(outer).slice(1).filter((p) => /^\S*(node|python3)\b.*main\.(js|py)/.test(cmdline(p))).at(-1);
        if (inner === undefined) throw new Error(`bench: no interpreter process under the sandbox of ${name} (pid ${outer})`);
        const seen = m.events.length;
        const seenLogs = m.readyLogs.length;
        const epoch0 = Date.now();
        const t0 = performance.now();
        process.kill(inner, "SIGKILL");
        for (;;) {
          try {
            await call();
            break;
          } catch {
            await new Promise((r) => setTimeout(r, 2));
          }
        }
        const t1 = performance.now();
        total.push(t1 - t0);
        // The supervisor's own readiness (INFO with the nonce) may come after the first answer.
        const deadline = Date.now() + 3_000;
        while (!m.events.slice(seen).some((e) => e.type === "started" && e.plugin === name) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
        const failed = m.events.slice(seen).find((e) => e.type === "failed" && e.plugin === name);
        const started = m.events.slice(seen).find((e) => e.type === "started" && e.plugin === name);
        const readyLog = m.readyLogs.slice(seenLogs).find((l) => l.plugin === name);
        if (failed) {
          const delay = Number(failed.data.nextRestartInMs);
          const launchedAt = failed.at + delay;
          parts.detect.push(failed.at - t0);
          parts.delay.push(delay);
          if (readyLog) {
            const readyAt = t0 + (readyLog.time - epoch0);
            parts.launchToPluginReady.push(readyAt - launchedAt);
            parts.pluginReadyToAnswer.push(t1 - readyAt);
          }
          if (started) parts.supervisorSeesReady.push(started.at - launchedAt);
        }
      }
      const med = (xs: number[]) => percentile(xs, 50);
      const goal = GOALS_MS[name]!;
      const p50 = med(total);
      results.push({
        name: `${name}.kill9-to-answer.p50`,
        unit: "ms",
        median: p50,
        samples: total,
        extra: {
          goal: `≤ ${goal} ms`,
          met: p50 <= goal,
          p90: percentile(total, 90),
          parts: { detectExitMs: med(parts.detect), restartDelayMs: med(parts.delay), launchToPluginReadyMs: med(parts.launchToPluginReady), pluginReadyToAnswerMs: med(parts.pluginReadyToAnswer), launchToSupervisorReadyMs: med(parts.supervisorSeesReady) },
        },
      });
      log(`  ${name}: kill -9 → answering p50 ${p50.toFixed(0)} ms, p90 ${percentile(total, 90).toFixed(0)} ms (exit seen ${med(parts.detect).toFixed(0)}, restart delay ${med(parts.delay).toFixed(0)}, launch → plugin ready (sandbox, interpreter, NATS connect, subscriptions) ${med(parts.launchToPluginReady).toFixed(0)}, plugin ready → answered ${med(parts.pluginReadyToAnswer).toFixed(0)}; the supervisor's INFO handshake saw it ready ${med(parts.supervisorSeesReady).toFixed(0)} ms after launch)`);
    }
    return results;
  } finally {
    await m.close();
  }
}
