// Upgrades of a `tenancy: tenant` plugin whose tenants' sets run on two instances (acme's set
// leased by A, globex's by B), on a real nats-server with real sandboxed processes and the
// real processor runtime: under a steady load on both tenants, the upgrade asked over the
// control subject (as the CLI asks it) is answered by one instance only (A, holder of the
// first enabled set), B joins and upgrades the set it holds, one stored choice switches both
// tenants: every event once, each tenant's outputs by version in order, never a batch mixed,
// the old processes gone on both instances. A version whose new set never becomes ready on B
// fails for both tenants with a coded error naming B and globex, leaves nothing started and
// the stored choice unchanged, and does not block the next upgrade. A tenant (or a plugin's
// user) can neither ask an instance to join nor forge a decision or a report.
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig, pipelineSections, startProcessorRuntime } from "../processors/index.js";
import type { Publisher } from "../streams/index.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { pidsOfUid } from "../test/plugin-process.js";
import { coordinatesUpgrade, requestPluginUpgrade, servePluginControl } from "./control.js";
import { PluginUpgradeFailedError } from "./errors.js";
import { connectAsPlugin, permissionDenied, startSupervisorBed, until } from "./fixtures/harness.js";
import type { SupervisorBed } from "./fixtures/harness.js";
import { dlqCount as countDeadLetters, expectOncePerEvent, servedOutputs, startTenantLoads, tenantBundle } from "./fixtures/tenant-upgrade.js";
import type { Served } from "./fixtures/tenant-upgrade.js";
import { resolvePlugins, supervisedSpecs } from "./host-config.js";
import type { ResolvedPlugins } from "./host-config.js";
import { createPluginHost } from "./host.js";
import type { PluginHost } from "./host.js";
import { pluginUid, startPluginSupervisor, tenantSlotServiceNames } from "./supervisor.js";
import type { PluginSupervisor } from "./supervisor.js";
import { serveUpgradeJoin, UPGRADE_DECISION_SUBJECT, UPGRADE_JOIN_SUBJECT, upgradeJoinCoordinator } from "./upgrade-join.js";
import { adoptPluginVersion, followPluginVersions, readPluginVersions, upgradePlugin } from "./upgrade.js";
import type { CrossInstanceUpgradePlan, UpgradeJoiners } from "./upgrade.js";

const TENANTS = ["acme", "globex"] as const;
const PLUGIN = "tm";
let bed: SupervisorBed;
let nats: TestNats;
let credentialsDir: string;
let keysDir: string;
let publisher: Publisher;
const closers: Array<() => Promise<unknown>> = [];
const opened: NatsConnection[] = [];

beforeAll(async () => {
  bed = await startSupervisorBed("flexcore-plugin-multiup-", TENANTS.flatMap((t) => tenantSlotServiceNames(PLUGIN, t).filter((s): s is string => s !== undefined)), TENANTS);
  ({ nats, credentialsDir, keysDir, publisher } = bed);
}, 60_000);

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  for (const nc of opened) await nc.close().catch(() => undefined);
  await bed?.close();
});

/** A packed `tenancy: tenant` bundle of the fixture as PLUGIN `version`, outputs tagged `tag`; `fault` in its FAULT file. */
const bundle = (version: string, tag: string, more: { fault?: string; startTimeoutMs?: number } = {}): Promise<string> =>
  tenantBundle(closers, { name: PLUGIN, version, tag, description: "multi-instance tenant upgrade fixture", ...more });
const outputs = (processor: string): Promise<Served[]> => servedOutputs(nats.nc, processor);
const dlqCount = (processor: string): Promise<number> => countDeadLetters(nats.nc, processor);

const pidsOf = (service: string): number[] => pidsOfUid(pluginUid(service));

/** One FlexCore instance as `flexcore up` wires it: its own connection, store, supervisor, host, control and join services. */
interface Instance {
  readonly id: string;
  readonly sup: PluginSupervisor;
  readonly host: PluginHost;
  readonly plugins: ResolvedPlugins;
  /** The upgrades this instance's control service took on (as coordinator). */
  readonly coordinated: string[];
  readonly lines: string[];
  /** Stops answering join requests (an instance that does not answer). */
  stopJoining(): Promise<void>;
  /**
   * As coordinator: the joiners' margin beyond the start timeout (undefined: the default),
   * and whether its decisions are lost on the way (as when it dies right after deciding).
   */
  readonly coordinator: { marginMs: number | undefined; decisionsLost: boolean };
}

async function startInstance(id: string, v1: string, enabled: (tenant: string) => boolean): Promise<Instance> {
  const nc = await nats.connect({ name: `instance-${id}` });
  opened.push(nc);
  const storeDir = join(bed.work, `store-${id}`);
  await mkdir(storeDir, { mode: 0o755, recursive: true });
  const entry = { name: PLUGIN, managed: true as const, bundle: v1, allowUnsigned: true, instances: 1, config: { processor: true, delayMs: 3 }, enabled: true, tenant: undefined, tenants: TENANTS };
  const plugins = await resolvePlugins([entry], { baseDir: bed.work, storeDir, trustedKeysDir: keysDir });
  const lines: string[] = [];
  const log = (l: string): void => void lines.push(l);
  const sup = await startPluginSupervisor({ nc, plugins: plugins.managed.flatMap((m) => supervisedSpecs(m)).map((s) => ({ ...s, enabled: enabled(s.tenant!) })), natsUrl: nats.server.url, credentialsDir, instanceId: id, log, graceMs: 2_000, leaseTtlMs: 3_000 });
  closers.push(() => sup.stop());
  const host = createPluginHost({ nc, plugins, supervisor: sup });
  const following = await followPluginVersions(nc, host, undefined, (name, record) => void adoptPluginVersion(sup, plugins.managed.find((m) => m.entry.name === name)!, record, { nc, storeDir, trustedKeysDir: keysDir }));
  closers.push(async () => following.stop());
  const coordinated: string[] = [];
  const knobs: Instance["coordinator"] = { marginMs: undefined, decisionsLost: false };
  const joiners = async (plan: CrossInstanceUpgradePlan): Promise<UpgradeJoiners> => {
    const j = await upgradeJoinCoordinator(nc, { instance: id, log, ...(knobs.marginMs === undefined ? {} : { installMarginMs: knobs.marginMs }) })(plan);
    return knobs.decisionsLost ? { ...j, commit: () => undefined, abort: () => undefined } : j;
  };
  const control = servePluginControl(nc, {
    host,
    supervisor: sup,
    instance: id,
    upgrade: (name, dir, by) => {
      coordinated.push(name);
      return upgradePlugin(name, dir, { nc, supervisor: sup, host, storeDir, trustedKeysDir: keysDir, allowUnsigned: true, by, settleMs: 200, joiners });
    },
  });
  closers.push(() => control.close());
  const joining = serveUpgradeJoin(nc, { supervisor: sup, host, instance: id, storeDir, trustedKeysDir: keysDir, allowUnsigned: () => true, settleMs: 200, log });
  closers.push(() => joining.close());
  return { id, sup, host, plugins, coordinated, lines, stopJoining: () => joining.close(), coordinator: knobs };
}

let a: Instance;
let b: Instance;

describe("upgrades of a tenancy: tenant plugin whose sets run on two instances", () => {
  it("under load: one coordinator, both tenants switch together, every event once, v1 then v2 per tenant; a version never ready on B fails for both naming B and globex, starts nothing that stays, stores nothing; the next upgrade goes through", async () => {
    const v1 = await bundle("1.0.0", "v1");
    const v2 = await bundle("2.0.0", "v2");
    // v3's new set for globex registers with a nonce of its own: never ready on B; acme's on A is.
    const never = await bundle("3.0.0", "v3", { fault: "wrong-nonce-for-globex", startTimeoutMs: 2_000 });
    const v4 = await bundle("4.0.0", "v4");
    // B takes globex's lease (acme's switched off there for now), then A takes acme's; then B stands by for acme.
    b = await startInstance("B", v1, (t) => t === "globex");
    await b.sup.ready(`${PLUGIN}_globex`, 30_000);
    a = await startInstance("A", v1, () => true);
    await a.sup.ready(`${PLUGIN}_acme`, 30_000);
    await b.sup.setEnabled(`${PLUGIN}_acme`, true);
    await until(() => b.sup.status(`${PLUGIN}_acme`).state === "standby" && a.sup.status(`${PLUGIN}_globex`).state === "standby", 10_000, "each instance standby for the other's set");
    expect(a.sup.status(`${PLUGIN}_acme`).leaseHeld).toBe(true);
    expect(b.sup.status(`${PLUGIN}_globex`).leaseHeld).toBe(true);
    // Exactly one instance coordinates: the holder of the first enabled set (acme's).
    expect([a, b].filter((i) => coordinatesUpgrade(i.sup, PLUGIN)).map((i) => i.id)).toEqual(["A"]);
    const v1Pids = [...a.sup.status(`${PLUGIN}_acme`).instances, ...b.sup.status(`${PLUGIN}_globex`).instances].map((i) => i.pid!);

    const category = uniqueName("tm").replace(/_/gu, "-");
    const processor = uniqueName("tmproc");
    const yaml = TENANTS.map((t) => `  - name: ${processor}-${t}\n    kind: ${PLUGIN}/echo\n    subjects: ["evt.${t}.${category}.*"]\n    partitions: 1\n    batch_size: 16\n    backoff: [20ms, 50ms]\n`).join("");
    // The runtime calls through A's host: acme's calls reach A's processes, globex's B's.
    const runtime = await startProcessorRuntime(nats.nc, { processors: parseConfig(`processors:\n${yaml}`, pipelineSections({ threads: 1 })).processors, threads: 1, metricsIntervalMs: 0, remote: a.host });
    closers.push(() => runtime.close());
    const loads = startTenantLoads(nats.nc, publisher, TENANTS, category, processor);
    await until(async () => {
      const out = await outputs(processor);
      return TENANTS.every((t) => out.filter((o) => o.subject.startsWith(`drv.${t}.`)).length >= 50);
    }, 30_000, "50 outputs of v1 per tenant");

    // The upgrade, as `flexcore plugins upgrade tm <dir>` asks it.
    const result = await requestPluginUpgrade(nats.nc, PLUGIN, v2, { timeoutMs: 60_000 }).catch((e: unknown) => {
      console.log([...a.lines, "----", ...b.lines].join("\n"));
      throw e;
    });
    expect(result.instance).toBe("A");
    expect(result.upgraded).toMatchObject({ plugin: PLUGIN, version: "2.0.0", service: `${PLUGIN}--b`, previous: { version: "1.0.0", service: PLUGIN } });
    expect([a.coordinated, b.coordinated]).toEqual([[PLUGIN], []]);
    expect(b.lines.some((l) => l.includes("joining upgrade") && l.includes("coordinated by instance A") && l.includes(`${PLUGIN}_globex`)), b.lines.join("\n")).toBe(true);
    // Both instances' old sets drained; each runs its tenant's new set under <name>--b_<tenant>.
    await until(() => TENANTS.every((t) => pidsOf(`${PLUGIN}_${t}`).length === 0), 15_000, "v1's processes gone on both instances");
    for (const p of v1Pids) expect(() => process.kill(p, 0)).toThrow();
    for (const [i, t] of [[a, "acme"], [b, "globex"]] as const) {
      expect(pidsOf(`${PLUGIN}--b_${t}`).length).toBeGreaterThan(0);
      expect(i.sup.status(`${PLUGIN}_${t}`)).toMatchObject({ state: "running", leaseHeld: true });
      expect(i.sup.spec(`${PLUGIN}_${t}`)).toMatchObject({ version: "2.0.0", tenant: t, service: `${PLUGIN}--b_${t}` });
    }
    // The standby sets followed the one stored choice, so a failover launches v2 either way.
    await until(() => a.sup.spec(`${PLUGIN}_globex`).version === "2.0.0" && b.sup.spec(`${PLUGIN}_acme`).version === "2.0.0", 10_000, "the standby sets follow v2");
    const stored = (await readPluginVersions(nats.nc)).get(PLUGIN);
    expect(stored).toMatchObject({ version: "2.0.0", service: `${PLUGIN}--b`, previous: { version: "1.0.0", service: PLUGIN } });

    // v3: B's new set for globex never becomes ready: the upgrade fails for both tenants.
    const failed = await requestPluginUpgrade(nats.nc, PLUGIN, never, { timeoutMs: 60_000 }).then(() => undefined, (e: unknown) => e);
    expect(failed).toBeInstanceOf(PluginUpgradeFailedError);
    expect((failed as PluginUpgradeFailedError).code).toBe("FLEX_PLUGIN_UPGRADE_FAILED");
    expect((failed as Error).message).toMatch(/instance B\b.*tenant globex/u);
    expect([a.coordinated, b.coordinated]).toEqual([[PLUGIN, PLUGIN], []]);
    // A's new set for acme did become ready, and was dropped when B's failed.
    expect(a.lines.some((l) => /^plugin tm_acme: version 3\.0\.0 \(service tm_acme\) abandoned/u.test(l)), a.lines.join("\n")).toBe(true);
    await until(() => TENANTS.every((t) => pidsOf(`${PLUGIN}_${t}`).length === 0), 15_000, "v3's processes gone on both instances");
    for (const [i, t] of [[a, "acme"], [b, "globex"]] as const) {
      expect(i.sup.spec(`${PLUGIN}_${t}`).version).toBe("2.0.0");
      expect(i.sup.status(`${PLUGIN}_${t}`)).toMatchObject({ state: "running", leaseHeld: true });
      expect(pidsOf(`${PLUGIN}--b_${t}`).length).toBeGreaterThan(0);
    }
    expect((await readPluginVersions(nats.nc)).get(PLUGIN)).toEqual(stored);

    // The failure blocks nothing: v4 goes through, back under <name>_<tenant>.
    const again = await requestPluginUpgrade(nats.nc, PLUGIN, v4, { timeoutMs: 60_000 });
    expect(again).toMatchObject({ instance: "A", upgraded: { version: "4.0.0", service: PLUGIN, previous: { version: "2.0.0", service: `${PLUGIN}--b` } } });
    await until(() => TENANTS.every((t) => pidsOf(`${PLUGIN}--b_${t}`).length === 0), 15_000, "v2's processes gone on both instances");
    expect((await readPluginVersions(nats.nc)).get(PLUGIN)).toMatchObject({ version: "4.0.0", service: PLUGIN });

    const { counts, out } = await loads.finish(() => runtime.idle());
    const order = ["v1", "v2", "v4"];
    for (const [i, t] of TENANTS.entries()) {
      const mine = out.filter((o) => o.subject.startsWith(`drv.${t}.`));
      const n = counts[i]!;
      expectOncePerEvent(mine, n, t);
      // By source sequence: v1 … v2 … v4, never back, nothing of v3.
      const tags = [...mine].sort((x, y) => x.seq - y.seq).map((o) => o.tag);
      expect(tags.every((x) => order.includes(x)), t).toBe(true);
      expect(tags.every((x, k) => k === 0 || order.indexOf(x) >= order.indexOf(tags[k - 1]!)), t).toBe(true);
      expect(tags[0]).toBe("v1");
      expect(tags.includes("v2"), t).toBe(true);
      // Each event served by its own tenant's set of the version that tagged it.
      for (const o of mine) {
        expect(o.servedBy).toMatchObject({ service: o.tag === "v2" ? `${PLUGIN}--b_${t}` : `${PLUGIN}_${t}`, tenant: t });
        expect(o.requestTenant).toBe(t);
      }
    }
    expect(await dlqCount(processor)).toBe(0);
  }, 150_000);

  it("a tenant cannot publish to the join subject, nor forge a decision or a report; a plugin's user neither; nothing is started", async () => {
    const before = TENANTS.map((t) => pidsOf(`${PLUGIN}_${t}`).length + pidsOf(`${PLUGIN}--b_${t}`).length);
    const joinedBefore = [a, b].map((i) => i.lines.filter((l) => l.includes("joining upgrade")).length);
    const forged = JSON.stringify({ id: "00000000-0000-4000-8000-000000000000", name: PLUGIN, coordinator: "X", version: "9.0.0", digest: "0".repeat(64), slot: `${PLUGIN}--b`, manifest: "", reportTo: "_INBOX.forged", startTimeoutMs: 1_000, decisionTimeoutMs: 1_000 });
    const subjects = [`${UPGRADE_JOIN_SUBJECT}.${PLUGIN}`, `${UPGRADE_DECISION_SUBJECT}.${PLUGIN}.00000000-0000-4000-8000-000000000000`, "_INBOX.forged-report"];
    for (const t of TENANTS) {
      const tenantNc = await nats.connectAs(t);
      for (const subject of subjects) expect(await permissionDenied(tenantNc, () => tenantNc.publish(subject, forged)), `${t} → ${subject}`).toMatch(/publish/iu);
      const err = await tenantNc.request(`${UPGRADE_JOIN_SUBJECT}.${PLUGIN}`, forged, { timeout: 1_000 }).then(() => undefined, (e: unknown) => e);
      expect(String((err as Error | undefined)?.message), t).toMatch(/permission/iu);
      // Nor may it listen for the protocol's messages.
      expect(await permissionDenied(tenantNc, () => tenantNc.subscribe(`${UPGRADE_DECISION_SUBJECT}.>`)), t).toMatch(/subscri/iu);
    }
    const pluginNc = await connectAsPlugin(nats.server.url, credentialsDir, `${PLUGIN}_acme`);
    opened.push(pluginNc);
    for (const subject of subjects) expect(await permissionDenied(pluginNc, () => pluginNc.publish(subject, forged)), subject).toMatch(/publish/iu);
    expect(await permissionDenied(pluginNc, () => pluginNc.subscribe(`${UPGRADE_JOIN_SUBJECT}.>`))).toMatch(/subscri/iu);
    await new Promise((r) => setTimeout(r, 300));
    expect([a, b].map((i) => i.lines.filter((l) => l.includes("joining upgrade")).length)).toEqual(joinedBefore);
    expect(TENANTS.map((t) => pidsOf(`${PLUGIN}_${t}`).length + pidsOf(`${PLUGIN}--b_${t}`).length)).toEqual(before);
    expect((await readPluginVersions(nats.nc)).get(PLUGIN)).toMatchObject({ version: "4.0.0" });
  });

  it("a joiner that hears no decision goes by the stored choice: it commits when the coordinator stored it (and died right after), and drops its new set when it did not", async () => {
    // Short windows: the joiner waits 2 × (2 s start timeout + 3 s margin) for a decision.
    a.coordinator.marginMs = 3_000;
    a.coordinator.decisionsLost = true;
    try {
      // v5: A stores the choice, but its commit never reaches B.
      const v5 = await bundle("5.0.0", "v5", { startTimeoutMs: 2_000 });
      const done = await requestPluginUpgrade(nats.nc, PLUGIN, v5, { timeoutMs: 60_000 });
      expect(done).toMatchObject({ instance: "A", upgraded: { version: "5.0.0", service: `${PLUGIN}--b` } });
      await until(() => b.lines.some((l) => l.includes("the stored choice is this upgrade's: committing")), 30_000, `B commits by the stored choice\n${b.lines.join("\n")}`);
      await until(() => pidsOf(`${PLUGIN}_globex`).length === 0 && b.sup.spec(`${PLUGIN}_globex`).version === "5.0.0", 20_000, "B drained globex's v4 set");
      expect(pidsOf(`${PLUGIN}--b_globex`).length).toBeGreaterThan(0);
      const stored = (await readPluginVersions(nats.nc)).get(PLUGIN);
      expect(stored).toMatchObject({ version: "5.0.0", service: `${PLUGIN}--b` });

      // v6: A's own new set never becomes ready, and its abort never reaches B, whose new set is ready.
      const v6 = await bundle("6.0.0", "v6", { fault: "wrong-nonce-for-acme", startTimeoutMs: 2_000 });
      const failed = await requestPluginUpgrade(nats.nc, PLUGIN, v6, { timeoutMs: 60_000 }).then(() => undefined, (e: unknown) => e);
      expect(failed).toBeInstanceOf(PluginUpgradeFailedError);
      await until(() => b.lines.some((l) => l.includes("not this upgrade's: aborting")), 30_000, `B aborts by the stored choice\n${b.lines.join("\n")}`);
      await until(() => TENANTS.every((t) => pidsOf(`${PLUGIN}_${t}`).length === 0), 15_000, "v6's new sets dropped on both instances");
      for (const [i, t] of [[a, "acme"], [b, "globex"]] as const) {
        expect(i.sup.spec(`${PLUGIN}_${t}`).version).toBe("5.0.0");
        expect(pidsOf(`${PLUGIN}--b_${t}`).length, t).toBeGreaterThan(0);
      }
      expect((await readPluginVersions(nats.nc)).get(PLUGIN)).toEqual(stored);
    } finally {
      a.coordinator.marginMs = undefined;
      a.coordinator.decisionsLost = false;
    }
  }, 90_000);

  it("an instance holding a set that does not answer the join fails the upgrade for every tenant, naming the set; nothing starts, nothing is stored", async () => {
    const v7 = await bundle("7.0.0", "v7");
    const stored = (await readPluginVersions(nats.nc)).get(PLUGIN)!;
    await b.stopJoining();
    const failed = await requestPluginUpgrade(nats.nc, PLUGIN, v7, { timeoutMs: 60_000 }).then(() => undefined, (e: unknown) => e);
    expect(failed).toBeInstanceOf(PluginUpgradeFailedError);
    expect((failed as Error).message).toMatch(new RegExp(`${PLUGIN}_globex are held by no instance that joined`, "u"));
    // Nothing was started beside the running sets (under the stored slot).
    const other = stored.service === PLUGIN ? `${PLUGIN}--b` : PLUGIN;
    expect(TENANTS.map((t) => pidsOf(`${other}_${t}`))).toEqual([[], []]);
    for (const [i, t] of [[a, "acme"], [b, "globex"]] as const) expect(i.sup.spec(`${PLUGIN}_${t}`).version).toBe(stored.version);
    expect((await readPluginVersions(nats.nc)).get(PLUGIN)).toEqual(stored);
  });
});
