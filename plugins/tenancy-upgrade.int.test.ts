// Upgrades of a `tenancy: tenant` plugin without loss, on a real nats-server with real
// sandboxed processes and the real processor runtime: under a steady load on two tenants, an
// upgrade asked over the control subject (as the CLI asks it) starts every tenant's new set
// beside its old one under `<name>--b_<tenant>`, switches all tenants at once, drains the old
// sets: every event of both tenants processed exactly once, each tenant's outputs v1 then v2,
// never a batch mixed, served by its own tenant's set; the old processes are gone. An upgrade
// whose new set never becomes ready for one tenant fails for all, and both keep serving the
// running version. The new slot's NATS user is confined like the first slot's, and a tenant
// can neither ask for an upgrade nor call a set.
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig, pipelineSections, startProcessorRuntime } from "../processors/index.js";
import { createEventStore, encodeEvent, PLUGIN_EVENT_TYPES } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { pidsOfUid } from "../test/plugin-process.js";
import { PLUGIN_CONTROL_SUBJECT, requestPluginUpgrade, servePluginControl } from "./control.js";
import { PluginUpgradeFailedError } from "./errors.js";
import { connectAsPlugin, permissionDenied, startSupervisorBed, until } from "./fixtures/harness.js";
import type { SupervisorBed } from "./fixtures/harness.js";
import { dlqCount as countDeadLetters, expectOncePerEvent, servedOutputs, startTenantLoads, tenantBundle } from "./fixtures/tenant-upgrade.js";
import type { Served } from "./fixtures/tenant-upgrade.js";
import { resolvePlugins, supervisedSpecs } from "./host-config.js";
import { createPluginHost } from "./host.js";
import { createPluginLifecycle } from "./lifecycle.js";
import { pluginUid, startPluginSupervisor, tenantSlotServiceNames } from "./supervisor.js";
import { adoptPluginVersion, applyPluginVersions, followPluginVersions, readPluginVersions, upgradePlugin } from "./upgrade.js";

const TENANTS = ["acme", "globex"] as const;
const PLUGIN = "tu";
/** The plugin of the lease and disabled-set cases. */
const OTHER = "tw";
let bed: SupervisorBed;
let nats: TestNats;
let credentialsDir: string;
let storeDir: string;
let keysDir: string;
let publisher: Publisher;
const closers: Array<() => Promise<unknown>> = [];
const opened: NatsConnection[] = [];

beforeAll(async () => {
  // As flexcore up writes them: both slots' users for every tenant.
  bed = await startSupervisorBed("flexcore-plugin-tenancy-upgrade-", [PLUGIN, OTHER].flatMap((p) => TENANTS.flatMap((t) => tenantSlotServiceNames(p, t).filter((s): s is string => s !== undefined))), TENANTS);
  ({ nats, credentialsDir, storeDir, keysDir, publisher } = bed);
}, 60_000);

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  for (const nc of opened) await nc.close().catch(() => undefined);
  await bed?.close();
});

/** A packed `tenancy: tenant` bundle of the fixture as PLUGIN `version`, outputs tagged `tag`; `fault` in its FAULT file. */
const bundle = (version: string, tag: string, more: { fault?: string; startTimeoutMs?: number; name?: string } = {}): Promise<string> =>
  tenantBundle(closers, { name: PLUGIN, version, tag, description: "tenant upgrade fixture", ...more });
const outputs = (processor: string): Promise<Served[]> => servedOutputs(nats.nc, processor);
const dlqCount = (processor: string): Promise<number> => countDeadLetters(nats.nc, processor);


async function asPluginUser(service: string): Promise<NatsConnection> {
  const nc = await connectAsPlugin(nats.server.url, credentialsDir, service);
  opened.push(nc);
  return nc;
}

const pidsOf = (service: string): number[] => pidsOfUid(pluginUid(service));

describe("upgrades of tenancy: tenant plugins", () => {
  it("upgrade under load on two tenants loses nothing: every event once, each tenant v1 then v2 from its own set, never a batch mixed; the old sets drained; a version that never becomes ready for one tenant leaves both serving", async () => {
    const v1 = await bundle("1.0.0", "v1");
    const v2 = await bundle("2.0.0", "v2");
    // v3 registers with a nonce of its own for acme only: globex's new set would be ready, acme's never.
    const never = await bundle("3.0.0", "v3", { fault: "wrong-nonce-for-acme", startTimeoutMs: 2_000 });
    const entry = { name: PLUGIN, managed: true as const, bundle: v1, allowUnsigned: true, instances: 1, config: { processor: true, delayMs: 3 }, enabled: true, tenant: undefined, tenants: TENANTS };
    const plugins = await resolvePlugins([entry], { baseDir: bed.work, storeDir, trustedKeysDir: keysDir });
    const store = await createEventStore(nats.nc);
    const events: Array<{ tenant: string; type: string; version: unknown }> = [];
    const lifecycle = createPluginLifecycle({ store: { append: (ref, evs, opts) => (evs.forEach((e) => events.push({ tenant: typeof ref === "string" ? ref.split(".")[1]! : ref.tenant, type: e.type, version: (e.data as { version?: unknown }).version })), store.append(ref, evs, opts)) } });
    const lines: string[] = [];
    const sup = await startPluginSupervisor({ nc: nats.nc, plugins: plugins.managed.flatMap((m) => supervisedSpecs(m)), natsUrl: nats.server.url, credentialsDir, log: (l) => void lines.push(l), lifecycle, graceMs: 2_000, leaseTtlMs: 3_000 });
    closers.push(() => sup.stop());
    await sup.ready(PLUGIN, 30_000).catch((e: unknown) => {
      console.log(lines.join("\n"));
      throw e;
    });
    const v1Pids = TENANTS.flatMap((t) => sup.status(`${PLUGIN}_${t}`).instances.map((i) => i.pid!));
    // A second instance, running since before the upgrade, standby for both sets; it follows the stored choice as flexcore up wires it.
    const standby = await startPluginSupervisor({ nc: nats.nc, plugins: plugins.managed.flatMap((m) => supervisedSpecs(m)), natsUrl: nats.server.url, credentialsDir, instanceId: "standby", graceMs: 2_000, leaseTtlMs: 3_000 });
    closers.push(() => standby.stop());
    const adopted: string[] = [];
    const following = await followPluginVersions(nats.nc, { setService: () => undefined }, undefined, (name, record) => void adoptPluginVersion(standby, plugins.managed.find((m) => m.entry.name === name)!, record, { storeDir, trustedKeysDir: keysDir }).then((keys) => adopted.push(...keys)));
    closers.push(async () => following.stop());
    const host = createPluginHost({ nc: nats.nc, plugins, supervisor: sup });
    const control = servePluginControl(nats.nc, { host, supervisor: sup, instance: "test", upgrade: (name, dir, by) => upgradePlugin(name, dir, { nc: nats.nc, supervisor: sup, host, storeDir, trustedKeysDir: keysDir, allowUnsigned: true, by, settleMs: 200 }) });
    closers.push(() => control.close());

    const category = uniqueName("tu").replace(/_/gu, "-");
    const processor = uniqueName("tuproc");
    // One processor per tenant, one ordered partition each.
    const yaml = TENANTS.map((t) => `  - name: ${processor}-${t}\n    kind: ${PLUGIN}/echo\n    subjects: ["evt.${t}.${category}.*"]\n    partitions: 1\n    batch_size: 16\n    backoff: [20ms, 50ms]\n`).join("");
    const runtime = await startProcessorRuntime(nats.nc, { processors: parseConfig(`processors:\n${yaml}`, pipelineSections({ threads: 1 })).processors, threads: 1, metricsIntervalMs: 0, remote: host });
    closers.push(() => runtime.close());
    const loads = startTenantLoads(nats.nc, publisher, TENANTS, category, processor);
    await until(async () => {
      const out = await outputs(processor);
      return TENANTS.every((t) => out.filter((o) => o.subject.startsWith(`drv.${t}.`)).length >= 50);
    }, 30_000, "50 outputs of v1 per tenant");

    // The upgrade, as `flexcore plugins upgrade tu <dir>` asks it.
    const result = await requestPluginUpgrade(nats.nc, PLUGIN, v2, { timeoutMs: 30_000 });
    expect(result.upgraded).toMatchObject({ plugin: PLUGIN, version: "2.0.0", service: `${PLUGIN}--b`, previous: { version: "1.0.0", service: PLUGIN } });
    // Every tenant's old set drained and stopped; its new set runs under <name>--b_<tenant>.
    await until(() => TENANTS.every((t) => pidsOf(`${PLUGIN}_${t}`).length === 0), 10_000, "v1's processes gone");
    for (const p of v1Pids) expect(() => process.kill(p, 0)).toThrow();
    for (const t of TENANTS) {
      expect(pidsOf(`${PLUGIN}--b_${t}`).length).toBeGreaterThan(0);
      expect(sup.status(`${PLUGIN}_${t}`)).toMatchObject({ tenant: t, state: "running", leaseHeld: true });
      expect(sup.spec(`${PLUGIN}_${t}`)).toMatchObject({ version: "2.0.0", tenant: t, service: `${PLUGIN}--b_${t}` });
    }
    // One stored choice for the plugin; every tenant's set follows its slot.
    const stored = (await readPluginVersions(nats.nc)).get(PLUGIN);
    expect(stored).toMatchObject({ version: "2.0.0", service: `${PLUGIN}--b`, previous: { version: "1.0.0", service: PLUGIN } });

    // v3: acme's new set never answers INFO with its nonce: the upgrade fails for both
    // tenants, globex's ready new set is stopped too, both go on with v2; nothing stored.
    const before = lines.length;
    const failed = await requestPluginUpgrade(nats.nc, PLUGIN, never, { timeoutMs: 30_000 }).then(() => undefined, (e: unknown) => e);
    expect(failed).toBeInstanceOf(PluginUpgradeFailedError);
    expect((failed as PluginUpgradeFailedError).code).toBe("FLEX_PLUGIN_UPGRADE_FAILED");
    expect((failed as Error).message).toMatch(/tenant acme/u);
    // globex's new set did become ready, and was stopped with acme's.
    const during = lines.slice(before);
    expect(during.some((l) => /^plugin tu_globex: instance \S+ ready/u.test(l)), during.join("\n")).toBe(true);
    expect(during.some((l) => /^plugin tu_globex: version 3\.0\.0 \(service tu_globex\) abandoned/u.test(l)), during.join("\n")).toBe(true);
    await until(() => TENANTS.every((t) => pidsOf(`${PLUGIN}_${t}`).length === 0), 10_000, "v3's processes gone");
    for (const t of TENANTS) {
      expect(sup.spec(`${PLUGIN}_${t}`).version).toBe("2.0.0");
      expect(pidsOf(`${PLUGIN}--b_${t}`).length).toBeGreaterThan(0);
    }
    expect((await readPluginVersions(nats.nc)).get(PLUGIN)).toEqual(stored);

    const { counts, out } = await loads.finish(() => runtime.idle());
    for (const [i, t] of TENANTS.entries()) {
      const mine = out.filter((o) => o.subject.startsWith(`drv.${t}.`));
      const n = counts[i]!;
      expectOncePerEvent(mine, n, t);
      // v1 … v1 v2 … v2 by source sequence: no batch mixed, nothing of v3.
      const sorted = [...mine].sort((a, b) => a.seq - b.seq);
      const tags = sorted.map((o) => o.tag);
      const firstV2 = tags.indexOf("v2");
      expect(firstV2, t).toBeGreaterThan(0);
      expect(tags.slice(0, firstV2).every((x) => x === "v1")).toBe(true);
      expect(tags.slice(firstV2).every((x) => x === "v2")).toBe(true);
      // Each event served by its own tenant's set of the version that tagged it, asked for this tenant only.
      for (const o of sorted) {
        expect(o.servedBy).toMatchObject({ service: o.tag === "v1" ? `${PLUGIN}_${t}` : `${PLUGIN}--b_${t}`, tenant: t });
        expect(o.requestTenant).toBe(t);
      }
    }
    expect(await dlqCount(processor)).toBe(0);
    // Lifecycle on each tenant's own subject: v2 started, then v1 stopped; nothing of 3.0.0.
    for (const t of TENANTS) {
      const mine = events.filter((e) => e.tenant === t);
      const started = mine.findIndex((e) => e.type === PLUGIN_EVENT_TYPES.started && e.version === "2.0.0");
      const stoppedOld = mine.findIndex((e) => e.type === PLUGIN_EVENT_TYPES.stopped && e.version === "1.0.0");
      expect(started, t).toBeGreaterThan(-1);
      expect(stoppedOld, t).toBeGreaterThan(started);
    }
    expect(events.some((e) => e.version === "3.0.0")).toBe(false);

    // A failover with flexcore.yaml still naming v1: every tenant's set starts v2 under <name>--b_<tenant>.
    const records = await readPluginVersions(nats.nc);
    const takeover = await applyPluginVersions(plugins, records, { storeDir, trustedKeysDir: keysDir });
    expect(supervisedSpecs(takeover.managed[0]!).map((s) => [s.tenant, s.version, s.service])).toEqual(TENANTS.map((t) => [t, "2.0.0", `${PLUGIN}--b_${t}`]));

    // The instance that was standby all along followed the choice: when the lease holder
    // stops, it takes both sets over with v2 under <name>--b_<tenant>, and the callers'
    // events (sent to <name>--b_<tenant>) go on.
    expect(adopted.sort()).toEqual(TENANTS.map((t) => `${PLUGIN}_${t}`));
    await sup.stop();
    await standby.ready(PLUGIN, 30_000);
    for (const t of TENANTS) {
      expect(standby.spec(`${PLUGIN}_${t}`)).toMatchObject({ version: "2.0.0", service: `${PLUGIN}--b_${t}` });
      expect(pidsOf(`${PLUGIN}--b_${t}`).length).toBeGreaterThan(0);
      expect(pidsOf(`${PLUGIN}_${t}`)).toEqual([]);
    }
    await Promise.all(TENANTS.flatMap((t) => Array.from({ length: 20 }, (_, j) => {
      const e = encodeEvent({ id: `${t}-${category}-after-failover-${j}`, type: "Reading", data: { i: j } });
      return publisher.publish(`evt.${t}.${category}.k${j % 3}`, e.data, { headers: e.headers });
    })));
    await until(async () => {
      const all = await outputs(processor);
      return TENANTS.every((t, i) => all.filter((o) => o.subject.startsWith(`drv.${t}.`)).length === counts[i]! + 20);
    }, 30_000, "20 more outputs per tenant after the failover");
    const tail = await outputs(processor);
    for (const [i, t] of TENANTS.entries()) {
      const mine = tail.filter((o) => o.subject.startsWith(`drv.${t}.`)).sort((a, b) => a.seq - b.seq).slice(counts[i]!);
      expect(mine.every((o) => o.tag === "v2" && o.servedBy.service === `${PLUGIN}--b_${t}` && o.servedBy.tenant === t), t).toBe(true);
    }
    expect(await dlqCount(processor)).toBe(0);
  }, 90_000);

  it("the new slot's NATS user is confined to its own tenant's set: acme's --b user cannot reach globex's subjects, evt.> or drv.>", async () => {
    const acmeB = await asPluginUser(`${PLUGIN}--b_acme`);
    for (const subject of [`flexplugin.${PLUGIN}--b_globex.>`, `flexplugin.${PLUGIN}_globex.>`, `flexplugin.${PLUGIN}_acme.>`, `$SRV.INFO.${PLUGIN}--b_globex`, `flexplugin.${PLUGIN}--b.>`, "evt.>", "evt.globex.>", "drv.>", "_INBOX.>"]) {
      expect(await permissionDenied(acmeB, () => acmeB.subscribe(subject)), subject).toMatch(/subscri/i);
    }
    for (const subject of [`flexplugin.${PLUGIN}--b_globex.processor.echo`, "evt.globex.orders.1", "drv.globex.x.1", "$JS.API.STREAM.LIST", `${PLUGIN_CONTROL_SUBJECT}.upgrade.${PLUGIN}`]) {
      expect(await permissionDenied(acmeB, () => acmeB.publish(subject, "forged")), subject).toMatch(/publish/i);
    }
    // Its own service's subjects it may serve.
    expect(await permissionDenied(acmeB, () => acmeB.subscribe(`flexplugin.${PLUGIN}--b_acme.>`))).toBeUndefined();
  });

  it("a tenant can neither ask for an upgrade nor call a set of either slot", async () => {
    for (const t of TENANTS) {
      const tenantNc = await nats.connectAs(t);
      const err = await tenantNc.request(`${PLUGIN_CONTROL_SUBJECT}.upgrade.${PLUGIN}`, JSON.stringify({ bundle: "/tmp", by: t }), { timeout: 1_000 }).then(() => undefined, (e: unknown) => e);
      expect(String((err as Error | undefined)?.message), t).toMatch(/permission/iu);
      for (const service of TENANTS.flatMap((x) => tenantSlotServiceNames(PLUGIN, x))) {
        const e = await tenantNc.request(`flexplugin.${service}.processor.echo`, JSON.stringify({ protocol: 1, tenant: t, kind: "echo", options: {}, states: {}, inputs: [] }), { timeout: 1_000 }).then(() => undefined, (x: unknown) => x);
        expect(String((e as Error | undefined)?.message), `${t} → ${service}`).toMatch(/permission/iu);
      }
    }
  });

  it("is refused, starting nothing, while another instance holds a tenant's set; a set its tenant disabled takes the new version and runs it once enabled; a failed upgrade does not block the next", async () => {
    const v1 = await bundle("1.0.0", "v1", { name: OTHER });
    const plugins = await resolvePlugins([{ name: OTHER, managed: true as const, bundle: v1, allowUnsigned: true, instances: 1, config: {}, enabled: true, tenant: undefined, tenants: TENANTS }], { baseDir: bed.work, storeDir, trustedKeysDir: keysDir });
    const specs = plugins.managed.flatMap((m) => supervisedSpecs(m));
    const common = { nc: nats.nc, natsUrl: nats.server.url, credentialsDir, graceMs: 1_000, leaseTtlMs: 3_000 };
    // Another instance runs globex's set; this one gets acme's only.
    const elsewhere = await startPluginSupervisor({ ...common, plugins: specs.filter((x) => x.tenant === "globex"), instanceId: "elsewhere" });
    closers.push(() => elsewhere.stop());
    await elsewhere.ready(`${OTHER}_globex`, 30_000);
    const sup = await startPluginSupervisor({ ...common, plugins: specs, instanceId: "here" });
    closers.push(() => sup.stop());
    await sup.ready(`${OTHER}_acme`, 30_000);
    const next = { ...plugins.managed[0]!.spec, version: "2.0.0" };
    const refused = await sup.upgrade(OTHER, next).then(() => undefined, (e: unknown) => e);
    expect(refused).toBeInstanceOf(PluginUpgradeFailedError);
    expect((refused as Error).message).toMatch(new RegExp(`${OTHER}_globex .*another instance`, "u"));
    expect(TENANTS.map((t) => pidsOf(`${OTHER}--b_${t}`).length)).toEqual([0, 0]);
    expect(sup.spec(`${OTHER}_acme`).version).toBe("1.0.0");

    // The other instance stops: this one takes globex's set over. Then globex's admin disables it.
    await elsewhere.stop();
    await until(() => sup.status(`${OTHER}_globex`).state === "running", 20_000, "globex's set taken over");
    await sup.setEnabled(`${OTHER}_globex`, false);
    await until(() => pidsOf(`${OTHER}_globex`).length === 0, 10_000, "globex's set stopped");
    const result = await sup.upgrade(OTHER, next);
    expect(result).toMatchObject({ version: "2.0.0", service: `${OTHER}--b` });
    await until(() => pidsOf(`${OTHER}_acme`).length === 0, 10_000, "acme's v1 gone");
    expect(pidsOf(`${OTHER}--b_acme`).length).toBeGreaterThan(0);
    // globex's disabled set started nothing, but holds the new version and slot...
    expect(pidsOf(`${OTHER}--b_globex`)).toEqual([]);
    expect(sup.spec(`${OTHER}_globex`)).toMatchObject({ version: "2.0.0", service: `${OTHER}--b_globex` });
    expect(sup.status(`${OTHER}_globex`).state).toBe("stopped");
    // ...and runs them once enabled.
    await sup.setEnabled(`${OTHER}_globex`, true);
    await sup.ready(`${OTHER}_globex`, 30_000);
    expect(pidsOf(`${OTHER}--b_globex`).length).toBeGreaterThan(0);
    expect(pidsOf(`${OTHER}_globex`)).toEqual([]);

    // A failed upgrade leaves nothing behind that blocks the next one: the retry goes through.
    const broken = await bundle("3.0.0", "v3", { name: OTHER, fault: "wrong-nonce-for-globex" });
    const brokenSpec = (await resolvePlugins([{ name: OTHER, managed: true as const, bundle: broken, allowUnsigned: true, instances: 1, config: {}, enabled: true, tenant: undefined, tenants: TENANTS }], { baseDir: bed.work, storeDir, trustedKeysDir: keysDir })).managed[0]!.spec;
    const failed = await sup.upgrade(OTHER, brokenSpec, { timeoutMs: 1_500 }).then(() => undefined, (e: unknown) => e);
    expect((failed as Error).message).toMatch(/did not become ready for tenant globex/u);
    await until(() => TENANTS.every((t) => pidsOf(`${OTHER}_${t}`).length === 0), 10_000, "3.0.0's processes gone");
    expect(await sup.upgrade(OTHER, { ...next, version: "4.0.0" })).toMatchObject({ version: "4.0.0", service: OTHER, previous: { version: "2.0.0", service: `${OTHER}--b` } });
    await until(() => TENANTS.every((t) => pidsOf(`${OTHER}--b_${t}`).length === 0), 10_000, "2.0.0's processes gone");
    for (const t of TENANTS) expect(sup.status(`${OTHER}_${t}`)).toMatchObject({ state: "running", instances: [expect.objectContaining({ ready: true })] });
  }, 60_000);
});
