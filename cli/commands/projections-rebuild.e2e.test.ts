/**
 * `flexcore projections rebuild` (the real CLI in a child process) against a deployment of two
 * instances on a real nats-server, each with its own SQLite copy: it reports one line per
 * instance and returns once both copies are swapped; a refusal names every instance.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createProjectionEngine, genericProjection, serveProjectionControl } from "../../projections/index.js";
import type { ProjectionControl, ProjectionEngine } from "../../projections/index.js";
import { ensureTopology } from "../../streams/index.js";
import { seedTenant } from "../../test/console-fixtures.js";
import { startTestNats, uniqueName } from "../../test/nats-server.js";
import type { TestNats } from "../../test/nats-server.js";

const CLI = join(import.meta.dirname, "..", "main.ts");
const T = uniqueName("clirb");

let nats: TestNats;
const dirs: string[] = [];
const instances: Array<{ readonly name: string; readonly engine: ProjectionEngine; readonly control: ProjectionControl }> = [];

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import", "tsx", CLI, ...args], { env: { ...process.env, NATS_URL: "", ...nats.env, FLEXCORE_DATA: dirs[0]! } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const generations = async (): Promise<number[]> => Promise.all(instances.map(async (i) => (await i.engine.status("generic"))[0]!.generation));

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  await seedTenant(nats.nc, T, { events: 200 });
  for (const name of ["one", "two"]) {
    const dataDir = await mkdtemp(join(tmpdir(), "flexcore-clirb-"));
    dirs.push(dataDir);
    const nc = await nats.connect();
    const engine = createProjectionEngine(nc, { dataDir, log: () => undefined, projections: [genericProjection()] });
    await engine.start();
    instances.push({ name, engine, control: await serveProjectionControl(nc, engine, { instance: name }) });
    await nc.flush();
  }
}, 60_000);

afterAll(async () => {
  for (const i of instances) {
    await i.control.close();
    await i.engine.close();
  }
  await nats?.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

it("rebuilds the copy of every running instance and says so per instance", async () => {
  const before = await generations();
  const r = await run(["projections", "rebuild", "generic"]);
  expect(r.code, r.stderr).toBe(0);
  expect(r.stderr).toMatch(/rebuilt generic \(generation \d+\) .* by instance one/u);
  expect(r.stderr).toMatch(/rebuilt generic \(generation \d+\) .* by instance two/u);
  expect(r.stderr).toContain("2 copies swapped");
  expect(await generations()).toEqual(before.map((g) => g + 1));
}, 30_000);

it("an unknown projection: refused by every instance, named in the error, nothing rebuilt, exit code not 0", async () => {
  const before = await generations();
  const r = await run(["projections", "rebuild", "nosuch"]);
  expect(r.code).not.toBe(0);
  expect(r.stderr).toContain("[FLEX_PROJECTION_NOT_FOUND]");
  expect(r.stderr).toContain("`one`");
  expect(r.stderr).toContain("`two`");
  expect(await generations()).toEqual(before);
}, 30_000);
