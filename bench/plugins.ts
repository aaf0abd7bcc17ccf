import { spawn } from "node:child_process";
import type { NatsConnection } from "@nats-io/transport-node";
import { createPluginClient, discoverPlugins, echoPluginCommand } from "../plugins/index.js";
import { startPluginTestNats } from "../test/plugin-nats.js";
import { percentile, runTasks } from "./harness.js";
import type { BenchResult, Suite } from "./harness.js";

/** Sequential round trips per measured iteration (`--calls N` or FLEXCORE_BENCH_PLUGIN_CALLS). */
const DEFAULT_CALLS = 4_000;
/** Calls per throughput iteration = this × calls. */
const THROUGHPUT_FACTOR = 5;
const IN_FLIGHT = 64;
const RUN = { id: "bench", workflow: "bench", attempt: 1 };

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

async function waitReady(nc: NatsConnection, nonce: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if ((await discoverPlugins(nc, { name: "echo", nonce, timeoutMs: 200, limit: 1 })).length > 0) return;
  }
  throw new Error("the echo plugin did not become ready within 30 s");
}

export const suite: Suite = {
  name: "plugins",
  description: "TypeScript echo plugin (child process) round trip p50/p99 beside a bare in-process nc.request, and calls/s with 64 in flight",
  async run({ args, log, env }) {
    const calls = callsFrom(args);
    await using nats = await startPluginTestNats({ plugins: ["echo"] });
    const pluginEnv = nats.pluginEnv("echo", { FLEXCORE_PLUGIN_CONCURRENCY: String(IN_FLIGHT), LOG_LEVEL: "warn" });
    const { command, args: argv } = echoPluginCommand();
    const child = spawn(command, [...argv], { env: { PATH: process.env.PATH ?? "", ...pluginEnv }, stdio: ["ignore", "inherit", "inherit"] });
    env.pluginCommand = [command, ...argv].join(" ");
    const results: BenchResult[] = [];
    try {
      await waitReady(nats.nc, pluginEnv.FLEXCORE_PLUGIN_NONCE!);
      const client = createPluginClient(nats.nc, "echo", { callTimeoutMs: 10_000 });
      const echo = (i: number) => client.callStep("echo", { tenant: "bench", input: { n: i }, run: RUN });

      // Baseline: the same body to a plain subscription on another connection of this process.
      const responder = await nats.connect();
      responder.subscribe("bench.bare", {
        callback: (_e, m) => {
          m.respond(JSON.stringify({ output: (JSON.parse(new TextDecoder().decode(m.data)) as { input: unknown }).input }));
        },
      });
      await responder.flush();
      const bare = (i: number) => nats.nc.request("bench.bare", JSON.stringify({ protocol: 1, tenant: "bench", step: "echo", input: { n: i }, run: RUN }), { timeout: 10_000 });

      const p99: Record<string, number[]> = { "bare.rtt.p99": [], "echo.rtt.p99": [] };
      const [bareP50, echoP50] = await runTasks([
        { name: "bare.rtt.p50", unit: "ms", fn: async () => { const ms = await roundTrips(calls, bare); p99["bare.rtt.p99"]!.push(percentile(ms, 99)); return percentile(ms, 50); } },
        { name: "echo.rtt.p50", unit: "ms", fn: async () => { const ms = await roundTrips(calls, echo); p99["echo.rtt.p99"]!.push(percentile(ms, 99)); return percentile(ms, 50); }, extra: { goal: "≤ 0.5 ms" } },
      ], { log });
      results.push(bareP50!, echoP50!);
      for (const [name, samples] of Object.entries(p99)) {
        const kept = samples.slice(-5);
        const sorted = [...kept].sort((a, b) => a - b);
        results.push({ name, unit: "ms", median: sorted[sorted.length >> 1]!, samples: kept, ...(name.startsWith("echo") ? { extra: { goal: "≤ 3 ms" } } : {}) });
      }
      const r = echoP50!.median / bareP50!.median;
      results.push({ name: "echo/bare.rtt.p50", unit: "x", median: r, samples: [r], extra: { goal: "≤ 2.5", met: r <= 2.5 } });

      const n = calls * THROUGHPUT_FACTOR;
      const [throughput] = await runTasks([{ name: `echo.calls.${IN_FLIGHT}-in-flight`, unit: "calls/s", ops: n, fn: () => pooled(n, IN_FLIGHT, echo), extra: { goal: "≥ 15000" } }], { log });
      results.push(throughput!);
      await responder.close();
    } finally {
      child.kill("SIGTERM");
      await new Promise((resolve) => {
        const t = setTimeout(() => { child.kill("SIGKILL"); resolve(undefined); }, 5_000);
        child.once("exit", () => { clearTimeout(t); resolve(undefined); });
      });
    }
    return results;
  },
};
