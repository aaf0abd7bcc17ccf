import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { sweepStaleWorkDirs } from "../processors/index.js";
import { ensureTopology } from "../streams/index.js";
import { createWorkflowClient } from "./index.js";
import type { WorkflowClient } from "./index.js";

const CHILD = fileURLToPath(new URL("../test/workflow-runner-child.ts", import.meta.url));
const KILLS = 10;
const RUNS = 10;

let nats: TestNats;
let client: WorkflowClient;
const children = new Set<ChildProcess>();

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  client = await createWorkflowClient(nats.nc);
});
afterAll(async () => {
  const gone = [...children].map((c) => new Promise((r) => c.once("exit", r)));
  for (const c of children) c.kill("SIGKILL");
  await Promise.all(gone);
  // The killed runners could not delete their steps' working directories.
  await sweepStaleWorkDirs(tmpdir());
  await client?.close();
  await nats?.close();
});

interface Child {
  readonly proc: ChildProcess;
  readonly ready: Promise<void>;
  isReady: boolean;
}

function startChild(id: string): Child {
  const proc = spawn(process.execPath, ["--import", "tsx", CHILD, nats.server.url, id], { stdio: ["ignore", "pipe", "inherit"] });
  children.add(proc);
  proc.once("exit", () => children.delete(proc));
  const child: Child = {
    proc,
    isReady: false,
    ready: new Promise<void>((resolve, reject) => {
      proc.stdout!.on("data", (d: Buffer) => {
        if (!d.toString().includes("ready")) return;
        child.isReady = true;
        resolve();
      });
      proc.once("exit", (code, signal) => (signal === "SIGKILL" ? resolve() : reject(new Error(`runner ${id} exited with ${code} before it was ready`))));
    }),
  };
  return child;
}

async function killChild(child: ChildProcess): Promise<void> {
  const gone = new Promise((r) => child.once("exit", r));
  child.kill("SIGKILL");
  await gone;
}

const sleepStep = (ms: number): string => `function main(a) { return new Promise((r) => setTimeout(() => r({ step: a.step, at: Date.now() }), ${ms})); }`;

it(`kill -9 of runners ${KILLS} times during runs: every run ends, no succeeded step runs again`, async () => {
  const tenant = uniqueName("crash");
  await client.put(tenant, {
    name: "crashy",
    steps: [
      { id: "a", kind: "script", language: "javascript", trusted: true, source: sleepStep(150), input: { step: "a" } },
      { id: "b", kind: "script", language: "bash", source: "sleep 0.2; echo '{\"step\": \"b\"}'" },
      { id: "c1", needs: ["b"], kind: "script", language: "javascript", trusted: true, source: sleepStep(200), input: { step: "c1" } },
      { id: "c2", needs: ["b"], kind: "script", language: "python", source: "import time\ndef main(a):\n    time.sleep(0.2)\n    return {'step': 'c2'}" },
      { id: "d", needs: ["c1", "c2"], kind: "script", language: "javascript", trusted: true, source: sleepStep(100), input: { step: "d", c1: "${{ steps.c1.output.step }}" } },
    ],
  });
  // Three runner processes share the runs; each kill hits one that is driving runs, and a
  // replacement starts at once (without waiting for it: the others keep working meanwhile).
  const runners = [startChild("r0"), startChild("r1"), startChild("r2")];
  await Promise.all(runners.map((r) => r.ready));
  const runIds: string[] = [];
  for (let i = 0; i < RUNS; i++) runIds.push((await client.start(tenant, "crashy", { input: { i } })).runId);
  for (let k = 0; k < KILLS; k++) {
    await new Promise((r) => setTimeout(r, 300 + Math.random() * 400));
    let i = runners.findIndex((r) => r.isReady);
    if (i < 0) {
      await Promise.race(runners.map((r) => r.ready));
      i = runners.findIndex((r) => r.isReady);
    }
    await killChild(runners[i]!.proc);
    runners[i] = startChild(`r${i}-${k}`);
  }
  const finals = await Promise.all(runIds.map((id) => client.wait(tenant, id, { timeoutMs: 120_000, pollMs: 200 })));
  let interrupted = 0;
  for (const [i, s] of finals.entries()) {
    expect(s.status, runIds[i]).toBe("succeeded");
    const events = await client.events(tenant, runIds[i]!);
    const succeeded = new Set<string>();
    for (const e of events) {
      const d = e.data as { step?: string; interrupted?: boolean };
      if (e.type === "StepStarted") expect(succeeded.has(d.step!), `${runIds[i]}: ${d.step} started again after it succeeded`).toBe(false);
      if (e.type === "StepSucceeded") {
        expect(succeeded.has(d.step!), `${runIds[i]}: ${d.step} succeeded twice`).toBe(false);
        succeeded.add(d.step!);
      }
      if (e.type === "StepFailed" && d.interrupted) interrupted += 1;
    }
    expect([...succeeded].sort()).toEqual(["a", "b", "c1", "c2", "d"]);
    expect(s.steps.d!.output).toMatchObject({ step: "d" });
    expect(events.filter((e) => e.type === "RunSucceeded")).toHaveLength(1);
  }
  // The kills did land in the middle of steps.
  expect(interrupted).toBeGreaterThan(0);
  // 35-50 s measured on 2 busy cores (load 10-15); the bound leaves room for a worse day.
}, 170_000);
