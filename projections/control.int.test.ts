/**
 * A rebuild asked of a deployment (several engines on one real nats-server, each with its own
 * SQLite copy): the requester hears every engine, waits until every copy is swapped, names the
 * engine that refused or fell silent, and never waits for ever.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTopology } from "../streams/index.js";
import { seedTenant } from "../test/console-fixtures.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { projectionsDir, readManifest } from "./catalog.js";
import { slowCopyProjection } from "./fixtures/slow-copy.js";
import { createProjectionEngine, InstanceRebuildError, requestRebuild, serveProjectionControl, startRebuild } from "./index.js";
import type { DeploymentRebuildProgress, ProjectionControl, ProjectionEngine } from "./index.js";

const T = uniqueName("ctl");
const EVENTS = 5_000;
/** Each slow instance's rebuild of `copy` takes about EVENTS × this. */
const SLOW_MS_PER_EVENT = 0.3;
const HOST = join(import.meta.dirname, "fixtures", "control-host.ts");

let nats: TestNats;
const dirs: string[] = [];
const children: ChildProcess[] = [];
let alpha: { readonly dataDir: string; readonly engine: ProjectionEngine; readonly control: ProjectionControl };

async function dataDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), "flexcore-ctl-"));
  dirs.push(d);
  return d;
}

/** Another instance: its own process, engine, SQLite copy and control, slowed down. */
async function spawnInstance(instance: string): Promise<{ readonly dataDir: string; readonly child: ChildProcess }> {
  const dir = await dataDir();
  const child = spawn(process.execPath, ["--import", "tsx", HOST, dir, instance, T, String(SLOW_MS_PER_EVENT)], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, ...nats.env } });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (b: Buffer) => {
      if (b.toString().includes("ready")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`instance ${instance} exited with ${code}`)));
  });
  return { dataDir: dir, child };
}

/** The generation an instance serves, from its manifest (works for a child's data directory too). */
function generation(dir: string): number {
  return readManifest(projectionsDir(dir), "copy")!.generation;
}

let beta: { readonly dataDir: string; readonly child: ChildProcess };

beforeAll(async () => {
  nats = await startTestNats({ tenants: [T] });
  await ensureTopology(nats.nc);
  await seedTenant(nats.nc, T, { events: EVENTS });
  const dir = await dataDir();
  // Its own connection, as another `flexcore up` would have.
  const nc = await nats.connect();
  const engine = createProjectionEngine(nc, { dataDir: dir, log: () => undefined, projections: [slowCopyProjection(T, 0)] });
  await engine.start();
  alpha = { dataDir: dir, engine, control: serveProjectionControl(nc, engine, { instance: "alpha" }) };
  beta = await spawnInstance("beta");
  while ((await engine.status("copy"))[0]?.lag !== 0) await new Promise((r) => setTimeout(r, 50));
}, 60_000);

afterAll(async () => {
  for (const c of children) c.kill("SIGKILL");
  await alpha?.control.close();
  await alpha?.engine.close();
  await nats?.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const outcome = (e: InstanceRebuildError): string[][] => e.instances.map((i) => [i.instance, i.result ? "swapped" : i.error!.code]);

describe("a rebuild asked of several instances", () => {
  it("rebuilds every instance's copy and resolves only once the slowest has swapped; progress names both, overall is the slowest", async () => {
    const before = [generation(alpha.dataDir), generation(beta.dataDir)];
    const seen: DeploymentRebuildProgress[] = [];
    const result = await requestRebuild(nats.nc, ["copy"], { onProgress: (p) => seen.push(p) });
    // Read at once: the old requester resolved on the first engine's "done" (alpha's, long before beta's).
    expect([generation(alpha.dataDir), generation(beta.dataDir)]).toEqual(before.map((g) => g + 1));
    expect(result?.instances.map((i) => i.instance)).toEqual(["alpha", "beta"]);
    expect(result?.instances.map((i) => i.result.projections[0]?.generation)).toEqual(before.map((g) => g + 1));
    for (const i of result!.instances) expect(i.result.events).toBeGreaterThanOrEqual(EVENTS);
    // While beta was still catching up after alpha was done, the overall figure was beta's.
    const state = (p: DeploymentRebuildProgress, instance: string) => p.instances.find((i) => i.instance === instance);
    const mixed = seen.find((p) => state(p, "alpha")?.state === "done" && state(p, "beta")?.state === "running" && state(p, "beta")?.progress);
    expect(mixed).toBeDefined();
    expect(mixed!.overall).toEqual(state(mixed!, "beta")!.progress);
    expect(mixed!.overall.done).toBeLessThan(mixed!.overall.total);
    expect(seen.at(-1)!.instances.map((i) => i.state)).toEqual(["done", "done"]);
  }, 20_000);

  it("an instance busy with a rebuild refuses: the answer names it with FLEX_REBUILD_IN_PROGRESS once the other has swapped", async () => {
    const before = [generation(alpha.dataDir), generation(beta.dataDir)];
    const first = await startRebuild(nats.nc, ["copy"]);
    expect(first?.instances).toEqual(["alpha", "beta"]);
    // Alpha (fast) is free again long before beta (slow) is.
    for (const until = Date.now() + 5_000; generation(alpha.dataDir) === before[0] && Date.now() < until;) await new Promise((r) => setTimeout(r, 20));
    const second = await startRebuild(nats.nc, ["copy"]);
    expect(second?.instances).toEqual(["alpha"]);
    const err = await second!.done.then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(InstanceRebuildError);
    const e = err as InstanceRebuildError;
    expect(e.code).toBe("FLEX_REBUILD_IN_PROGRESS");
    expect(e.instance).toBe("beta");
    expect(e.message).toContain("`beta`");
    expect(outcome(e)).toEqual([["alpha", "swapped"], ["beta", "FLEX_REBUILD_IN_PROGRESS"]]);
    expect((await first!.done).instances.map((i) => i.instance)).toEqual(["alpha", "beta"]);
    // Alpha rebuilt twice, beta once (the refused request changed nothing there).
    expect([generation(alpha.dataDir), generation(beta.dataDir)]).toEqual([before[0]! + 2, before[1]! + 1]);
  }, 20_000);

  it("when every instance refuses, startRebuild throws before following anything, naming each", async () => {
    const err = await startRebuild(nats.nc, ["nosuch"]).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(InstanceRebuildError);
    const e = err as InstanceRebuildError;
    expect(e.code).toBe("FLEX_PROJECTION_NOT_FOUND");
    expect(outcome(e)).toEqual([["alpha", "FLEX_PROJECTION_NOT_FOUND"], ["beta", "FLEX_PROJECTION_NOT_FOUND"]]);
    expect(e.message).toContain("`alpha`");
    expect(e.message).toContain("`beta`");
  });

  it("an instance killed mid-rebuild ends the wait with FLEX_REBUILD_ENGINE_SILENT naming it, within the silence timeout", async () => {
    const gamma = await spawnInstance("gamma");
    const before = [generation(alpha.dataDir), generation(beta.dataDir), generation(gamma.dataDir)];
    const silenceTimeoutMs = 1_500;
    const accepted = await startRebuild(nats.nc, ["copy"], { silenceTimeoutMs });
    expect(accepted?.instances).toEqual(["alpha", "beta", "gamma"]);
    // Gamma has just started its rebuild (about EVENTS × SLOW_MS_PER_EVENT long): it dies now.
    expect(gamma.child.kill("SIGKILL")).toBe(true);
    const killedAt = Date.now();
    const err = await accepted!.done.then(() => undefined, (e: unknown) => e);
    expect(Date.now() - killedAt).toBeLessThan(silenceTimeoutMs + 2_000);
    expect(err).toBeInstanceOf(InstanceRebuildError);
    const e = err as InstanceRebuildError;
    expect(e.code).toBe("FLEX_REBUILD_ENGINE_SILENT");
    expect(e.instance).toBe("gamma");
    expect(e.message).toContain("`gamma`");
    expect(outcome(e)).toEqual([["alpha", "swapped"], ["beta", "swapped"], ["gamma", "FLEX_REBUILD_ENGINE_SILENT"]]);
    // The others swapped; the dead one did not.
    expect([generation(alpha.dataDir), generation(beta.dataDir), generation(gamma.dataDir)]).toEqual([before[0]! + 1, before[1]! + 1, before[2]!]);
  }, 20_000);

  it("a tenant's own NATS user cannot ask the engines for a rebuild: nothing is rebuilt", async () => {
    const before = [generation(alpha.dataDir), generation(beta.dataDir)];
    const tenant = await nats.connectAs(T);
    const answer = await startRebuild(tenant, ["copy"], { acceptTimeoutMs: 1_000 }).then((a) => a, (e: unknown) => e);
    // Refused by the server (permissions) or unanswered: never accepted by an engine.
    expect(answer === undefined || answer instanceof Error).toBe(true);
    expect(answer).not.toBeInstanceOf(InstanceRebuildError);
    await new Promise((r) => setTimeout(r, 300));
    expect((await alpha.engine.status("copy"))[0]!.rebuilding).toBe(false);
    expect([generation(alpha.dataDir), generation(beta.dataDir)]).toEqual(before);
  });

  it("no engine listening: undefined (the CLI then rebuilds in its own process)", async () => {
    const other = await startTestNats();
    try {
      expect(await startRebuild(other.nc, ["copy"])).toBeUndefined();
    } finally {
      await other.close();
    }
  });
});
