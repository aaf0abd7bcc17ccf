import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import Database from "better-sqlite3";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createPublisher, encodeEvent, ensureTopology, PLUGIN_EVENT_TYPES, STREAMS, WORKFLOW_EVENT_TYPES } from "../streams/index.js";
import { startTestNats } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { projectionsDir, readManifest } from "./catalog.js";
import { integrityCheck, modelHash, readCheckpoints } from "./database.js";
import { builtinProjections } from "./index.js";

/** Events in the stream the projector catches up on (`FLEX_KILL_TEST_EVENTS` to change). */
const EVENTS = Number(process.env.FLEX_KILL_TEST_EVENTS ?? 200_000);
/** Longest a projector runs after its first commit before it is killed. */
const MAX_RUN_MS = 400;
/** A projector that has not committed anything this long after it started reporting is killed anyway. */
const NO_PROGRESS_MS = 5_000;
const KILLS = 10;
const CHILD = join(import.meta.dirname, "projector.child.ts");

let nats: TestNats;
const dirs: string[] = [];

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
});
afterAll(async () => {
  await nats?.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** A mix feeding every built-in read model. */
function eventAt(i: number): { subject: string; type: string; data: unknown } {
  const tenant = `t${i % 5}`;
  const r = i % 20;
  if (r < 12) return { subject: `evt.${tenant}.sensor.s${i % 2_000}`, type: i % 3 ? "Reading" : "Calibrated", data: { value: i, unit: i % 2 ? "C" : "F", meta: { n: i % 7 } } };
  if (r < 16) {
    const run = `r${Math.floor(i / 20) % 3_000}`;
    const kinds = [WORKFLOW_EVENT_TYPES.runStarted, WORKFLOW_EVENT_TYPES.stepStarted, WORKFLOW_EVENT_TYPES.stepSucceeded, WORKFLOW_EVENT_TYPES.runSucceeded];
    const type = kinds[r - 12]!;
    return { subject: `evt.${tenant}.workflow.${run}`, type, data: { runId: run, workflow: `wf${i % 4}`, version: 1, tenant, step: "s1", attempt: 1, output: `o${i}` } };
  }
  if (r < 18) {
    const plugin = `p${i % 11}`;
    const types = [PLUGIN_EVENT_TYPES.started, PLUGIN_EVENT_TYPES.health];
    return { subject: `evt._system.plugin.${plugin}`, type: types[r - 16]!, data: { plugin, ok: i % 3 !== 0, version: "1.0.0", latencyMs: i % 13 } };
  }
  const minute = new Date(Date.UTC(2026, 0, 1, 0, Math.floor(i / 1_000))).toISOString();
  return { subject: `evt._system.metrics.c${i % 6}`, type: "MetricsReported", data: { component: `c${i % 6}`, kind: "processor", minute, count: i % 100, errors: i % 3, p50Ms: i % 10, p95Ms: i % 50, p99Ms: i % 90, throughput: (i % 100) / 60 } };
}

interface Projector {
  /** Starts the (already loaded) process; resolves when it exits, killed or done. */
  run(killAfterProgress: number | undefined): Promise<{ killedAt: number | undefined; done: boolean }>;
}

/**
 * Spawns a projector process that waits for `run` (Node and tsx load while another one
 * works). `small` commits often (small batches and fold windows), so kills land in and
 * between many transactions; the clean build uses the defaults, so the comparison also
 * shows that the rows do not depend on how events were grouped into transactions.
 */
function spawnProjector(dataDir: string, eventsSeq: number, derivedSeq: number, small = true): Projector {
  const child = spawn(process.execPath, ["--import", "tsx", CHILD, nats.server.url, dataDir, String(eventsSeq), String(derivedSeq), small ? "small" : "default"], { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, ...nats.env } });
  let stderr = "";
  child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code, signal) => resolve({ code, signal }));
  });
  return {
    run: async (killAfterProgress) => {
      let first: number | undefined;
      let last = 0;
      let done = false;
      let killedAt: number | undefined;
      let moved = false;
      let deadline: NodeJS.Timeout | undefined;
      const kill = (): void => {
        if (killedAt !== undefined) return;
        killedAt = last;
        setTimeout(() => child.kill("SIGKILL"), Math.floor(Math.random() * 40));
      };
      child.stdout.on("data", (b: Buffer) => {
        for (const line of b.toString().split("\n")) {
          if (line === "done") done = true;
          else if (/^\d+$/u.test(line)) {
            last = Number(line);
            // Armed at the run's first commit, so each kill lands after this run moved the
            // checkpoint (a new process needs a moment before its first commit); a run that
            // never commits is killed after NO_PROGRESS_MS all the same.
            if (first === undefined && killAfterProgress !== undefined) deadline = setTimeout(kill, NO_PROGRESS_MS);
            else if (first !== undefined && last > first && !moved && killAfterProgress !== undefined) {
              moved = true;
              clearTimeout(deadline);
              deadline = setTimeout(kill, Math.floor(Math.random() * MAX_RUN_MS));
            }
            first ??= last;
          }
          // Kill at a random moment once the catch-up has moved on (or the time is up).
          if (killAfterProgress !== undefined && first !== undefined && last - first >= killAfterProgress) kill();
        }
      });
      child.stdin.write("go\n");
      const { code, signal } = await exited;
      clearTimeout(deadline);
      if (signal !== "SIGKILL" && code !== 0) throw new Error(`projector exited with ${code ?? signal}: ${stderr.slice(-2_000)}`);
      return { killedAt, done };
    },
  };
}

function served(dataDir: string, name: string): Database.Database {
  const dir = projectionsDir(dataDir);
  const manifest = readManifest(dir, name);
  if (!manifest) throw new Error(`no manifest for ${name} in ${dir}`);
  return new Database(join(dir, manifest.file), { readonly: true });
}

it(`kill -9 of the projector ${KILLS} times during a ${EVENTS}-event catch-up: same rows as a clean rebuild, checkpoint = last sequence, integrity ok`, { timeout: 240_000 }, async () => {
  const pub = createPublisher(nats.nc, { maxInFlight: 16_384 });
  const pending: Array<Promise<unknown>> = [];
  for (let i = 0; i < EVENTS; i++) {
    const e = eventAt(i);
    const enc = encodeEvent({ type: e.type, data: e.data });
    pending.push(pub.publish(e.subject, enc.data, { headers: enc.headers }));
    if (i % 10 === 0) {
      const d = encodeEvent({ type: "AnomalyScored", data: { score: i % 17 } });
      pending.push(pub.publish(`drv.t${i % 5}.anomaly.s${i % 2_000}`, d.data, { headers: d.headers }));
    }
    if (pending.length >= 16_384) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
  await pub.close();
  const t0 = performance.now();
  const lap = (what: string): void => void process.stderr.write(`[kill test] ${what}: ${Math.round(performance.now() - t0)} ms\n`);
  lap("published");
  const jsm = await jetstreamManager(nats.nc);
  const eventsSeq = (await jsm.streams.info(STREAMS.events)).state.last_seq;
  const derivedSeq = (await jsm.streams.info(STREAMS.derived)).state.last_seq;
  expect(eventsSeq).toBe(EVENTS);

  // The clean rebuild to compare with runs meanwhile, in its own process so that this
  // one stays free to kill the projector on time.
  const clean = await mkdtemp(join(tmpdir(), "flexcore-clean-"));
  dirs.push(clean);
  const cleanBuild = spawnProjector(clean, eventsSeq, derivedSeq, false).run(undefined).then((r) => {
    lap("clean rebuild");
    return r;
  });

  const crashed = await mkdtemp(join(tmpdir(), "flexcore-kill-"));
  dirs.push(crashed);
  const step = Math.floor(EVENTS / (KILLS * 3));
  const kills: number[] = [];
  // Two processes load ahead of time, so a run never waits for Node and tsx to start.
  const ready = [spawnProjector(crashed, eventsSeq, derivedSeq), spawnProjector(crashed, eventsSeq, derivedSeq)];
  for (let k = 0; k < KILLS; k++) {
    const running = ready.shift()!.run(1 + Math.floor(Math.random() * step));
    if (k < KILLS - 1) ready.push(spawnProjector(crashed, eventsSeq, derivedSeq));
    const run = await running;
    expect(run.done, `run ${k} finished before it was killed`).toBe(false);
    kills.push(run.killedAt!);
    lap(`kill ${k + 1} at ${run.killedAt}`);
  }
  lap(`killed ${KILLS} times at ${kills.join(", ")}`);
  expect(kills.length).toBe(KILLS);
  expect(Math.max(...kills)).toBeLessThan(eventsSeq);
  // The kills are spread over the catch-up, not all before the first commit.
  expect(kills.filter((k, i) => i > 0 && k > kills[i - 1]!).length).toBeGreaterThanOrEqual(3);
  const final = await ready.shift()!.run(undefined);
  expect(final.done).toBe(true);
  lap("caught up after the kills");

  expect((await cleanBuild).done).toBe(true);
  for (const p of builtinProjections()) {
    const a = served(crashed, p.name);
    const b = served(clean, p.name);
    try {
      expect(integrityCheck(a), p.name).toBe("ok");
      expect(modelHash(a), p.name).toBe(modelHash(b));
      const checkpoints = Object.fromEntries(readCheckpoints(a).map((c) => [c.stream, c.seq]));
      expect(checkpoints[STREAMS.events], p.name).toBe(eventsSeq);
      if (p.sources.some((s) => s.stream === STREAMS.derived)) expect(checkpoints[STREAMS.derived], p.name).toBe(derivedSeq);
      const rows = a.prepare("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_flex%' ESCAPE '\\'").get() as { n: number };
      expect(rows.n, p.name).toBeGreaterThan(0);
    } finally {
      a.close();
      b.close();
    }
  }
  // The mix really fed every model.
  const g = served(crashed, "generic");
  const summary = served(crashed, "pipeline_summary");
  try {
    expect((summary.prepare("SELECT sum(count) AS n FROM pipeline_summary WHERE source = 'events'").get() as { n: number }).n).toBe(EVENTS);
    expect((g.prepare("SELECT sum(revision) AS n FROM generic_aggregates").get() as { n: number }).n).toBe(EVENTS);
  } finally {
    g.close();
    summary.close();
  }
});
