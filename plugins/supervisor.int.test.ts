import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureTopology } from "../streams/index.js";
import { startTestNats } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { alive, fixtureBundle, processTree, until } from "./fixtures/harness.js";
import { generatePluginUsers } from "./nats-users.js";
import { startPluginSupervisor } from "./supervisor.js";
import type { PluginLaunchSpec, PluginSupervisor, PluginSupervisorOptions } from "./supervisor.js";

let nats: TestNats;
let bundle: { dir: string; close(): Promise<void> };
let credentialsDir: string;
const supervisors: PluginSupervisor[] = [];
const NAMES = ["ready-one", "impostor", "proto", "hung", "spam", "membomb", "forkbomb", "stubborn", "loop"];

beforeAll(async () => {
  credentialsDir = await mkdtemp(join(tmpdir(), "flexcore-plugin-creds-"));
  const users = await generatePluginUsers({ services: NAMES, dir: credentialsDir });
  nats = await startTestNats({ extraUsers: users.entries });
  await ensureTopology(nats.nc);
  bundle = await fixtureBundle();
}, 60_000);

afterAll(async () => {
  for (const s of supervisors) await s.stop();
  await nats?.close();
  await bundle?.close();
  await rm(credentialsDir, { recursive: true, force: true });
});

function spec(name: string, config: Record<string, unknown> = {}, more: Partial<PluginLaunchSpec> = {}): PluginLaunchSpec {
  return { name, version: "0.0.1", command: ["node", "plugin.mjs"], bundleDir: bundle.dir, config, ...more };
}

async function supervise(plugins: PluginLaunchSpec[], more: Partial<PluginSupervisorOptions> = {}): Promise<{ sup: PluginSupervisor; lines: string[] }> {
  const lines: string[] = [];
  const sup = await startPluginSupervisor({ nc: nats.nc, plugins, natsUrl: nats.server.url, credentialsDir, log: (l) => void lines.push(l), graceMs: 1_000, leaseTtlMs: 2_000, ...more });
  supervisors.push(sup);
  return { sup, lines };
}

const call = (name: string, body = "hi", timeout = 2_000) => nats.nc.request(`flexplugin.${name}.processor.echo`, body, { timeout });

describe("plugin supervisor", () => {
  it("launches the instances sandboxed, takes each as ready when INFO carries its nonce, and they answer calls", async () => {
    const { sup, lines } = await supervise([spec("ready-one", {}, { instances: 2 })]);
    await sup.ready("ready-one", 20_000).catch((e) => { console.log(lines.join("\n")); throw e; });
    const st = sup.status("ready-one");
    expect(st.state).toBe("running");
    expect(st.instances).toHaveLength(2);
    expect(new Set(st.instances.map((i) => i.id)).size).toBe(2);
    expect((await call("ready-one")).string()).toBe("hi");
    // Sandboxed: the plugin process runs as uid 65534 under bubblewrap.
    const tree = processTree(st.instances.map((i) => i.pid));
    const uids = tree.map((p) => /Uid:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, "utf8"))?.[1]);
    expect(uids).toContain("65534");
    expect(lines.some((l) => l.startsWith("[plugin ready-one] fixture ready-one ready"))).toBe(true);
    await sup.stop();
    for (const p of tree) expect(alive(p), `pid ${p}`).toBe(false);
  }, 40_000);
});
