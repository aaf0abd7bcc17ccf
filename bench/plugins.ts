import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import type { ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { NatsConnection } from "@nats-io/transport-node";
import { compileTransform, createPluginClient, discoverPlugins, echoPluginCommand, jsonTransformPluginCommand, pythonSdkDir } from "../plugins/index.js";
import type { ProcessorInput, ProcessorOutput } from "../plugins/index.js";
import { startPluginTestNats } from "../test/plugin-nats.js";
import type { PluginTestNats } from "../test/plugin-nats.js";
import { percentile, runTasks } from "./harness.js";
import { DEFAULT_KILLS, idleMemory, killToAnswer, SHIPPED } from "./plugins-managed.js";
import { transformThroughRuntime } from "./plugins-runtime.js";
import type { BenchResult, Suite } from "./harness.js";

/** Sequential round trips per measured iteration (`--calls N` or FLEXCORE_BENCH_PLUGIN_CALLS). */
const DEFAULT_CALLS = 4_000;
/** Calls per throughput iteration = this × calls. */
const THROUGHPUT_FACTOR = 5;
const IN_FLIGHT = 64;
const RUN = { id: "bench", workflow: "bench", attempt: 1 };

/** Events through json-transform per iteration (`--events N` or FLEXCORE_BENCH_PLUGIN_EVENTS). */
const DEFAULT_EVENTS = 100_000;
const TRANSFORM_BATCH = 256;
/** Batches in flight for the second json-transform figure (partitions of a processor run side by side). */
const TRANSFORM_IN_FLIGHT = 4;
const TRANSFORM_OPTIONS = {
  pick: ["order.id", "order.total", "order.currency", "customer.email", "customer.tier"],
  rename: { "order.total": "total", "customer.email": "email" },
  default: { "order.currency": "EUR", "customer.tier": "basic" },
  cast: { total: "number", "order.id": "string" },
  filter: [{ path: "total", op: "gte", value: 5 }],
  type: "OrderSummary",
};

function eventsFrom(args: readonly string[]): number {
  const at = args.indexOf("--events");
  const text = at >= 0 ? args[at + 1] : process.env.FLEXCORE_BENCH_PLUGIN_EVENTS;
  const n = text === undefined ? DEFAULT_EVENTS : Number(text);
  if (!Number.isInteger(n) || n < TRANSFORM_BATCH) throw new Error(`--events: expected an integer from ${TRANSFORM_BATCH} and up, got ${JSON.stringify(text)}`);
  return n;
}

function transformBatches(events: number): ProcessorInput[][] {
  const batches: ProcessorInput[][] = [];
  for (let start = 0; start < events; start += TRANSFORM_BATCH) {
    const batch: ProcessorInput[] = [];
    for (let i = start; i < Math.min(events, start + TRANSFORM_BATCH); i++) {
      const key = `c${i % 64}`;
      batch.push({ seq: i + 1, subject: `evt.bench.orders.${key}`, key, id: `o${i}`, type: "OrderPlaced", time: "2026-01-01T00:00:00.000Z", data: { order: { id: i, total: String((i % 100) + 0.5), lines: [{ sku: "A", qty: 1 }] }, customer: { email: `u${i}@example.com`, tier: i % 3 ? "gold" : null, address: { city: "Lyon" } } } });
    }
    batches.push(batch);
  }
  return batches;
}

/** utime + stime of a process, in ms, from /proc (the kernel's clock ticks are 100 a second on Linux). */
function processCpuMs(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return Number.NaN;
  }
}

function stop(child: ReturnType<typeof spawn>): Promise<void> {
  child.kill("SIGTERM");
  return new Promise((resolve) => {
    const t = setTimeout(() => { child.kill("SIGKILL"); resolve(); }, 5_000);
    child.once("exit", () => { clearTimeout(t); resolve(); });
  });
}

/** Parts of the suite (`--parts a,b`): all by default. */
const PARTS = ["echo", "transform", "restart", "memory"] as const;
type Part = (typeof PARTS)[number];

function partsFrom(args: readonly string[]): ReadonlySet<Part> {
  const at = args.indexOf("--parts");
  if (at < 0) return new Set(PARTS);
  const list = (args[at + 1] ?? "").split(",").filter(Boolean);
  const bad = list.filter((p) => !(PARTS as readonly string[]).includes(p));
  if (list.length === 0 || bad.length > 0) throw new Error(`--parts: expected a comma list of ${PARTS.join(", ")}, got ${JSON.stringify(args[at + 1])}`);
  return new Set(list as Part[]);
}

function killsFrom(args: readonly string[]): number {
  const at = args.indexOf("--kills");
  const text = at >= 0 ? args[at + 1] : process.env.FLEXCORE_BENCH_PLUGIN_KILLS;
  const n = text === undefined ? DEFAULT_KILLS : Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--kills: expected an integer from 1 and up, got ${JSON.stringify(text)}`);
  return n;
}

function callsFrom(args: readonly string[]): number {
  const at = args.indexOf("--calls");
  const text = at >= 0 ? args[at + 1] : process.env.FLEXCORE_BENCH_PLUGIN_CALLS;
  const n = text === undefined ? DEFAULT_CALLS : Number(text);
  if (!Number.isInteger(n) || n < 10) throw new Error(`--calls: expected an integer from 10 and up, got ${JSON.stringify(text)}`);
  return n;
}

async function roundTrips(n: number, one: (i: number) => Promise<unknown>): Promise<number[]> {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await one(i);
    ms.push(performance.now() - t);
  }
  return ms;
}

async function pooled(n: number, inFlight: number, one: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(inFlight, n) }, async () => {
    while (next < n) await one(next++);
  }));
}

async function waitReady(nc: NatsConnection, name: string, nonce: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if ((await discoverPlugins(nc, { name, nonce, timeoutMs: 200, limit: 1 })).length > 0) return;
  }
  throw new Error(`the ${name} plugin did not become ready within 30 s`);
}

/** The two echo implementations: the TypeScript `echo` and the Python `echo-py` (stdlib SDK). */
const ECHOES = [
  { name: "echo", command: echoPluginCommand, goal: 15_000 },
  { name: "echo-py", command: () => ({ command: "python3", args: ["-B", pythonEchoMain()] }), goal: 4_000 },
] as const;

/** plugins/echo-py/main.py of this checkout, from bench/ (tsx) or dist/bench/ (built; tsc copies no .py). */
function pythonEchoMain(): string {
  const candidates = ["../plugins/echo-py/main.py", "../../plugins/echo-py/main.py"].map((p) => fileURLToPath(new URL(p, import.meta.url)));
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`plugins/echo-py/main.py not found (looked at ${candidates.join(", ")})`);
  return found;
}

interface Running {
  readonly child: ChildProcess;
  readonly commandLine: string;
  stop(): Promise<void>;
}

async function launchEcho(nats: PluginTestNats, echo: (typeof ECHOES)[number]): Promise<Running> {
  const pluginEnv = nats.pluginEnv(echo.name, { FLEXCORE_PLUGIN_CONCURRENCY: String(IN_FLIGHT), LOG_LEVEL: "warn" });
  const { command, args } = echo.command();
  const child = spawn(command, [...args], { env: { PATH: process.env.PATH ?? "", PYTHONPATH: pythonSdkDir(), ...pluginEnv }, stdio: ["ignore", "inherit", "inherit"] });
  const stop = () => new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const t = setTimeout(() => { child.kill("SIGKILL"); resolve(); }, 5_000);
    child.once("exit", () => { clearTimeout(t); resolve(); });
    child.kill("SIGTERM");
  });
  try {
    await waitReady(nats.nc, echo.name, pluginEnv.FLEXCORE_PLUGIN_NONCE!);
  } catch (err) {
    await stop();
    throw err;
  }
  return { child, commandLine: [command, ...args].join(" "), stop };
}

export const suite: Suite = {
  name: "plugins",
  description: "echo plugins (TypeScript echo, Python echo-py; child processes): round trip p50/p99 beside a bare in-process nc.request, and calls/s with 64 in flight; json-transform as a processor plugin (events/s, batches of 256) beside the same transform in-process; kill -9 → answering again and the idle memory of the shipped plugins, managed in the real sandbox (--parts echo,transform,restart,memory; --kills N)",
  async run({ args, log, env }) {
    const calls = callsFrom(args);
    const events = eventsFrom(args);
    const parts = partsFrom(args);
    const results: BenchResult[] = [];
    if (parts.has("restart")) {
      log(`kill -9 → answering again, ${killsFrom(args)} kills per echo, sandboxed`);
      results.push(...(await killToAnswer(killsFrom(args), log)));
    }
    if (parts.has("memory")) {
      log(`idle memory of the ${SHIPPED.length} shipped plugins, sandboxed`);
      results.push(...(await idleMemory(log, env)));
    }
    if (!parts.has("echo") && !parts.has("transform")) return results;
    await using nats = await startPluginTestNats({ plugins: [...ECHOES.map((e) => e.name), "json-transform"] });
    // Baseline: the same body to a plain subscription on another connection of this process.
    const responder = await nats.connect();
    responder.subscribe("bench.bare", {
      callback: (_e, m) => {
        m.respond(JSON.stringify({ output: (JSON.parse(new TextDecoder().decode(m.data)) as { input: unknown }).input }));
      },
    });
    await responder.flush();
    const bare = (i: number) => nats.nc.request("bench.bare", JSON.stringify({ protocol: 1, tenant: "bench", step: "echo", input: { n: i }, run: RUN }), { timeout: 10_000 });
    let bareP50: BenchResult | undefined;
    for (const echo of parts.has("echo") ? ECHOES : []) {
      const running = await launchEcho(nats, echo);
      env[`${echo.name}Command`] = running.commandLine;
      try {
        const client = createPluginClient(nats.nc, echo.name, { callTimeoutMs: 10_000 });
        const call = (i: number) => client.callStep("echo", { tenant: "bench", input: { n: i }, run: RUN });
        const p99: Record<string, number[]> = {};
        const rtt = (name: string, one: (i: number) => Promise<unknown>, extra?: Record<string, unknown>) => ({
          name: `${name}.rtt.p50`,
          unit: "ms",
          extra,
          fn: async () => {
            const ms = await roundTrips(calls, one);
            (p99[`${name}.rtt.p99`] ??= []).push(percentile(ms, 99));
            return percentile(ms, 50);
          },
        });
        const tasks = [...(bareP50 ? [] : [rtt("bare", bare)]), rtt(echo.name, call, { goal: echo.name === "echo" ? "≤ 0.5 ms" : "none (TypeScript's ≤ 0.5 ms for reference)" })];
        const measured = await runTasks(tasks, { log });
        bareP50 ??= measured.find((r) => r.name === "bare.rtt.p50");
        const echoP50 = measured.find((r) => r.name === `${echo.name}.rtt.p50`)!;
        results.push(...measured);
        for (const [name, samples] of Object.entries(p99)) {
          const kept = samples.slice(-5);
          const sorted = [...kept].sort((a, b) => a - b);
          results.push({ name, unit: "ms", median: sorted[sorted.length >> 1]!, samples: kept, ...(name === "echo.rtt.p99" ? { extra: { goal: "≤ 3 ms" } } : {}) });
        }
        const r = echoP50.median / bareP50!.median;
        results.push({ name: `${echo.name}/bare.rtt.p50`, unit: "x", median: r, samples: [r], extra: echo.name === "echo" ? { goal: "≤ 2.5", met: r <= 2.5 } : {} });
        const n = calls * THROUGHPUT_FACTOR;
        const [throughput] = await runTasks([{ name: `${echo.name}.calls.${IN_FLIGHT}-in-flight`, unit: "calls/s", ops: n, fn: () => pooled(n, IN_FLIGHT, call), extra: { goal: `≥ ${echo.goal}` } }], { log });
        results.push({ ...throughput!, extra: { ...throughput!.extra, met: throughput!.median >= echo.goal } });
      } finally {
        await running.stop();
      }
    }
    await responder.close();
    if (parts.has("transform")) results.push(...(await jsonTransform(nats, events, log, env)));
    return results;
  },
};

/** json-transform as a processor plugin over `events` events in batches of 256, beside the same transform in-process. */
async function jsonTransform(nats: Awaited<ReturnType<typeof startPluginTestNats>>, events: number, log: ((line: string) => void) | undefined, env: Record<string, unknown>): Promise<BenchResult[]> {
  const pluginEnv = nats.pluginEnv("json-transform", { FLEXCORE_PLUGIN_CONCURRENCY: "16", LOG_LEVEL: "warn" });
  const { command, args: argv } = jsonTransformPluginCommand();
  const child = spawn(command, [...argv], { env: { PATH: process.env.PATH ?? "", PYTHONPATH: pythonSdkDir(), ...pluginEnv }, stdio: ["ignore", "inherit", "inherit"] });
  env.jsonTransformCommand = [command, ...argv].join(" ");
  env.jsonTransformEvents = events;
  try {
    await waitReady(nats.nc, "json-transform", pluginEnv.FLEXCORE_PLUGIN_NONCE!);
    const batches = transformBatches(events);
    const client = createPluginClient(nats.nc, "json-transform", { callTimeoutMs: 30_000 });
    let kept = 0;
    // The in-process baseline does what the plugin's handler does: one output per kept input.
    const inProcess = (): void => {
      const t = compileTransform(TRANSFORM_OPTIONS);
      kept = 0;
      for (const batch of batches) {
        const outputs: ProcessorOutput[] = [];
        for (let i = 0; i < batch.length; i++) {
          const r = t(batch[i]!.data);
          if (r.kept) outputs.push({ input: i, type: TRANSFORM_OPTIONS.type, data: r.data });
        }
        kept += outputs.length;
      }
    };
    const call = (batch: readonly ProcessorInput[]) => {
      const states: Record<string, null> = {};
      for (const input of batch) states[input.key] = null;
      return client.callProcessor("json-transform", { tenant: "bench", options: TRANSFORM_OPTIONS, states, inputs: batch });
    };
    let pluginKept = 0;
    const [base, sequential, parallel] = await runTasks([
      { name: "json-transform.in-process", unit: "events/s", ops: events, fn: inProcess },
      { name: "json-transform.plugin.batch-256", unit: "events/s", ops: events, fn: async () => { pluginKept = 0; for (const b of batches) pluginKept += (await call(b)).outputs.length; } },
      { name: `json-transform.plugin.batch-256.${TRANSFORM_IN_FLIGHT}-in-flight`, unit: "events/s", ops: events, fn: () => pooled(batches.length, TRANSFORM_IN_FLIGHT, (i) => call(batches[i]!)) },
    ], { log });
    if (pluginKept !== kept) throw new Error(`json-transform: the plugin kept ${pluginKept} events, the in-process transform ${kept}`);
    const ratio = sequential!.median / base!.median;
    const direct: BenchResult[] = [base!, sequential!, parallel!, { name: "json-transform.plugin/in-process", unit: "x", median: ratio, samples: [ratio], extra: { note: "the client alone, not the runtime: see json-transform.runtime.* for the issue's figure" } }];
    // The figure: the processor runtime's real path, plugin vs the same transform in-process.
    log?.("json-transform through the processor runtime (FLEX_EVENTS → FLEX_DERIVED), plugin vs in-process");
    return [...direct, ...(await transformThroughRuntime(nats.nc, events, TRANSFORM_OPTIONS, log ?? (() => undefined), () => processCpuMs(child.pid)))];
  } finally {
    await stop(child);
  }
}
