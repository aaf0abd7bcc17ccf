/**
 * A rebuild asked of a deployment (several engines on one real nats-server, each with its own
 * SQLite copy): the requester lists the engines' membership keys, waits for every listed engine's
 * answer, waits until every copy is swapped, names the engine that refused, did not answer or
 * fell silent, and never waits for ever.
 *
 * No assertion depends on a time window: an instance is "still rebuilding" because the test
 * holds it (a file its copy waits on), not because it is slow enough.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUCKETS, ensureTopology, openTtlKv } from "../streams/index.js";
import { seedTenant } from "../test/console-fixtures.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { projectionsDir, readManifest } from "./catalog.js";
import { slowCopyProjection } from "./fixtures/slow-copy.js";
import { createProjectionEngine, engineKey, InstanceRebuildError, listRebuildEngines, REBUILD_SUBJECT, requestRebuild, serveProjectionControl, startRebuild } from "./index.js";
import type { DeploymentRebuildProgress, ProjectionControl, ProjectionEngine, RebuildMessage } from "./index.js";

const T = uniqueName("ctl");
const EVENTS = 2_000;
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

interface Instance {
  readonly dataDir: string;
  readonly child: ChildProcess;
  /** While this file exists, the instance's copy crawls (a rebuild stays running). */
  readonly holdFile: string;
  hold(): Promise<void>;
  release(): Promise<void>;
}

/** Another instance: its own process, engine, SQLite copy and control; listed once this resolves. */
async function spawnInstance(instance: string, ttlMs = 15_000): Promise<Instance> {
  const dir = await dataDir();
  const holdFile = join(dir, "hold");
  const child = spawn(process.execPath, ["--import", "tsx", HOST, dir, instance, T, holdFile, String(ttlMs)], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, ...nats.env } });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (b: Buffer) => {
      if (b.toString().includes("ready")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`instance ${instance} exited with ${code}`)));
  });
  return { dataDir: dir, child, holdFile, hold: () => writeFile(holdFile, ""), release: () => rm(holdFile, { force: true }) };
}

/** The generation an instance serves, from its manifest (works for a child's data directory too). */
function generation(dir: string): number {
  return readManifest(projectionsDir(dir), "copy")!.generation;
}

const stateOf = (p: DeploymentRebuildProgress, instance: string) => p.instances.find((i) => i.instance === instance);

/** A promise that resolves with the first progress report that satisfies `when`, and the listener to pass as `onProgress`. */
function progressUntil(when: (p: DeploymentRebuildProgress) => boolean): { readonly seen: DeploymentRebuildProgress[]; readonly reached: Promise<DeploymentRebuildProgress>; readonly onProgress: (p: DeploymentRebuildProgress) => void } {
  const seen: DeploymentRebuildProgress[] = [];
  let resolve!: (p: DeploymentRebuildProgress) => void;
  const reached = new Promise<DeploymentRebuildProgress>((r) => (resolve = r));
  return { seen, reached, onProgress: (p) => {
    seen.push(p);
    if (when(p)) resolve(p);
  } };
}

let beta: Instance;

beforeAll(async () => {
  nats = await startTestNats({ tenants: [T] });
  await ensureTopology(nats.nc);
  await seedTenant(nats.nc, T, { events: EVENTS });
  const dir = await dataDir();
  // Its own connection, as another `flexcore up` would have.
  const nc = await nats.connect();
  const engine = createProjectionEngine(nc, { dataDir: dir, log: () => undefined, projections: [slowCopyProjection(T, 0)] });
  await engine.start();
  alpha = { dataDir: dir, engine, control: await serveProjectionControl(nc, engine, { instance: "alpha" }) };
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
  it("lists every running engine by its membership key", async () => {
    expect(await listRebuildEngines(nats.nc)).toEqual(["alpha", "beta"]);
  });

  it("rebuilds every instance's copy and resolves only once the slowest has swapped; progress names both, overall is the slowest", async () => {
    const before = [generation(alpha.dataDir), generation(beta.dataDir)];
    await beta.hold();
    // Beta is held until alpha is done and beta's progress was heard: then it may finish.
    const watch = progressUntil((p) => stateOf(p, "alpha")?.state === "done" && stateOf(p, "beta")?.state === "running" && stateOf(p, "beta")?.progress !== undefined);
    void watch.reached.then(() => beta.release());
    const result = await requestRebuild(nats.nc, ["copy"], { onProgress: watch.onProgress });
    // Read at once: resolving on the first engine's "done" (alpha's) would find beta's copy unswapped.
    expect([generation(alpha.dataDir), generation(beta.dataDir)]).toEqual(before.map((g) => g + 1));
    expect(result?.instances.map((i) => i.instance)).toEqual(["alpha", "beta"]);
    expect(result?.instances.map((i) => i.result.projections[0]?.generation)).toEqual(before.map((g) => g + 1));
    for (const i of result!.instances) expect(i.result.events).toBeGreaterThanOrEqual(EVENTS);
    // While beta was still catching up after alpha was done, the overall figure was beta's.
    const mixed = await watch.reached;
    expect(mixed.overall).toEqual(stateOf(mixed, "beta")!.progress);
    expect(mixed.overall.done).toBeLessThan(mixed.overall.total);
    expect(watch.seen.at(-1)!.instances.map((i) => i.state)).toEqual(["done", "done"]);
  }, 60_000);

  it("an instance busy with a rebuild refuses: the answer names it with FLEX_REBUILD_IN_PROGRESS once the other has swapped", async () => {
    const before = [generation(alpha.dataDir), generation(beta.dataDir)];
    await beta.hold();
    try {
      const alphaDone = progressUntil((p) => stateOf(p, "alpha")?.state === "done");
      const first = await startRebuild(nats.nc, ["copy"], { onProgress: alphaDone.onProgress });
      expect(first?.instances).toEqual(["alpha", "beta"]);
      // Alpha is free again; beta is held in its rebuild.
      await alphaDone.reached;
      const second = await startRebuild(nats.nc, ["copy"]);
      expect(second?.instances).toEqual(["alpha"]);
      const err = await second!.done.then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(InstanceRebuildError);
      const e = err as InstanceRebuildError;
      expect(e.code).toBe("FLEX_REBUILD_IN_PROGRESS");
      expect(e.instance).toBe("beta");
      expect(e.message).toContain("`beta`");
      expect(outcome(e)).toEqual([["alpha", "swapped"], ["beta", "FLEX_REBUILD_IN_PROGRESS"]]);
      await beta.release();
      expect((await first!.done).instances.map((i) => i.instance)).toEqual(["alpha", "beta"]);
      // Alpha rebuilt twice, beta once (the refused request changed nothing there).
      expect([generation(alpha.dataDir), generation(beta.dataDir)]).toEqual([before[0]! + 2, before[1]! + 1]);
    } finally {
      await beta.release();
    }
  }, 60_000);

  it("when every instance refuses, startRebuild throws before following anything, naming each", async () => {
    const err = await startRebuild(nats.nc, ["nosuch"]).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(InstanceRebuildError);
    const e = err as InstanceRebuildError;
    expect(e.code).toBe("FLEX_PROJECTION_NOT_FOUND");
    expect(outcome(e)).toEqual([["alpha", "FLEX_PROJECTION_NOT_FOUND"], ["beta", "FLEX_PROJECTION_NOT_FOUND"]]);
    expect(e.message).toContain("`alpha`");
    expect(e.message).toContain("`beta`");
  }, 30_000);

  it("a listed engine that never answers is named FLEX_REBUILD_ENGINE_UNANSWERED, not dropped; the others swap", async () => {
    const before = [generation(alpha.dataDir), generation(beta.dataDir)];
    // A member key with no engine behind it: an instance that died a moment ago, its key not yet expired.
    const leases = await openTtlKv(nats.nc, BUCKETS.leases);
    await leases.put(engineKey("ghost"), new TextEncoder().encode(JSON.stringify({ instance: "ghost", expiresAt: Date.now() + 60_000 })), 60_000);
    try {
      const err = await requestRebuild(nats.nc, ["copy"], { answerTimeoutMs: 5_000 }).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(InstanceRebuildError);
      const e = err as InstanceRebuildError;
      expect(e.code).toBe("FLEX_REBUILD_ENGINE_UNANSWERED");
      expect(e.instance).toBe("ghost");
      expect(e.message).toContain("`ghost`");
      expect(outcome(e)).toEqual([["alpha", "swapped"], ["beta", "swapped"], ["ghost", "FLEX_REBUILD_ENGINE_UNANSWERED"]]);
      expect([generation(alpha.dataDir), generation(beta.dataDir)]).toEqual(before.map((g) => g + 1));
    } finally {
      await leases.kv.delete(engineKey("ghost"));
    }
    expect(await listRebuildEngines(nats.nc)).toEqual(["alpha", "beta"]);
  }, 60_000);

  it("an engine not listed (it joined meanwhile) that answers is followed too", async () => {
    // An engine of the deployment whose key the requester did not see: it answers on the subject.
    const nc = await nats.connect();
    const result = { projections: [{ name: "copy", generation: 1, file: "copy.1.db" }], events: 0, durationMs: 1, eventsPerSecond: 0 };
    const sub = nc.subscribe(REBUILD_SUBJECT, {
      callback: (_err, msg) => {
        const { inbox } = JSON.parse(new TextDecoder().decode(msg.data)) as { inbox: string };
        for (const m of [{ kind: "accepted", instance: "newcomer" }, { kind: "done", instance: "newcomer", result }] satisfies RebuildMessage[]) nc.publish(inbox, new TextEncoder().encode(JSON.stringify(m)));
      },
    });
    await nc.flush();
    await beta.hold();
    try {
      // Beta is held until the newcomer's end was heard, so the request is still being followed then.
      const watch = progressUntil((p) => stateOf(p, "newcomer")?.state === "done");
      void watch.reached.then(() => beta.release());
      const r = await requestRebuild(nats.nc, ["copy"], { onProgress: watch.onProgress });
      expect(r?.instances.map((i) => i.instance)).toEqual(["alpha", "beta", "newcomer"]);
    } finally {
      await beta.release();
      sub.unsubscribe();
      await nc.close();
    }
  }, 60_000);

  it("an instance killed mid-rebuild ends the wait with FLEX_REBUILD_ENGINE_SILENT naming it; its key then expires", async () => {
    const gamma = await spawnInstance("gamma", 2_000);
    expect(await listRebuildEngines(nats.nc)).toEqual(["alpha", "beta", "gamma"]);
    const before = [generation(alpha.dataDir), generation(beta.dataDir), generation(gamma.dataDir)];
    const silenceTimeoutMs = 3_000;
    await gamma.hold();
    const accepted = await startRebuild(nats.nc, ["copy"], { silenceTimeoutMs });
    expect(accepted?.instances).toEqual(["alpha", "beta", "gamma"]);
    // Gamma is held in its rebuild: it dies now.
    expect(gamma.child.kill("SIGKILL")).toBe(true);
    const killedAt = Date.now();
    const err = await accepted!.done.then(() => undefined, (e: unknown) => e);
    expect(Date.now() - killedAt).toBeLessThan(silenceTimeoutMs + 10_000);
    expect(err).toBeInstanceOf(InstanceRebuildError);
    const e = err as InstanceRebuildError;
    expect(e.code).toBe("FLEX_REBUILD_ENGINE_SILENT");
    expect(e.instance).toBe("gamma");
    expect(e.message).toContain("`gamma`");
    expect(outcome(e)).toEqual([["alpha", "swapped"], ["beta", "swapped"], ["gamma", "FLEX_REBUILD_ENGINE_SILENT"]]);
    // The others swapped; the dead one did not.
    expect([generation(alpha.dataDir), generation(beta.dataDir), generation(gamma.dataDir)]).toEqual([before[0]! + 1, before[1]! + 1, before[2]!]);
    // Unrenewed, its key expires: the next request does not wait for it.
    for (const until = Date.now() + 30_000; (await listRebuildEngines(nats.nc)).includes("gamma") && Date.now() < until;) await new Promise((r) => setTimeout(r, 200));
    expect(await listRebuildEngines(nats.nc)).toEqual(["alpha", "beta"]);
  }, 90_000);

  it("a tenant's own NATS user cannot ask the engines for a rebuild: nothing is rebuilt", async () => {
    const before = [generation(alpha.dataDir), generation(beta.dataDir)];
    const tenant = await nats.connectAs(T);
    const answer = await startRebuild(tenant, ["copy"], { answerTimeoutMs: 1_000 }).then((a) => a, (e: unknown) => e);
    // Refused by the server (permissions on the membership keys or the subject): never accepted by an engine.
    expect(answer).toBeInstanceOf(Error);
    expect(answer).not.toBeInstanceOf(InstanceRebuildError);
    // Nor can it publish the request itself.
    tenant.publish(REBUILD_SUBJECT, new TextEncoder().encode(JSON.stringify({ names: ["copy"], inbox: "_INBOX.x" })));
    await tenant.flush().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    expect((await alpha.engine.status("copy"))[0]!.rebuilding).toBe(false);
    expect([generation(alpha.dataDir), generation(beta.dataDir)]).toEqual(before);
  });

  it("a closed engine leaves the list at once", async () => {
    const nc = await nats.connect();
    const dir = await dataDir();
    const engine = createProjectionEngine(nc, { dataDir: dir, log: () => undefined, projections: [slowCopyProjection(T, 0)] });
    await engine.start();
    const control = await serveProjectionControl(nc, engine, { instance: "delta" });
    expect(await listRebuildEngines(nats.nc)).toContain("delta");
    await control.close();
    expect(await listRebuildEngines(nats.nc)).toEqual(["alpha", "beta"]);
    await engine.close();
    await nc.close();
  }, 30_000);

  it("no engine listed: undefined (the CLI then rebuilds in its own process)", async () => {
    const other = await startTestNats();
    try {
      expect(await startRebuild(other.nc, ["copy"])).toBeUndefined();
      await ensureTopology(other.nc);
      expect(await startRebuild(other.nc, ["copy"])).toBeUndefined();
    } finally {
      await other.close();
    }
  });
});
