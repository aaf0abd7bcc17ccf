// The Python SDK the host provides (`sdk: python`): the shipped echo-py bundle, which carries no
// copy of flexcore_plugin.py, packs, installs read-only and runs in the real sandbox with the
// SDK mounted read-only on PYTHONPATH; the same bundle launched without `sdk` cannot import it.
import { readFileSync } from "node:fs";
import { chmod, cp, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTopology } from "../streams/index.js";
import { startTestNats } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { install, pack } from "./bundle.js";
import { createPluginClient } from "./client.js";
import { until } from "./fixtures/harness.js";
import { launchSpec } from "./host-config.js";
import { generatePluginUsers } from "./nats-users.js";
import { PYTHON_SDK_FILE, PYTHON_SDK_MOUNT } from "./python-sdk.js";
import { descendants, startPluginSupervisor } from "./supervisor.js";
import type { PluginLaunchSpec, PluginSupervisor } from "./supervisor.js";

let nats: TestNats;
let work: string;
let credentialsDir: string;
let spec: PluginLaunchSpec;
const supervisors: PluginSupervisor[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "flexcore-pysdk-"));
  await chmod(work, 0o755);
  credentialsDir = join(work, "creds");
  const users = await generatePluginUsers({ services: ["echo-py"], dir: credentialsDir });
  nats = await startTestNats({ extraUsers: users.entries });
  await ensureTopology(nats.nc);
  const bundle = join(work, "echo-py");
  await cp(join(import.meta.dirname, "echo-py"), bundle, { recursive: true, filter: (src) => !src.includes("__pycache__") });
  await pack(bundle);
  const installed = await install(bundle, join(work, "store"), { allowUnsigned: ["echo-py"] });
  expect(await readdir(installed.path)).not.toContain(PYTHON_SDK_FILE);
  expect(installed.manifest.sdk).toBe("python");
  spec = launchSpec(installed.manifest, installed.path, { instances: 1, config: {} });
}, 60_000);

afterAll(async () => {
  for (const s of supervisors) await s.stop();
  await nats?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

async function supervise(s: PluginLaunchSpec, lines: string[]): Promise<PluginSupervisor> {
  const sup = await startPluginSupervisor({ nc: nats.nc, plugins: [s], natsUrl: nats.server.url, credentialsDir, log: (l) => void lines.push(l), graceMs: 1_000, leaseTtlMs: 2_000, backoff: { initialMs: 60_000, maxMs: 60_000 } });
  supervisors.push(sup);
  return sup;
}

describe("sdk: python", () => {
  it("runs a Python bundle without its own SDK copy: the host's SDK is mounted read-only and on PYTHONPATH", async () => {
    const lines: string[] = [];
    const sup = await supervise(spec, lines);
    await sup.ready("echo-py", 30_000);
    const client = createPluginClient(nats.nc, "echo-py");
    expect((await client.callStep("echo", { tenant: "t", input: { a: 1 }, run: { id: "r", workflow: "w", attempt: 1 } })).output).toEqual({ a: 1 });
    const python = descendants(sup.status("echo-py").instances[0]!.pid!).find((p) => readFileSync(`/proc/${p}/cmdline`, "latin1").includes("main.py"))!;
    expect(python).toBeDefined();
    const mount = readFileSync(`/proc/${python}/mountinfo`, "utf8").split("\n").find((l) => l.split(" ")[4] === PYTHON_SDK_MOUNT);
    // The plugin cannot change the SDK it runs: the mount's options say ro.
    expect(mount, "the SDK mount").toBeDefined();
    expect(mount!.split(" ")[5]!.split(",")).toContain("ro");
    expect(readFileSync(`/proc/${python}/environ`, "latin1").split("\0")).toContain(`PYTHONPATH=${PYTHON_SDK_MOUNT}`);
    await sup.stop();
  }, 60_000);

  it("the same bundle launched without `sdk` cannot import the SDK and never becomes ready", async () => {
    const lines: string[] = [];
    const { sdk: _dropped, ...bare } = spec;
    const sup = await supervise(bare, lines);
    await until(() => sup.status("echo-py").failures >= 1, 20_000, "the launch to fail");
    expect(sup.status("echo-py").starts).toBe(0);
    expect(lines.join("\n")).toMatch(/No module named 'flexcore_plugin'/);
    await sup.stop();
  }, 60_000);
});
