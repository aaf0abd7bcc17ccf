// Upgrades without loss and the per-plugin stop, on a real nats-server with real sandboxed
// plugin processes and the real processor runtime: an upgrade under a steady load processes
// every event exactly once, v1 before the switch and v2 after, never a batch mixed, and
// drains the old processes; an upgrade to a version that never becomes ready leaves the
// running one serving and the stored choice unchanged; disabling stops every process of the
// plugin and enabling starts it again; a tenant cannot reach the upgrade subject.
import { mkdtemp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createEventStore, encodeEvent, PLUGIN_EVENT_TYPES, STREAMS, SYSTEM_TENANT } from "../streams/index.js";
import type { EventStore, Publisher } from "../streams/index.js";
import { createProjectionEngine, pluginStatusProjection } from "../projections/index.js";
import { parseConfig, pipelineSections, startProcessorRuntime } from "../processors/index.js";
import type { ProcessorRuntime } from "../processors/index.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { install } from "./bundle.js";
import { followPluginSwitches, requestPluginUpgrade, servePluginControl, setPluginEnabled } from "./control.js";
import { PluginUpgradeFailedError } from "./errors.js";
import { fixtureBundle, packFixtureBundle, readDerived, startSupervisorBed, until } from "./fixtures/harness.js";
import type { SupervisorBed } from "./fixtures/harness.js";
import { pidsOfUid } from "../test/plugin-process.js";
import { launchSpec } from "./host-config.js";
import type { ResolvedPlugins } from "./host-config.js";
import { createPluginHost } from "./host.js";
import type { PluginHost } from "./host.js";
import { createPluginLifecycle } from "./lifecycle.js";
import { pluginServiceNames, pluginUid, startPluginSupervisor } from "./supervisor.js";
import type { PluginSupervisor } from "./supervisor.js";
import { applyPluginVersions, followPluginVersions, readPluginVersions, upgradePlugin } from "./upgrade.js";

let bed: SupervisorBed;
let nats: TestNats;
let work: string;
let credentialsDir: string;
let storeDir: string;
let keysDir: string;
let publisher: Publisher;
const closers: Array<() => Promise<unknown>> = [];
const PLUGINS = ["up", "dis"];

beforeAll(async () => {
  bed = await startSupervisorBed("flexcore-plugin-upgrade-", PLUGINS.flatMap((p) => pluginServiceNames(p).filter((s): s is string => s !== undefined)), ["acme"]);
  ({ nats, work, credentialsDir, storeDir, keysDir, publisher } = bed);
}, 60_000);

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  await bed?.close();
});

/** A packed bundle of the fixture plugin as `name` `version`, whose outputs carry `tag`; `fault` in its FAULT file. */
async function bundle(name: string, version: string, tag: string, more: { fault?: string; startTimeoutMs?: number } = {}): Promise<string> {
  const b = await fixtureBundle();
  closers.push(() => b.close());
  await writeFile(join(b.dir, "TAG"), `${tag}\n`, { mode: 0o644 });
  if (more.fault) await writeFile(join(b.dir, "FAULT"), `${more.fault}\n`, { mode: 0o644 });
  await packFixtureBundle(b.dir, { name, version, description: "upgrade fixture", tenancy: "system", kindDescription: "one Echoed per input, tagged with the bundle's version", ...(more.startTimeoutMs !== undefined ? { startTimeoutMs: more.startTimeoutMs } : {}) });
  return b.dir;
}

async function managedPlugin(name: string, dir: string, config: Record<string, unknown>): Promise<ResolvedPlugins> {
  const installed = await install(dir, storeDir, { trustedKeysDir: keysDir, allowUnsigned: [name] });
  const entry = { name, managed: true as const, bundle: dir, allowUnsigned: true, instances: 1, config, enabled: true, tenant: undefined };
  return { managed: [{ entry, installed, manifest: installed.manifest, spec: launchSpec(installed.manifest, installed.path, entry) }], external: [] };
}

async function startAll(plugins: ResolvedPlugins, lifecycleTypes?: Array<{ type: string; data: unknown }>): Promise<{ sup: PluginSupervisor; host: PluginHost; lines: string[] }> {
  const lines: string[] = [];
  const store: EventStore = await createEventStore(nats.nc);
  const lifecycle = lifecycleTypes
    ? createPluginLifecycle({ store: { append: (ref, events, opts) => (events.forEach((e) => lifecycleTypes.push({ type: e.type, data: e.data })), store.append(ref, events, opts)) } })
    : undefined;
  const sup = await startPluginSupervisor({ nc: nats.nc, plugins: plugins.managed.map((m) => m.spec), natsUrl: nats.server.url, credentialsDir, log: (l) => void lines.push(l), graceMs: 2_000, leaseTtlMs: 3_000, ...(lifecycle ? { lifecycle } : {}) });
  closers.push(() => sup.stop());
  const host = createPluginHost({ nc: nats.nc, plugins, supervisor: sup });
  return { sup, host, lines };
}

/** Publishes events `{ i }` on `evt.<tenant>.up.<key>`, `perTick` every `tickMs` (a steady load) until `stop()` holds; resolves to how many. */
async function steadyLoad(tenant: string, stop: () => boolean, perTick: number, tickMs: number): Promise<number> {
  let i = 0;
  for (; !stop(); i += perTick) {
    const acks: Promise<unknown>[] = [];
    for (let j = i; j < i + perTick; j++) {
      const e = encodeEvent({ id: `${tenant}-e-${j}`, type: "Reading", data: { i: j } });
      acks.push(publisher.publish(`evt.${tenant}.up.k${j % 4}`, e.data, { headers: e.headers }));
    }
    await Promise.all(acks);
    await new Promise((r) => setTimeout(r, tickMs));
  }
  return i;
}

async function derived(processor: string): Promise<Array<{ id: string; seq: number; tag: string }>> {
  const out = await readDerived<{ tag: string; seq: number }>(nats.nc, `drv.*.${processor}.>`);
  return out.map((o) => ({ id: o.id, seq: o.data.seq, tag: o.data.tag }));
}

async function dlqCount(processor: string): Promise<number> {
  const m = await (await import("@nats-io/jetstream")).jetstreamManager(nats.nc);
  const info = await m.streams.info(STREAMS.dlq, { subjects_filter: `dlq.*.${processor}` });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

describe("plugin upgrade without loss", () => {
  it("upgrade under load loses nothing: every event once, v1 before the switch and v2 after, never a batch mixed; the old processes drained; a version that never becomes ready leaves the running one serving", async () => {
    const tenant = uniqueName("upg");
    const processor = uniqueName("upecho");
    const v1 = await bundle("up", "1.0.0", "v1");
    const v2 = await bundle("up", "2.0.0", "v2");
    const never = await bundle("up", "3.0.0", "v3", { fault: "wrong-nonce", startTimeoutMs: 2_000 });
    const events: Array<{ type: string; data: unknown }> = [];
    const plugins = await managedPlugin("up", v1, { processor: true, delayMs: 3 });
    const { sup, host, lines } = await startAll(plugins, events);
    await sup.ready("up", 20_000).catch((e) => { console.log(lines.join("\n")); throw e; });
    const v1Pids = sup.status("up").instances.map((i) => i.pid!);
    // Another instance's host (no supervisor of its own) follows the stored choice.
    const follower = createPluginHost({ nc: nats.nc, plugins });
    const following = await followPluginVersions(nats.nc, follower);
    closers.push(async () => following.stop());
    expect(follower.plugins.get("up")).toMatchObject({ service: "up", manifest: { version: "1.0.0" } });
    const runtime: ProcessorRuntime = await startProcessorRuntime(nats.nc, {
      processors: parseConfig(`processors:\n  - name: ${processor}\n    kind: up/echo\n    subjects: ["evt.${tenant}.up.*"]\n    partitions: 1\n    batch_size: 16\n    backoff: [20ms, 50ms]\n`, pipelineSections({ threads: 1 })).processors,
      threads: 1,
      metricsIntervalMs: 0,
      remote: host,
    });
    closers.push(() => runtime.close());
    let loading = true;
    const load = steadyLoad(tenant, () => !loading, 10, 10);
    await until(async () => (await derived(processor)).length >= 100, 30_000, "100 outputs of v1");
    const result = await upgradePlugin("up", v2, { nc: nats.nc, supervisor: sup, host, storeDir, trustedKeysDir: keysDir, allowUnsigned: true, settleMs: 200 });
    expect(result).toMatchObject({ plugin: "up", version: "2.0.0", service: "up--b", previous: { version: "1.0.0", service: "up" } });
    // The old version was drained and stopped: none of its processes is left.
    await until(() => pidsOfUid(pluginUid("up")).length === 0, 10_000, "v1's processes gone");
    for (const p of v1Pids) expect(() => process.kill(p, 0)).toThrow();
    expect(pidsOfUid(pluginUid("up--b")).length).toBeGreaterThan(0);
    expect(sup.spec("up").version).toBe("2.0.0");
    // The choice is stored for every instance's callers and for a failover.
    const stored = (await readPluginVersions(nats.nc)).get("up");
    expect(stored).toMatchObject({ version: "2.0.0", service: "up--b", digest: result.digest, previous: { version: "1.0.0", service: "up" } });
    // The other instance's callers moved too, and learned v2's manifest with the switch.
    await until(() => follower.plugins.get("up")!.service === "up--b", 5_000, "the follower on up--b");
    expect(follower.plugins.get("up")!.manifest).toEqual(host.plugins.get("up")!.manifest);
    expect(follower.plugins.get("up")!.manifest!.version).toBe("2.0.0");

    // An upgrade to a version that never answers INFO with its nonce fails, over the control
    // subject as the CLI sends it, while the load goes on; v2 keeps serving.
    const control = servePluginControl(nats.nc, { host, supervisor: sup, instance: "test", upgrade: (name, dir, by) => upgradePlugin(name, dir, { nc: nats.nc, supervisor: sup, host, storeDir, trustedKeysDir: keysDir, allowUnsigned: true, by, settleMs: 200 }) });
    closers.push(() => control.close());
    const failed = await requestPluginUpgrade(nats.nc, "up", never, { timeoutMs: 30_000 }).then(() => undefined, (e: unknown) => e);
    expect(failed).toBeInstanceOf(PluginUpgradeFailedError);
    expect((failed as PluginUpgradeFailedError).code).toBe("FLEX_PLUGIN_UPGRADE_FAILED");
    expect((failed as Error).message).toMatch(/FLEX_PLUGIN_START_TIMEOUT|did not register/u);
    await until(() => pidsOfUid(pluginUid("up")).length === 0, 10_000, "v3's processes gone");
    expect(sup.spec("up").version).toBe("2.0.0");
    expect((await readPluginVersions(nats.nc)).get("up")).toEqual(stored);

    // Still under load after both upgrades, then the load stops.
    await new Promise((r) => setTimeout(r, 500));
    loading = false;
    const N = await load;
    await until(async () => (await derived(processor)).length >= N, 60_000, `${N} outputs`);
    await runtime.idle();
    const out = await derived(processor);
    // Exactly once: N outputs, one per source event, ids as deterministic as in-process kinds.
    expect(out).toHaveLength(N);
    expect(new Set(out.map((o) => o.id)).size).toBe(N);
    expect(new Set(out.map((o) => o.seq)).size).toBe(N);
    expect(await dlqCount(processor)).toBe(0);
    // One partition in order: the tags by source sequence are v1 … v1 v2 … v2 (a batch is a
    // run of consecutive sequences, so a mixed batch would show as v2 before a v1).
    const tags = [...out].sort((a, b) => a.seq - b.seq).map((o) => o.tag);
    const firstV2 = tags.indexOf("v2");
    expect(firstV2).toBeGreaterThan(0);
    expect(tags.slice(0, firstV2).every((t) => t === "v1")).toBe(true);
    expect(tags.slice(firstV2).every((t) => t === "v2")).toBe(true);
    expect(tags).not.toContain("v3");
    // Lifecycle: PluginStarted of 2.0.0, then PluginStopped of 1.0.0; nothing of 3.0.0.
    const started = events.findIndex((e) => e.type === PLUGIN_EVENT_TYPES.started && (e.data as { version?: string }).version === "2.0.0");
    const stoppedOld = events.findIndex((e) => e.type === PLUGIN_EVENT_TYPES.stopped && (e.data as { version?: string }).version === "1.0.0");
    expect(started).toBeGreaterThan(-1);
    expect(stoppedOld).toBeGreaterThan(started);
    expect(events.some((e) => JSON.stringify(e.data).includes("3.0.0"))).toBe(false);
    // plugin_status shows the new version running (the old version's stop does not make it "stopped").
    const engine = createProjectionEngine(nats.nc, { dataDir: await mkdtemp(join(work, "proj-")), projections: [pluginStatusProjection()], log: () => undefined });
    closers.push(() => engine.close());
    await engine.start();
    let row: Record<string, unknown> | undefined;
    await until(async () => {
      row = (await engine.query("plugin_status", { tenant: SYSTEM_TENANT, filter: { plugin: "up" } })).rows[0];
      return row?.version === "2.0.0";
    }, 10_000, "plugin_status of up");
    expect(row).toMatchObject({ plugin: "up", state: "running", version: "2.0.0" });

    // A failover: the instance taking the lease over, with flexcore.yaml still naming v1,
    // starts the chosen v2 under the chosen service; an operator's newer bundle in
    // flexcore.yaml (neither the chosen nor the replaced one) wins, under the chosen service.
    const records = await readPluginVersions(nats.nc);
    const takeover = await applyPluginVersions(await managedPlugin("up", v1, { processor: true }), records, { storeDir, trustedKeysDir: keysDir });
    expect(takeover.managed[0]!.spec).toMatchObject({ name: "up", version: "2.0.0", service: "up--b", bundleDir: join(storeDir, result.digest), config: { processor: true } });
    const v4 = await bundle("up", "4.0.0", "v4");
    const operator = await applyPluginVersions(await managedPlugin("up", v4, {}), records, { storeDir, trustedKeysDir: keysDir });
    expect(operator.managed[0]!.spec).toMatchObject({ version: "4.0.0", service: "up--b" });
  }, 180_000);

  it("a tenant cannot reach the upgrade subject: refused by the server, and nothing is upgraded", async () => {
    let asked = 0;
    const host = createPluginHost({ nc: nats.nc, plugins: { managed: [], external: [] } });
    const control = servePluginControl(nats.nc, { host, instance: "tenant-test", upgrade: async () => void (asked += 1) });
    closers.push(() => control.close());
    const tenantNc = await nats.connectAs("acme");
    const err = await tenantNc.request("flexcore.plugins.upgrade.up", JSON.stringify({ bundle: "/tmp/evil" }), { timeout: 1_000 }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeDefined();
    expect(String((err as Error).message)).toMatch(/permission|timeout|no responders/iu);
    await new Promise((r) => setTimeout(r, 200));
    expect(asked).toBe(0);
  });

  it("disable stops every process of the plugin, enable starts it again (the stored switch, as flexcore plugins disable|enable sets it)", async () => {
    const dir = await bundle("dis", "1.0.0", "d1");
    const plugins = await managedPlugin("dis", dir, {});
    const { sup, host, lines } = await startAll(plugins);
    await sup.ready("dis", 20_000).catch((e) => { console.log(lines.join("\n")); throw e; });
    expect(pidsOfUid(pluginUid("dis")).length).toBeGreaterThan(0);
    const follow = await followPluginSwitches(nats.nc, host, undefined, sup);
    closers.push(async () => follow.stop());
    await setPluginEnabled(nats.nc, "dis", false, "test");
    await until(() => pidsOfUid(pluginUid("dis")).length === 0, 10_000, "no process of dis left");
    expect(sup.status("dis")).toMatchObject({ state: "stopped", leaseHeld: false, instances: [] });
    expect(host.plugins.get("dis")!.enabled).toBe(false);
    // Stays stopped: nothing restarts it.
    await new Promise((r) => setTimeout(r, 1_000));
    expect(pidsOfUid(pluginUid("dis"))).toEqual([]);
    await setPluginEnabled(nats.nc, "dis", true, "test");
    await until(() => sup.status("dis").state === "running", 20_000, "dis running again");
    expect(pidsOfUid(pluginUid("dis")).length).toBeGreaterThan(0);
    expect((await nats.nc.request("flexplugin.dis.processor.echo", "hi", { timeout: 2_000 })).string()).toBe("hi");
  }, 60_000);
});
