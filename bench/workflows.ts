import { spawn } from "node:child_process";
import { createScriptRunner, sandboxSupport } from "../processors/index.js";
import type { ScriptLanguage, ScriptRunner } from "../processors/index.js";
import { ensureTopology } from "../streams/index.js";
import { createOperatorTrust, createWorkflowClient, startWorkflowRunner } from "../workflows/index.js";
import { createEscapeFixture, PLAIN_GUARANTEED, runEscapeSuite } from "../test/sandbox-escapes.js";
import { percentile, runTasks, startBenchNats } from "./harness.js";
import type { BenchResult, Suite, Task } from "./harness.js";

const TRUSTED_STEPS = 5_000;
const TRUSTED_IN_FLIGHT = 256;
const SANDBOXED_SAMPLES = 40;
const RUNS = 1_000;
const RUNS_IN_FLIGHT = 256;
const TRIVIAL: Record<"python" | "bash", string> = {
  python: "def main(args):\n    return {'ok': True, 'n': args['n']}",
  bash: "read -r x; echo '{\"ok\": true}'",
};
const JS_STEP = "function main(args) { return { n: args.n + 1, tag: 'x' + args.n }; }";

async function pooled(n: number, inFlight: number, one: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(inFlight, n) }, async () => {
    while (next < n) await one(next++);
  }));
}

// The baseline of a sandboxed step: the same interpreter started as a bare child process.
function bareSpawn(file: string, args: string[]): Promise<number> {
  const t = performance.now();
  return new Promise((resolve, reject) => {
    const c = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"] });
    c.once("error", reject);
    c.once("close", () => resolve(performance.now() - t));
    c.stdout.resume();
    c.stderr.resume();
  });
}

async function latencies(n: number, one: () => Promise<number>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await one());
  return out;
}

export const suite: Suite = {
  name: "workflows",
  description: "script steps (trusted, sandboxed) and durable workflow runs, beside their baselines; sandbox escape count",
  async run({ log, env }) {
    const support = await sandboxSupport();
    env.sandbox = support.mode;
    env.bwrap = support.bwrapVersion ?? "absent";
    const results: BenchResult[] = [];

    // --- trusted JavaScript steps (Piscina worker threads) vs calling the function in process.
    await using trusted = await createScriptRunner({ maxConcurrent: 4 });
    const fn = new Function(`${JS_STEP}; return main;`)() as (a: { n: number }) => unknown;
    const trustedTasks: Task[] = [
      {
        name: "baseline.js-in-process", unit: "steps/s", ops: TRUSTED_STEPS,
        fn: () => {
          for (let i = 0; i < TRUSTED_STEPS; i++) JSON.parse(JSON.stringify(fn({ n: i })));
        },
      },
      {
        name: "step.js-trusted", unit: "steps/s", ops: TRUSTED_STEPS, extra: { goal: 5_000, inFlight: TRUSTED_IN_FLIGHT },
        fn: async () => {
          await pooled(TRUSTED_STEPS, TRUSTED_IN_FLIGHT, async (i) => {
            const r = await trusted.run({ language: "javascript", trusted: true, source: JS_STEP }, { n: i });
            if (r.status !== "succeeded") throw new Error(`trusted step failed: ${r.error}`);
          });
        },
      },
    ];
    log("trusted JavaScript steps");
    results.push(...(await runTasks(trustedTasks, { log })));

    // --- sandboxed Python and Bash: per-step latency, bwrap and plain, beside a bare spawn.
    const runners: Array<["bwrap" | "plain", ScriptRunner]> = [];
    if (support.mode === "bwrap") runners.push(["bwrap", await createScriptRunner({ sandbox: "bwrap" })]);
    runners.push(["plain", await createScriptRunner({ sandbox: "plain" })]);
    for (const language of ["python", "bash"] as const satisfies readonly ScriptLanguage[]) {
      const bare = language === "python" ? (): Promise<number> => bareSpawn("/usr/bin/python3", ["-c", "print('{}')"]) : (): Promise<number> => bareSpawn("/bin/bash", ["-c", "echo '{}'"]);
      const baseline = await latencies(SANDBOXED_SAMPLES, bare);
      results.push({ name: `baseline.spawn.${language}.p50`, unit: "ms", median: percentile(baseline, 50), samples: baseline, extra: { what: "the interpreter as a bare child process, no limits, no sandbox" } });
      for (const [isolation, runner] of runners) {
        log(`sandboxed ${language} (${isolation})`);
        await runner.run({ language, source: TRIVIAL[language] }, { n: 0 });
        // Timed by the caller: the queue and the hop to the supervising Piscina thread count too.
        const samples = await latencies(SANDBOXED_SAMPLES, async () => {
          const t = performance.now();
          const r = await runner.run({ language, source: TRIVIAL[language] }, { n: 1 });
          if (r.status !== "succeeded") throw new Error(`${language} step failed: ${r.error}`);
          return performance.now() - t;
        });
        const extra = { language, isolation, samples: SANDBOXED_SAMPLES, timed: "caller-side, run() to result" };
        results.push({ name: `step.sandboxed.p50.${language}.${isolation}`, unit: "ms", median: percentile(samples, 50), samples, extra });
        results.push({ name: `step.sandboxed.p99.${language}.${isolation}`, unit: "ms", median: percentile(samples, 99), samples, extra });
        log(`  ${language} ${isolation}: p50 ${percentile(samples, 50).toFixed(1)} ms, p99 ${percentile(samples, 99).toFixed(1)} ms`);
      }
    }

    // --- durable workflow runs against a real nats-server.
    const nats = await startBenchNats();
    const { server, nc } = nats;
    env.natsServer = server.version;
    try {
      await ensureTopology(nc);
      const client = await createWorkflowClient(nc);
      // Trusted steps: the definition is installed through the operator's path, as flexcore.yaml's files are.
      const trust = createOperatorTrust();
      const runner = await startWorkflowRunner(await nats.connect(), { scripts: trusted, trust, maxRuns: RUNS_IN_FLIGHT * 2, triggers: false });
      const step = (id: string, input: string): object => ({ id, kind: "script", language: "javascript", trusted: true, source: JS_STEP, input: { n: input } });
      await client.put("bench", { name: "three", steps: [step("a", "${{ input.n }}"), step("b", "${{ steps.a.output.n }}"), step("c", "${{ steps.b.output.n }}")] }, { operator: trust });
      let batch = 0;
      const waiters = new Map<string, (type: string) => void>();
      nc.subscribe("evt.bench.workflow.*", {
        callback: (_err, msg) => {
          const type = msg.headers?.get("Flex-Type");
          if (type !== "RunSucceeded" && type !== "RunFailed") return;
          const runId = msg.subject.split(".")[3]!;
          waiters.get(runId)?.(type);
          waiters.delete(runId);
        },
      });
      const workflowTasks: Task[] = [
        {
          // The same three steps, awaited one after another with no events, leases or index.
          name: "baseline.3-steps-no-durability", unit: "runs/s", ops: RUNS,
          fn: async () => {
            await pooled(RUNS, RUNS_IN_FLIGHT, async (i) => {
              let n = i;
              for (let k = 0; k < 3; k++) n = ((await trusted.run({ language: "javascript", trusted: true, source: JS_STEP }, { n })).output as { n: number }).n;
            });
          },
        },
        {
          name: "workflow.3-steps", unit: "runs/s", ops: RUNS, extra: { goal: 500, inFlight: RUNS_IN_FLIGHT },
          fn: async () => {
            batch += 1;
            const prefix = `b${batch}x`;
            await pooled(RUNS, RUNS_IN_FLIGHT, async (i) => {
              const runId = `${prefix}${i}`;
              // Resolved by the run's RunSucceeded/RunFailed, seen on a plain subscription.
              const ended = new Promise<string>((resolve) => waiters.set(runId, resolve));
              await runner.start("bench", "three", { input: { n: i }, runId });
              const type = await ended;
              if (type !== "RunSucceeded") throw new Error(`run ${runId} ended ${type}`);
            });
          },
        },
      ];
      log("workflow runs");
      results.push(...(await runTasks(workflowTasks, { log, iterations: 3 })));
      await runner.close();
      await client.close();

      // --- the escape attempts of the integration tests, counted.
      log("sandbox escape attempts");
      const fx = await createEscapeFixture(server.port);
      try {
        if (support.mode === "bwrap") {
          await using bwrap = await createScriptRunner({ sandbox: "bwrap", maxConcurrent: 3 });
          const outcomes = await runEscapeSuite(bwrap, fx);
          const escaped = outcomes.filter((o) => o.escaped);
          for (const o of escaped) log(`  ESCAPED ${o.language}/${o.attack}: ${o.detail}`);
          results.push({ name: "sandbox.escapes", unit: "count", median: escaped.length, samples: [escaped.length], extra: { goal: 0, attempts: outcomes.length, isolation: "bwrap" } });
        }
        await using plainRunner = await createScriptRunner({ sandbox: "plain", maxConcurrent: 3 });
        const plain = await runEscapeSuite(plainRunner, fx, PLAIN_GUARANTEED);
        const plainEscaped = plain.filter((o) => o.escaped).length;
        results.push({ name: "sandbox.escapes.plain", unit: "count", median: plainEscaped, samples: [plainEscaped], extra: { attempts: plain.length, attacks: PLAIN_GUARANTEED, note: "plain mode is tested only on what it promises; see docs/workflows.md" } });
      } finally {
        await fx.close();
      }
    } finally {
      for (const [, r] of runners) await r.close();
      await nats.close();
    }
    return results;
  },
};
