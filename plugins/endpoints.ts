/**
 * `sinks:` and `sources:` of flexcore.yaml: each entry runs a plugin's sink or source for one
 * tenant through the drivers (sink-driver.ts, source-driver.ts). Sinks share a durable
 * consumer across instances (one batch in flight keeps the order); a source polls on the one
 * instance holding its lease `source.<tenant>.<name>` in `flex_leases`, so two instances never
 * race on its cursor.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { ConfigError, Lease, parseRemoteKind } from "../processors/index.js";
import type { ConfigIssue, SectionValidator } from "../processors/index.js";
import { BUCKETS, checkSubjectFilter, compileSchema, durationMs, durationSchema, issue, openTtlKv, pathAt } from "../streams/index.js";
import type { JsonSchema } from "../streams/index.js";
import { createPluginClient } from "./client.js";
import type { PluginClient } from "./client.js";
import type { ResolvedPlugins } from "./host-config.js";
import { compileEmbeddedSchema } from "./manifest.js";
import { createSinkDriver, DEFAULT_SINK_BATCH } from "./sink-driver.js";
import type { SinkDriver, SinkDriverMetrics } from "./sink-driver.js";
import { createSourceDriver, DEFAULT_SOURCE_INTERVAL_MS, DEFAULT_SOURCE_MAX } from "./source-driver.js";
import type { SourceDriver, SourceDriverMetrics } from "./source-driver.js";
import { tenantServiceName } from "./tenancy.js";

/** One entry of `sinks:`. */
export interface SinkEntry {
  /** A subject token: the durable consumer `flex-sink-<tenant>-<name>` and the dead letters' source `sink-<name>`. */
  readonly name: string;
  /** `<plugin>/<sink>`. */
  readonly kind: string;
  readonly tenant: string;
  readonly stream: "events" | "derived";
  /** Filters within the tenant (`evt.<tenant>.…` / `drv.<tenant>.…`). */
  readonly subjects: readonly string[];
  readonly options: Readonly<Record<string, unknown>>;
  readonly batchSize: number;
}

/** One entry of `sources:`. */
export interface SourceEntry {
  readonly name: string;
  /** `<plugin>/<source>`. */
  readonly kind: string;
  readonly tenant: string;
  /** The records become `evt.<tenant>.<category>.<key>`. */
  readonly category: string;
  readonly options: Readonly<Record<string, unknown>>;
  readonly max: number;
  readonly intervalMs: number;
}

const TOKEN = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$";
const KIND: JsonSchema = { type: "string", pattern: "^[a-z][a-z0-9-]{1,39}/[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", expected: "<plugin>/<name>: a plugin of plugins: and one of its sinks or sources" };

export const SINK_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  required: ["name", "kind", "tenant", "subjects"],
  properties: {
    name: { type: "string", pattern: TOKEN, expected: "a name of letters, digits, - and _" },
    kind: KIND,
    tenant: { type: "string", pattern: TOKEN, expected: "the tenant whose events the sink delivers" },
    stream: { enum: ["events", "derived"], default: "events", expected: '"events" or "derived"' },
    subjects: { type: "array", minItems: 1, items: { type: "string", minLength: 1 }, expected: "subject filters within the tenant" },
    options: { type: "object", default: {} },
    batch_size: { type: "integer", minimum: 1, maximum: 1_000, default: DEFAULT_SINK_BATCH },
  },
};

export const SOURCE_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  required: ["name", "kind", "tenant", "category"],
  properties: {
    name: { type: "string", pattern: TOKEN, expected: "a name of letters, digits, - and _" },
    kind: KIND,
    tenant: { type: "string", pattern: TOKEN, expected: "the tenant the records are appended for" },
    category: { type: "string", pattern: TOKEN, expected: "the category of the appended events (a subject token)" },
    options: { type: "object", default: {} },
    max: { type: "integer", minimum: 1, maximum: 10_000, default: DEFAULT_SOURCE_MAX },
    interval: durationSchema(100, DEFAULT_SOURCE_INTERVAL_MS),
  },
};

interface RawSink {
  name: string;
  kind: string;
  tenant: string;
  stream: "events" | "derived";
  subjects: string[];
  options: Record<string, unknown>;
  batch_size: number;
}
interface RawSource {
  name: string;
  kind: string;
  tenant: string;
  category: string;
  options: Record<string, unknown>;
  max: number;
  interval: number | string;
}

const sinkValidator = compileSchema<RawSink[]>({ type: "array", items: SINK_SCHEMA, default: [] });
const sourceValidator = compileSchema<RawSource[]>({ type: "array", items: SOURCE_SCHEMA, default: [] });

function unique(list: ReadonlyArray<{ name: string; tenant: string }>, path: string, issues: ConfigIssue[]): void {
  const seen = new Map<string, number>();
  list.forEach((e, i) => {
    const k = `${e.tenant}/${e.name}`;
    if (seen.has(k)) issues.push({ path: `${path}[${i}].name`, message: `duplicate name ${JSON.stringify(e.name)} for tenant ${e.tenant} (also ${path}[${seen.get(k)}])` });
    seen.set(k, i);
  });
}

/** The validator of `sinks:`. */
export function sinksSection(): SectionValidator<readonly SinkEntry[]> {
  return (raw, path) => {
    const checked = sinkValidator.check(raw ?? [], path);
    const issues = [...checked.issues];
    const list = checked.value ?? [];
    list.forEach((s, i) => {
      const prefix = s.stream === "derived" ? "drv" : "evt";
      s.subjects.forEach((f, j) => {
        const at = pathAt(pathAt(pathAt(path, i), "subjects"), j);
        try {
          checkSubjectFilter(f);
        } catch (err) {
          issues.push(issue(at, `a valid subject filter (${(err as Error).message})`, f));
          return;
        }
        const t = f.split(".");
        if (t[0] !== prefix || t[1] !== s.tenant || t.length < 3) issues.push(issue(at, `a filter within the tenant: ${prefix}.${s.tenant}.<…>`, f));
      });
    });
    unique(list, path, issues);
    if (issues.length > 0) throw new ConfigError(issues);
    return list.map((s) => ({ name: s.name, kind: s.kind, tenant: s.tenant, stream: s.stream, subjects: s.subjects, options: s.options, batchSize: s.batch_size }));
  };
}

/** The validator of `sources:`. */
export function sourcesSection(): SectionValidator<readonly SourceEntry[]> {
  return (raw, path) => {
    const checked = sourceValidator.check(raw ?? [], path);
    const issues = [...checked.issues];
    const list = checked.value ?? [];
    const out = list.map((s, i) => ({ name: s.name, kind: s.kind, tenant: s.tenant, category: s.category, options: s.options, max: s.max, intervalMs: durationMs(s.interval, pathAt(pathAt(path, i), "interval"), 100, issues) }));
    unique(list, path, issues);
    if (issues.length > 0) throw new ConfigError(issues);
    return out;
  };
}

/**
 * Checks sinks and sources against the plugins: the plugin is configured, the tenant may use
 * it (a system plugin, or the tenant's own), a managed plugin's manifest lists the sink or
 * source, and the options pass its schema.
 * @throws ConfigError naming `sinks[i].kind`, `sources[i].options.<field>`, ...
 */
export function checkPluginEndpoints(sinks: readonly SinkEntry[], sources: readonly SourceEntry[], plugins: ResolvedPlugins, file?: string): void {
  const issues: ConfigIssue[] = [];
  const check = (e: SinkEntry | SourceEntry, at: string, what: "sinks" | "sources"): void => {
    const r = parseRemoteKind(e.kind)!;
    const m = plugins.managed.find((x) => x.entry.name === r.plugin);
    const x = plugins.external.find((y) => y.name === r.plugin);
    const owner = m ? m.entry.tenant : x?.tenant;
    // A tenancy: tenant plugin serves only the tenants it runs instances for.
    if ((!m && !x) || (owner !== undefined && owner !== e.tenant) || (m?.tenants !== undefined && !m.tenants.includes(e.tenant))) {
      issues.push(issue(pathAt(at, "kind"), `a plugin of plugins: that tenant ${e.tenant} may use`, e.kind));
      return;
    }
    if (!m) return;
    const cap = m.manifest.capabilities[what].find((c) => c.name === r.kind);
    if (!cap) {
      issues.push(issue(pathAt(at, "kind"), `one of plugin ${r.plugin}'s ${what} (${m.manifest.capabilities[what].map((c) => `${r.plugin}/${c.name}`).join(", ") || "it has none"})`, e.kind));
      return;
    }
    if (cap.options) {
      const validate = compileEmbeddedSchema(cap.options);
      if (!validate(structuredClone(e.options))) {
        for (const err of validate.errors ?? []) issues.push({ path: [pathAt(at, "options"), ...err.instancePath.split("/").slice(1)].join("."), message: `${err.message ?? "invalid"} (the options schema of ${e.kind})` });
      }
    }
  };
  sinks.forEach((s, i) => check(s, `sinks[${i}]`, "sinks"));
  sources.forEach((s, i) => check(s, `sources[${i}]`, "sources"));
  if (issues.length > 0) throw new ConfigError(issues, file);
}

/** Figures of the running sinks and sources (for `/metrics` and `flexcore plugins list`). */
export interface EndpointMetrics {
  readonly sinks: ReadonlyArray<{ readonly name: string; readonly tenant: string; readonly kind: string } & SinkDriverMetrics>;
  readonly sources: ReadonlyArray<{ readonly name: string; readonly tenant: string; readonly kind: string; readonly leaseHeld: boolean } & SourceDriverMetrics>;
}

/** The running sinks and sources of `flexcore up`. */
export interface PluginEndpoints {
  metrics(): EndpointMetrics;
  /** Calls managed plugin `plugin` at `service` from the next call on (an upgrade's switch); cursors and ids keep the plugin's name. */
  setService(plugin: string, service: string): void;
  close(): Promise<void>;
}

/** Options of {@link startPluginEndpoints}. */
export interface PluginEndpointsOptions {
  readonly sinks: readonly SinkEntry[];
  readonly sources: readonly SourceEntry[];
  readonly plugins: ResolvedPlugins;
  /** This instance's name in `flex_leases`. */
  readonly instanceId: string;
  /** @default 30000 */
  readonly leaseTtlMs?: number;
  readonly log?: (line: string, level?: "warn" | "error") => void;
}

function serviceOf(plugins: ResolvedPlugins, kind: string, tenant: string): { plugin: string; name: string; service: string; callTimeoutMs: number | undefined; tenant: string | undefined } {
  const r = parseRemoteKind(kind)!;
  const m = plugins.managed.find((x) => x.entry.name === r.plugin);
  // A tenancy: tenant plugin is called at its tenant's instance, `<name>_<tenant>`, never at the bare name.
  // Under the plugin's current slot (`<name>` or, after an upgrade, `<name>--b`).
  if (m?.tenants) return { plugin: r.plugin, name: m.manifest.name, service: tenantServiceName(m.spec.service ?? m.manifest.name, tenant), callTimeoutMs: m.manifest.limits.callTimeoutMs, tenant };
  if (m) return { plugin: r.plugin, name: m.manifest.name, service: m.spec.service ?? m.manifest.name, callTimeoutMs: m.manifest.limits.callTimeoutMs, tenant: undefined };
  const service = plugins.external.find((x) => x.name === r.plugin)!.service;
  return { plugin: r.plugin, name: service, service, callTimeoutMs: undefined, tenant: undefined };
}

/**
 * A client whose calls go to the service chosen now (an upgrade moves a managed plugin
 * between `<name>` and `<name>--b`), while `service`, which names the source cursors and
 * dead letters, stays the plugin's name.
 */
class SwitchableClient implements PluginClient {
  readonly service: string;
  #client: PluginClient;
  readonly #make: (service: string) => PluginClient;

  constructor(name: string, service: string, make: (service: string) => PluginClient) {
    this.service = name;
    this.#make = make;
    this.#client = make(service);
  }

  switchTo(service: string): void {
    if (this.#client.service !== service) this.#client = this.#make(service);
  }

  callProcessor(...a: Parameters<PluginClient["callProcessor"]>): ReturnType<PluginClient["callProcessor"]> {
    return this.#client.callProcessor(...a);
  }

  callStep(...a: Parameters<PluginClient["callStep"]>): ReturnType<PluginClient["callStep"]> {
    return this.#client.callStep(...a);
  }

  callSink(...a: Parameters<PluginClient["callSink"]>): ReturnType<PluginClient["callSink"]> {
    return this.#client.callSink(...a);
  }

  callSource(...a: Parameters<PluginClient["callSource"]>): ReturnType<PluginClient["callSource"]> {
    return this.#client.callSource(...a);
  }
}

/** One configured source on this instance: its lease, and the driver that polls while the lease is held. */
interface SourceItem {
  readonly entry: SourceEntry;
  lease: Lease;
  driver: SourceDriver;
  started: boolean;
  /** The closing of the driver of a lost lease; the lease is not taken again before it ends. */
  stopping: Promise<void> | undefined;
  /** Counters of the drivers of earlier leases. */
  past: SourceDriverMetrics;
}

const NO_SOURCE_METRICS: SourceDriverMetrics = { polls: 0, records: 0, appended: 0, duplicates: 0, failed: 0 };

function addSourceMetrics(a: SourceDriverMetrics, b: SourceDriverMetrics): SourceDriverMetrics {
  return { polls: a.polls + b.polls, records: a.records + b.records, appended: a.appended + b.appended, duplicates: a.duplicates + b.duplicates, failed: a.failed + b.failed };
}

/** Starts every sink (a shared durable consumer each) and every source (on the instance holding its lease, which takes it again after losing it once it is free). */
export async function startPluginEndpoints(nc: NatsConnection, options: PluginEndpointsOptions): Promise<PluginEndpoints> {
  const log = options.log ?? (() => undefined);
  const ttl = options.leaseTtlMs ?? 30_000;
  const sinks: Array<{ entry: SinkEntry; driver: SinkDriver }> = [];
  const sources: SourceItem[] = [];
  let closed = false;
  const timers: NodeJS.Timeout[] = [];
  const clients: Array<{ plugin: string; client: SwitchableClient; tenant: string | undefined }> = [];
  const clientFor = (kind: string, forTenant: string): SwitchableClient => {
    const { plugin, name, service, callTimeoutMs, tenant } = serviceOf(options.plugins, kind, forTenant);
    const client = new SwitchableClient(name, service, (s) => createPluginClient(nc, s, callTimeoutMs === undefined ? {} : { callTimeoutMs }));
    // Upgrades switch managed plugins; a tenant plugin's client moves to its tenant's set under the new slot.
    if (options.plugins.managed.some((m) => m.entry.name === plugin)) clients.push({ plugin, client, tenant });
    return client;
  };
  const close = async (): Promise<void> => {
    closed = true;
    for (const t of timers) clearInterval(t);
    await Promise.all(sinks.map((s) => s.driver.close()));
    await Promise.all(sources.map(async (s) => {
      await s.stopping;
      await s.driver.close();
      await s.lease.release();
    }));
  };
  try {
    for (const entry of options.sinks) {
      const client = clientFor(entry.kind, entry.tenant);
      const driver = createSinkDriver(nc, { client, sink: parseRemoteKind(entry.kind)!.kind, name: entry.name, tenant: entry.tenant, stream: entry.stream, subjects: entry.subjects, options: entry.options, batchSize: entry.batchSize, onError: (err) => log(`flexcore: sink ${entry.tenant}/${entry.name}: ${(err as Error).message}`, "warn") });
      await driver.start();
      sinks.push({ entry, driver });
      log(`flexcore: sink ${entry.tenant}/${entry.name} (${entry.kind}) on ${entry.subjects.join(", ")}`);
    }
    const leases = options.sources.length > 0 ? await openTtlKv(nc, BUCKETS.leases) : undefined;
    for (const entry of options.sources) {
      const client = clientFor(entry.kind, entry.tenant);
      const newDriver = (): SourceDriver => createSourceDriver(nc, { client, source: parseRemoteKind(entry.kind)!.kind, name: entry.name, tenant: entry.tenant, category: entry.category, options: entry.options, max: entry.max, intervalMs: entry.intervalMs, onError: (err) => log(`flexcore: source ${entry.tenant}/${entry.name}: ${(err as Error).message}`, "warn") });
      const item: SourceItem = { entry, driver: newDriver(), started: false, stopping: undefined, past: { ...NO_SOURCE_METRICS }, lease: undefined as unknown as Lease };
      item.lease = new Lease(leases!, `source.${entry.tenant}.${entry.name}`, options.instanceId, ttl, () => {
        // Lost: another instance polls now. This one closes its loop (the cursor is in
        // flex_state), goes back to standby and takes the lease again when it is free, as
        // processors do. A driver cannot start again once closed, so the next start gets a new one.
        log(`flexcore: source ${entry.tenant}/${entry.name}: lease lost; standing by`, "warn");
        const old = item.driver;
        item.started = false;
        item.stopping = old.close().then(() => {
          item.past = addSourceMetrics(item.past, old.metrics());
          item.driver = newDriver();
          item.stopping = undefined;
        });
      });
      sources.push(item);
      const attempt = async (): Promise<void> => {
        if (closed || item.started || item.stopping) return;
        if (await item.lease.tryAcquire().catch(() => false)) {
          if (closed) return;
          item.started = true;
          item.driver.start();
          log(`flexcore: source ${entry.tenant}/${entry.name} (${entry.kind}) into evt.${entry.tenant}.${entry.category}.*`);
        }
      };
      await attempt();
      // Kept for the whole run: a source whose lease is lost later waits here for it again.
      const t = setInterval(() => void attempt(), Math.max(100, Math.floor(ttl / 3)));
      t.unref();
      timers.push(t);
    }
  } catch (err) {
    await close();
    throw err;
  }
  return {
    metrics: () => ({
      sinks: sinks.map((s) => ({ name: s.entry.name, tenant: s.entry.tenant, kind: s.entry.kind, ...s.driver.metrics() })),
      sources: sources.map((s) => ({ name: s.entry.name, tenant: s.entry.tenant, kind: s.entry.kind, leaseHeld: s.lease.held, ...addSourceMetrics(s.past, s.driver.metrics()) })),
    }),
    setService: (plugin, service) => {
      for (const c of clients) if (c.plugin === plugin) c.client.switchTo(c.tenant === undefined ? service : tenantServiceName(service, c.tenant));
    },
    close,
  };
}
