// Tenant instances of a `tenancy: tenant` plugin, on a real nats-server with real sandboxed
// processes and the real processor runtime: each tenant's events are served by its own
// instance set `<name>_<tenant>` (never the bare name, never another tenant's); a kill -9 of
// acme's instance does not interrupt globex's; acme's plugin user cannot reach globex's
// instance subjects nor `evt.>`; a tenant's own NATS user cannot call either instance; an
// instance registering without the launch's nonce is never taken as ready; plugin_status
// shows each tenant its own instance on its own subject. (Upgrades: tenancy-upgrade.int.test.ts.)
import { mkdtemp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createProjectionEngine, pluginStatusProjection } from "../projections/index.js";
import { parseConfig, pipelineSections, startProcessorRuntime } from "../processors/index.js";
import { ConfigError } from "../processors/index.js";
import { BUCKETS, createEventStore, encodeEvent, SYSTEM_TENANT } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { pluginViews } from "./control.js";
import { PluginRejectedError, PluginUpgradeFailedError } from "./errors.js";
import { connectAsPlugin, fixtureBundle, packFixtureBundle, permissionDenied, readDerived, startSupervisorBed, until } from "./fixtures/harness.js";
import type { SupervisorBed } from "./fixtures/harness.js";
import { pidsOfUid } from "../test/plugin-process.js";
import { resolvePlugins, supervisedSpecs } from "./host-config.js";
import type { ManagedPluginEntry, ResolvedPlugins } from "./host-config.js";
import { createPluginHost } from "./host.js";
import { createPluginLifecycle } from "./lifecycle.js";
import { pluginUid, startPluginSupervisor } from "./supervisor.js";
import type { PluginSupervisor } from "./supervisor.js";
import { tenantServiceName } from "./tenancy.js";

const TENANTS = ["acme", "globex"] as const;
let bed: SupervisorBed;
let nats: TestNats;
let work: string;
let credentialsDir: string;
let storeDir: string;
let keysDir: string;
let publisher: Publisher;
const closers: Array<() => Promise<unknown>> = [];
const opened: NatsConnection[] = [];

beforeAll(async () => {
  // As flexcore up writes them: one user per tenant instance set, none for the bare name.
  const services = [...TENANTS.map((t) => tenantServiceName("tp", t)), tenantServiceName("tq", "globex")];
  bed = await startSupervisorBed("flexcore-plugin-tenancy-", services, TENANTS);
  ({ nats, work, credentialsDir, storeDir, keysDir, publisher } = bed);
}, 60_000);

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  for (const nc of opened) await nc.close().catch(() => undefined);
  await bed?.close();
});

/** A packed bundle of the fixture plugin as `name`, `tenancy: tenant`; `fault` in its FAULT file. */
async function bundle(name: string, more: { fault?: string; startTimeoutMs?: number; tenancy?: string } = {}): Promise<string> {
  const b = await fixtureBundle();
  closers.push(() => b.close());
  if (more.fault) await writeFile(join(b.dir, "FAULT"), `${more.fault}\n`, { mode: 0o644 });
  await packFixtureBundle(b.dir, { name, version: "1.0.0", description: "tenancy fixture", tenancy: more.tenancy ?? "tenant", kindDescription: "one Echoed per input, saying which instance served it", ...(more.startTimeoutMs !== undefined ? { startTimeoutMs: more.startTimeoutMs } : {}) });
  return b.dir;
}

function entry(name: string, dir: string, tenants: readonly string[] | undefined): ManagedPluginEntry {
  return { name, managed: true, bundle: dir, allowUnsigned: true, instances: 1, config: { processor: true }, enabled: true, tenant: undefined, tenants };
}

interface Served {
  readonly subject: string;
  readonly seq: number;
  readonly servedBy: { readonly service: string; readonly tenant: string | null; readonly pid: number };
  readonly requestTenant: string;
}

/** Every output of the processors named `<processor>-<tenant>` so far. */
async function outputs(processor: string): Promise<Served[]> {
  const out = await readDerived<Omit<Served, "subject">>(nats.nc, "drv.>", (subject) => subject.split(".")[2]!.startsWith(`${processor}-`));
  return out.map((o) => ({ subject: o.subject, ...o.data }));
}

async function publish(tenant: string, category: string, from: number, n: number): Promise<void> {
  const acks: Promise<unknown>[] = [];
  for (let i = from; i < from + n; i++) {
    const e = encodeEvent({ id: `${tenant}-${category}-${i}`, type: "Reading", data: { i } });
    acks.push(publisher.publish(`evt.${tenant}.${category}.k${i % 3}`, e.data, { headers: e.headers }));
  }
  await Promise.all(acks);
}


async function asPluginUser(service: string): Promise<NatsConnection> {
  const nc = await connectAsPlugin(nats.server.url, credentialsDir, service);
  opened.push(nc);
  return nc;
}

describe("tenancy: tenant plugins, one instance set per tenant", () => {
  let plugins: ResolvedPlugins;
  let sup: PluginSupervisor;
  const lines: string[] = [];
  const lifecycle: Array<{ tenant: string; type: string; data: unknown }> = [];

  beforeAll(async () => {
    const dir = await bundle("tp");
    plugins = await resolvePlugins([entry("tp", dir, TENANTS)], { baseDir: work, storeDir, trustedKeysDir: keysDir });
    const store = await createEventStore(nats.nc);
    const life = createPluginLifecycle({ store: { append: (ref, events, opts) => (events.forEach((e) => lifecycle.push({ tenant: typeof ref === "string" ? ref.split(".")[1]! : ref.tenant, type: e.type, data: e.data })), store.append(ref, events, opts)) } });
    sup = await startPluginSupervisor({
      nc: nats.nc,
      plugins: plugins.managed.flatMap((m) => supervisedSpecs(m)),
      natsUrl: nats.server.url,
      credentialsDir,
      log: (l) => void lines.push(l),
      lifecycle: life,
      graceMs: 1_000,
      leaseTtlMs: 3_000,
      // A long first backoff, so the test sees acme's instance down while globex's serves.
      backoff: { initialMs: 3_000, maxMs: 3_000, firstMs: 3_000 },
    });
    closers.push(() => sup.stop());
    await sup.ready("tp", 30_000).catch((e: unknown) => {
      console.log(lines.join("\n"));
      throw e;
    });
  }, 60_000);

  it("runs one sandboxed set per tenant under <name>_<tenant>, each with its own uid and lease, none under the bare name", async () => {
    expect(sup.status().map((s) => s.name).sort()).toEqual(["tp_acme", "tp_globex"]);
    for (const t of TENANTS) {
      const st = sup.status(`tp_${t}`);
      expect(st).toMatchObject({ plugin: "tp", tenant: t, state: "running", leaseHeld: true });
      expect(pidsOfUid(pluginUid(`tp_${t}`)).length).toBeGreaterThan(0);
    }
    expect(pluginUid("tp_acme")).not.toBe(pluginUid("tp_globex"));
    const leases = await new Kvm(nats.nc).open(BUCKETS.leases);
    expect((await leases.get("plugin.tp_acme"))?.operation).toBe("PUT");
    expect((await leases.get("plugin.tp_globex"))?.operation).toBe("PUT");
    expect(await leases.get("plugin.tp")).toBeNull();
    // Nothing answers the bare name.
    await expect(nats.nc.request("flexplugin.tp.processor.echo", "{}", { timeout: 500 })).rejects.toThrow();
    expect(() => sup.status("tp")).toThrow(/managed plugin/u);
  });

  it("each tenant's events are served by its own instance; kill -9 of acme's does not interrupt globex's", async () => {
    const host = createPluginHost({ nc: nats.nc, plugins, supervisor: sup });
    const category = uniqueName("tc").replace(/_/gu, "-");
    const processor = uniqueName("tproc");
    // One processor per tenant (as docs/plugins.md advises for tenancy: tenant plugins): a
    // processor's batch waits for all its tenants' calls, so separate ones never wait on each other.
    const yaml = TENANTS.map((t) => `  - name: ${processor}-${t}\n    kind: tp/echo\n    subjects: ["evt.${t}.${category}.*"]\n    partitions: 1\n    batch_size: 16\n    backoff: [50ms, 100ms]\n`).join("");
    const runtime = await startProcessorRuntime(nats.nc, {
      processors: parseConfig(`processors:\n${yaml}`, pipelineSections({ threads: 1 })).processors,
      threads: 1,
      metricsIntervalMs: 0,
      remote: host,
    });
    closers.push(() => runtime.close());
    await publish("acme", category, 0, 30);
    await publish("globex", category, 0, 30);
    await until(async () => (await outputs(processor)).length >= 60, 30_000, "60 outputs");
    let out = await outputs(processor);
    expect(out).toHaveLength(60);
    for (const o of out) {
      const tenant = o.subject.split(".")[1]!;
      // Served by that tenant's instance, asked for that tenant only.
      expect(o.servedBy).toMatchObject({ service: `tp_${tenant}`, tenant });
      expect(o.requestTenant).toBe(tenant);
    }
    expect(out.filter((o) => o.subject.startsWith("drv.acme.")).length).toBe(30);

    // kill -9 acme's instance (its sandbox: bubblewrap and the whole PID namespace).
    const globexBefore = sup.status("tp_globex").instances[0]!;
    const acmePid = sup.status("tp_acme").instances[0]!.pid!;
    process.kill(-acmePid, "SIGKILL");
    await until(() => sup.status("tp_acme").state === "restarting", 5_000, "acme's set restarting");
    // While acme's is down (its new events wait), globex's keeps serving.
    await publish("acme", category, 30, 10);
    await publish("globex", category, 30, 20);
    await until(async () => (await outputs(processor)).filter((o) => o.subject.startsWith("drv.globex.")).length >= 50, 10_000, "globex served while acme's is down");
    expect(sup.status("tp_acme").state).not.toBe("running");
    expect(sup.status("tp_globex")).toMatchObject({ state: "running", failures: 0 });
    expect(sup.status("tp_globex").instances[0]).toMatchObject({ pid: globexBefore.pid, id: globexBefore.id });
    expect((await outputs(processor)).filter((o) => o.subject.startsWith("drv.acme.")).length).toBe(30);
    // Acme's events waited (retried, never dropped, never sent elsewhere) and come out once its set is back.
    await until(() => sup.status("tp_acme").state === "running", 20_000, "acme's set running again");
    expect(sup.status("tp_acme").failures).toBe(1);
    // 40 of acme's (30 + 10 retried until its set was back), 50 of globex's.
    await until(async () => (await outputs(processor)).length >= 90, 30_000, "90 outputs");
    await runtime.idle();
    out = await outputs(processor);
    expect(out).toHaveLength(90);
    expect(new Set(out.map((o) => o.seq)).size).toBe(90);
    for (const o of out) expect(o.servedBy.service).toBe(`tp_${o.subject.split(".")[1]}`);

    // A tenant the plugin runs no set for is refused for good (403), not sent to any instance.
    const err = await host.process({ kind: "tp/echo", tenant: "initech", options: {}, states: {}, inputs: [] } as never).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(PluginRejectedError);
    expect(host.isPermanent(err)).toBe(true);
    expect(host.hasPlugin("tp", "acme")).toBe(true);
    expect(host.hasPlugin("tp", "initech")).toBe(false);
    expect(host.tenantInstances("tp").map((i) => [i.tenant, i.service, i.state, i.restarts])).toEqual([["acme", "tp_acme", "running", 1], ["globex", "tp_globex", "running", 0]]);
    // flexcore plugins list: one row for the plugin, its sets' processes and restarts summed.
    expect(pluginViews({ host, supervisor: sup, instance: "test" })).toEqual([expect.objectContaining({ plugin: "tp", state: "running", restarts: 1, leaseHeld: true, processes: 2 })]);
  }, 120_000);

  it("plugin_status shows each tenant its own instance, on its own subject, and the system tenant none", async () => {
    expect(lifecycle.length).toBeGreaterThan(0);
    for (const e of lifecycle) expect(TENANTS).toContain(e.tenant);
    const engine = createProjectionEngine(nats.nc, { dataDir: await mkdtemp(join(work, "proj-")), projections: [pluginStatusProjection()], log: () => undefined });
    closers.push(() => engine.close());
    await engine.start();
    const rows = async (tenant: string) => (await engine.query("plugin_status", { tenant, filter: { plugin: "tp" } })).rows;
    await until(async () => (await rows("acme"))[0]?.restarts === 1, 10_000, "acme's plugin_status row");
    expect(await rows("acme")).toEqual([expect.objectContaining({ plugin: "tp", state: "running", restarts: 1 })]);
    await until(async () => (await rows("globex")).length === 1, 10_000, "globex's plugin_status row");
    expect(await rows("globex")).toEqual([expect.objectContaining({ plugin: "tp", state: "running", restarts: 0 })]);
    expect(await rows(SYSTEM_TENANT)).toEqual([]);
  }, 30_000);

  it("acme's plugin user cannot subscribe to or call globex's instance subjects, nor evt.>", async () => {
    const acme = await asPluginUser("tp_acme");
    for (const subject of ["flexplugin.tp_globex.>", "flexplugin.tp_globex.processor.echo", "$SRV.INFO.tp_globex", "flexplugin.tp.>", "evt.>", "evt.globex.>", "drv.>"]) {
      expect(await permissionDenied(acme, () => acme.subscribe(subject)), subject).toMatch(/subscri/i);
    }
    // It would have seen nothing of globex's calls even while asking.
    const spy = await asPluginUser("tp_acme");
    const got: string[] = [];
    spy.subscribe("flexplugin.tp_globex.>", { callback: (e, m) => void (e ? undefined : got.push(m.subject)) });
    await spy.flush().catch(() => undefined);
    for (const subject of ["flexplugin.tp_globex.processor.echo", "evt.globex.orders.1", "$JS.API.STREAM.LIST"]) {
      expect(await permissionDenied(acme, () => acme.publish(subject, "forged")), subject).toMatch(/publish/i);
    }
    await expect(acme.request("flexplugin.tp_globex.processor.echo", JSON.stringify({ protocol: 1, tenant: "globex", kind: "echo", options: {}, states: {}, inputs: [] }), { timeout: 500 })).rejects.toThrow();
    const host = createPluginHost({ nc: nats.nc, plugins, supervisor: sup });
    await host.process({ kind: "tp/echo", tenant: "globex", options: {}, states: {}, inputs: [{ seq: 1, subject: "evt.globex.x.k", key: "k", id: "1", type: "T", time: new Date().toISOString(), data: {} }] } as never);
    await new Promise((r) => setTimeout(r, 200));
    expect(got).toEqual([]);
  });

  it("a tenant's NATS user cannot call either instance (its own included)", async () => {
    for (const t of TENANTS) {
      const tenantNc = await nats.connectAs(t);
      for (const service of ["tp_acme", "tp_globex"]) {
        const err = await tenantNc.request(`flexplugin.${service}.processor.echo`, JSON.stringify({ protocol: 1, tenant: t, kind: "echo", options: {}, states: {}, inputs: [] }), { timeout: 1_000 }).then(() => undefined, (e: unknown) => e);
        expect(String((err as Error | undefined)?.message), `${t} → ${service}`).toMatch(/permission/iu);
      }
      expect(await permissionDenied(tenantNc, () => tenantNc.subscribe(`flexplugin.tp_${t}.>`)), t).toMatch(/subscri/i);
    }
  });

  it("one tenant's set is not upgraded on its own (the plugin is, every set together: tenancy-upgrade.int.test.ts): a coded error, and nothing changes", async () => {
    const pid = sup.status("tp_acme").instances[0]!.pid;
    const err = await sup.upgrade("tp_acme", { ...plugins.managed[0]!.spec, version: "2.0.0" }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(PluginUpgradeFailedError);
    expect((err as PluginUpgradeFailedError).code).toBe("FLEX_PLUGIN_UPGRADE_FAILED");
    expect((err as Error).message).toMatch(/one tenant's instance set/u);
    expect(sup.status("tp_acme")).toMatchObject({ state: "running", instances: [expect.objectContaining({ pid })] });
    expect(sup.spec("tp_acme").version).toBe("1.0.0");
  });
});

describe("tenancy: tenant instances, the rest", () => {
  it("an instance registering <name>_globex without the launch's nonce is never taken as ready", async () => {
    const dir = await bundle("tq", { fault: "wrong-nonce", startTimeoutMs: 1_500 });
    const plugins = await resolvePlugins([entry("tq", dir, ["globex"])], { baseDir: work, storeDir, trustedKeysDir: keysDir });
    const lines: string[] = [];
    const sup = await startPluginSupervisor({ nc: nats.nc, plugins: plugins.managed.flatMap((m) => supervisedSpecs(m)), natsUrl: nats.server.url, credentialsDir, log: (l) => void lines.push(l), graceMs: 500, leaseTtlMs: 3_000, crashLoop: { failures: 2, windowMs: 60_000 }, backoff: { initialMs: 100, maxMs: 100 } });
    closers.push(() => sup.stop());
    // It registers (its INFO answers under tq_globex) but with a nonce of its own.
    await until(async () => {
      try {
        const replies = await nats.nc.requestMany("$SRV.INFO.tq_globex", "", { strategy: "timer", maxWait: 300 });
        for await (const m of replies) if (m.json<{ name?: string }>().name === "tq_globex") return true;
      } catch {
        // not registered yet (no responders)
      }
      return false;
    }, 10_000, "the impostor's INFO");
    await until(() => sup.status("tq_globex").state === "failed", 20_000, "start timeouts into a crash loop");
    const st = sup.status("tq_globex");
    expect(st.starts).toBe(0);
    expect(st.instances.every((i) => !i.ready)).toBe(true);
    expect(lines.join("\n")).toMatch(/FLEX_PLUGIN_START_TIMEOUT|did not|start/iu);
  }, 60_000);

  it("flexcore.yaml: a tenancy: tenant plugin must name its tenants; tenants: is refused on a system plugin; filters must stay within its tenants", async () => {
    const tenantDir = await bundle("tr");
    const systemDir = await bundle("ts", { tenancy: "system" });
    await expect(resolvePlugins([entry("tr", tenantDir, undefined)], { baseDir: work, storeDir, trustedKeysDir: keysDir })).rejects.toThrow(/plugins\.tr\.tenants/u);
    await expect(resolvePlugins([entry("ts", systemDir, ["acme"])], { baseDir: work, storeDir, trustedKeysDir: keysDir })).rejects.toThrow(ConfigError);
    await expect(resolvePlugins([entry("tr", tenantDir, ["_system"])], { baseDir: work, storeDir, trustedKeysDir: keysDir })).rejects.toThrow(/tenants\[0\]/u);
    const owned = await resolvePlugins([{ ...entry("tr", tenantDir, undefined), tenant: "acme" }], { baseDir: work, storeDir, trustedKeysDir: keysDir });
    expect(owned.managed[0]!.tenants).toEqual(["acme"]);
    expect(supervisedSpecs(owned.managed[0]!).map((s) => [s.name, s.tenant, s.service])).toEqual([["tr", "acme", undefined]]);
    const { checkPluginProcessors } = await import("./host-config.js");
    const resolved = await resolvePlugins([entry("tr", tenantDir, ["acme"])], { baseDir: work, storeDir, trustedKeysDir: keysDir });
    const processors = parseConfig(`processors:\n  - name: p\n    kind: tr/echo\n    subjects: ["evt.*.orders.*"]\n`, pipelineSections({ threads: 1 })).processors;
    expect(() => checkPluginProcessors(processors, resolved)).toThrow(/processors\[0\]\.subjects\[0\]/u);
  }, 60_000);
});
