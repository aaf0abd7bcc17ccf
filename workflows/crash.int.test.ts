import { spawn } from "node:child_process";
import { createServer } from "node:net";
import type { AddressInfo, Socket } from "node:net";
import type { ChildProcess } from "node:child_process";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { sweepStaleWorkDirs } from "../processors/index.js";
import { ensureTopology } from "../streams/index.js";
import { createOperatorTrust, createWorkflowClient } from "./index.js";
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
  readonly id: string;
  readonly proc: ChildProcess;
  readonly ready: Promise<void>;
  isReady: boolean;
}

// The operator's definitions (with trusted steps), handed to every runner process.
const operatorDefinitions: Array<{ tenant: string; definition: object }> = [];

// The server URL a child connects to (its credentials are in nats.env).
function childNatsUrl(): string {
  return nats.server.url;
}

function startChild(id: string): Child {
  const proc = spawn(process.execPath, ["--import", "tsx", CHILD, childNatsUrl(), id, JSON.stringify(operatorDefinitions), "plain"], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, ...nats.env } });
  children.add(proc);
  proc.once("exit", () => children.delete(proc));
  const child: Child = {
    id,
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

// Every execution of a step first reports (run, step, attempt) to this ledger over TCP, so the
// test counts what actually ran, not only what the run's events say. The ledger listens on
// the host's loopback, which a sandboxed step cannot reach even with network: true (its
// network namespace is its own), so the runners here run steps as explicitly plain child
// processes: what is tested is durability, which does not depend on the isolation (the
// death of a step with its host is checked for both in processors/scripts/child-pool.int.test.ts).
async function startLedger(): Promise<{ readonly port: number; readonly lines: string[]; close(): Promise<void> }> {
  const lines: string[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((sock) => {
    sockets.add(sock);
    let buf = "";
    sock.on("data", (d) => (buf += d.toString()));
    sock.on("close", () => {
      sockets.delete(sock);
      for (const l of buf.split("\n")) if (l.trim()) lines.push(l.trim());
    });
    sock.on("error", () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    lines,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

const jsStep = (ms: number): string => `function main(a) { return new Promise((res, rej) => {
  const s = require("net").connect(a.port, "127.0.0.1", () => s.end(JSON.stringify(a) + "\\n"));
  s.on("error", rej);
  s.on("close", () => setTimeout(() => res({ step: a.step, at: Date.now() }), ${ms}));
}); }`;
const BASH_STEP = `read -r x
exec 3<>/dev/tcp/127.0.0.1/$LEDGER_PORT && printf '%s\\n' "$x" >&3 && exec 3>&-
sleep 0.2; echo '{"step": "b"}'`;
const PY_STEP = `import json, socket, time
def main(a):
    s = socket.create_connection(("127.0.0.1", a["port"]))
    s.sendall((json.dumps(a) + "\\n").encode())
    s.close()
    time.sleep(0.2)
    return {"step": "c2"}`;
const who = (step: string, port: number): Record<string, unknown> => ({ step, port, run: "${{ run.id }}", attempt: "${{ run.attempt }}" });

it(`kill -9 of runners ${KILLS} times during runs: every run ends, no succeeded step runs again`, async () => {
  const tenant = uniqueName("crash");
  const ledger = await startLedger();
  const crashy = {
    name: "crashy",
    steps: [
      { id: "a", kind: "script", language: "javascript", trusted: true, source: jsStep(150), input: who("a", ledger.port) },
      { id: "b", kind: "script", language: "bash", network: true, env: { LEDGER_PORT: String(ledger.port) }, source: BASH_STEP, input: who("b", ledger.port) },
      { id: "c1", needs: ["b"], kind: "script", language: "javascript", trusted: true, source: jsStep(200), input: who("c1", ledger.port) },
      { id: "c2", needs: ["b"], kind: "script", language: "python", network: true, source: PY_STEP, input: who("c2", ledger.port) },
      { id: "d", needs: ["c1", "c2"], kind: "script", language: "javascript", trusted: true, source: jsStep(100), input: { ...who("d", ledger.port), c1: "${{ steps.c1.output.step }}" } },
    ],
  };
  // Installed as the operator's: startWorkflows' path, with the same trust in each runner.
  await client.put(tenant, crashy, { operator: createOperatorTrust() });
  operatorDefinitions.push({ tenant, definition: crashy });
  // Three runner processes share the runs; each kill hits one that is in the middle of a step
  // when there is one, and a replacement starts at once (without waiting for it: the others
  // keep working meanwhile).
  const runners = [startChild("r0"), startChild("r1"), startChild("r2")];
  await Promise.all(runners.map((r) => r.ready));
  const runIds: string[] = [];
  for (let i = 0; i < RUNS; i++) runIds.push((await client.start(tenant, "crashy", { input: { i } })).runId);
  // Runners the runs' states show in the middle of a step.
  const busy = async (): Promise<Set<string>> => {
    const states = await Promise.all(runIds.map((id) => client.status(tenant, id).catch(() => undefined)));
    const steps = states.flatMap((st) => Object.values(st?.steps ?? {}));
    return new Set(steps.flatMap((step) => (step.status === "running" && step.runner ? [step.runner] : [])));
  };
  for (let k = 0; k < KILLS; k++) {
    await new Promise((r) => setTimeout(r, 300 + Math.random() * 400));
    if (!runners.some((r) => r.isReady)) await Promise.race(runners.map((r) => r.ready));
    // A runner in the middle of a step if there is one (so kills land mid-step however fast
    // the machine), else the first one up.
    const driving = await busy();
    let i = runners.findIndex((r) => r.isReady && driving.has(r.id));
    if (i < 0) i = runners.findIndex((r) => r.isReady);
    await killChild(runners[i]!.proc);
    runners[i] = startChild(`r${i}-${k}`);
  }
  const finals = await Promise.all(runIds.map((id) => client.wait(tenant, id, { timeoutMs: 120_000, pollMs: 200 })));
  await ledger.close();
  // (run, step) -> attempts that actually ran.
  const ran = new Map<string, number[]>();
  for (const l of ledger.lines) {
    // A line cut by a kill is an execution that stopped before it did anything.
    let e: { run: string; step: string; attempt: number };
    try {
      e = JSON.parse(l) as typeof e;
    } catch {
      continue;
    }
    const k = `${e.run}/${e.step}`;
    ran.set(k, [...(ran.get(k) ?? []), e.attempt]);
  }
  let interrupted = 0;
  for (const [i, s] of finals.entries()) {
    expect(s.status, runIds[i]).toBe("succeeded");
    const events = await client.events(tenant, runIds[i]!);
    const succeeded = new Map<string, number>();
    const started = new Map<string, number[]>();
    for (const e of events) {
      const d = e.data as { step?: string; attempt?: number; interrupted?: boolean };
      if (e.type === "StepStarted") {
        expect(succeeded.has(d.step!), `${runIds[i]}: ${d.step} started again after it succeeded`).toBe(false);
        started.set(d.step!, [...(started.get(d.step!) ?? []), d.attempt!]);
      }
      if (e.type === "StepSucceeded") {
        expect(succeeded.has(d.step!), `${runIds[i]}: ${d.step} succeeded twice`).toBe(false);
        succeeded.set(d.step!, d.attempt!);
      }
      if (e.type === "StepFailed" && d.interrupted) interrupted += 1;
    }
    expect([...succeeded.keys()].sort()).toEqual(["a", "b", "c1", "c2", "d"]);
    for (const [step, attempt] of succeeded) {
      // What ran: each attempt at most once, only attempts the log started, and the succeeded
      // one among them; so nothing of the step ran after its success was recorded.
      const attempts = ran.get(`${runIds[i]}/${step}`) ?? [];
      expect(new Set(attempts).size, `${runIds[i]}/${step} ran an attempt twice: ${attempts}`).toBe(attempts.length);
      for (const a of attempts) expect(started.get(step), `${runIds[i]}/${step} ran attempt ${a} that no StepStarted records`).toContain(a);
      expect(attempts, `${runIds[i]}/${step}`).toContain(attempt);
      expect(Math.max(...attempts)).toBe(attempt);
    }
    expect(s.steps.d!.output).toMatchObject({ step: "d" });
    expect(events.filter((e) => e.type === "RunSucceeded")).toHaveLength(1);
  }
  // The kills did land in the middle of steps.
  expect(interrupted).toBeGreaterThan(0);
  // 35-50 s measured on 2 busy cores (load 10-15); the bound leaves room for a worse day.
}, 170_000);
