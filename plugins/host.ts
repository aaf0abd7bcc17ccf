/**
 * The plugin host of `flexcore up`: the configured plugins as the processor runtime's
 * remote kinds (`<plugin>/<kind>`) and the workflow runner's `plugin` steps, with each call's
 * figures for `/metrics`, call timeouts and successes reported to the supervisor (its hung
 * detection), tenant plugins confined to their tenant's data, and enable/disable.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { LatencyWindow, parseRemoteKind } from "../processors/index.js";
import type { RemoteBatch, RemoteBatchResult, RemoteKinds } from "../processors/index.js";
import { createPluginClient } from "./client.js";
import type { PluginClient } from "./client.js";
import { PluginBadReplyError, PluginRejectedError, PluginTimeoutError, PluginUnavailableError } from "./errors.js";
import type { ExternalPluginEntry, ResolvedManagedPlugin, ResolvedPlugins } from "./host-config.js";
import type { PluginManifest } from "./manifest.js";
import type { StepReply, StepRequest } from "./protocol.js";
import type { PluginStatus, PluginSupervisor } from "./supervisor.js";
import { parseServiceName, tenantServiceName } from "./tenancy.js";

/** One plugin's call figures since the host started (what `/metrics` shows). */
export interface PluginCallMetrics {
  readonly plugin: string;
  readonly managed: boolean;
  readonly enabled: boolean;
  /** Calls answered without error. */
  readonly calls: number;
  /** Calls that failed, by error code (`FLEX_PLUGIN_TIMEOUT`, `_REJECTED`, `_FAILED`, `_UNAVAILABLE`, `_BAD_REPLY`). */
  readonly errors: Readonly<Record<string, number>>;
  /** Call latency over the last 8192 calls, in ms. */
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  /** Process failures the supervisor saw (each followed by a restart unless in a crash loop); 0 for external plugins. */
  readonly restarts: number;
  /** The supervisor's state (`running`, `standby`, `failed`, ...), `external` for external plugins, `disabled`. */
  readonly state: string;
}

/** What the host knows of one configured plugin. */
export interface HostedPlugin {
  readonly name: string;
  readonly managed: boolean;
  /**
   * The NATS service called now (an upgrade switches a managed plugin between `<name>` and
   * `<name>--b`). For a `tenancy: tenant` plugin, the slot every tenant's set is under: a
   * tenant's calls go to `<service>_<tenant>`.
   */
  service: string;
  /** Owner tenant; undefined: a system plugin. */
  readonly tenant: string | undefined;
  /**
   * A `tenancy: tenant` plugin: the tenants it runs an instance set for; each tenant's calls
   * go to its own `<name>_<tenant>` service, never to the bare name. Undefined: system tenancy.
   */
  readonly tenants?: readonly string[] | undefined;
  manifest: PluginManifest | undefined;
  enabled: boolean;
}

/** Options of {@link createPluginHost}. */
export interface PluginHostOptions {
  readonly nc: NatsConnection;
  readonly plugins: ResolvedPlugins;
  /** The supervisor of the managed plugins (call timeouts and successes are reported to it). */
  readonly supervisor?: PluginSupervisor;
}

/** The plugins as the runtime's remote kinds and the workflows' steps. */
export interface PluginHost extends RemoteKinds {
  readonly plugins: ReadonlyMap<string, HostedPlugin>;
  /** Whether `tenant` may use `plugin`: a system plugin, one the tenant owns, or a `tenancy: tenant` plugin with an instance set for the tenant. */
  hasPlugin(plugin: string, tenant: string): boolean;
  /** Whether `plugin` serves step `step` (a managed plugin's manifest lists it; an external one is asked when called). */
  hasStep(plugin: string, step: string): boolean;
  /** Calls a step; the tenant is the caller's (the run's subject), never the input's. Throws the `FLEX_PLUGIN_*` call errors. */
  callStep(plugin: string, step: string, request: Omit<StepRequest, "protocol" | "step">, options?: { readonly timeoutMs?: number; readonly signal?: AbortSignal }): Promise<StepReply>;
  /**
   * Disabled plugins get no calls: they fail as unavailable (retried, never dropped).
   * `plugin` may name one tenant's instance set, `<name>_<tenant>`: only that tenant's calls wait.
   */
  setEnabled(plugin: string, enabled: boolean): void;
  /**
   * Calls `plugin` at `service` from now on (an upgrade's switch). A call already made keeps
   * its service, and the calls of one processor batch are chosen together, so no batch is
   * half on the old version and half on the new. `manifest`: the new version's, when known.
   */
  setService(plugin: string, service: string, manifest?: PluginManifest): void;
  /** Resolves once no call of this host to `plugin` at `service` (a tenant plugin's slot: any tenant's set under it) is in flight (or after `timeoutMs`). */
  idle(plugin: string, service: string, timeoutMs?: number): Promise<void>;
  metrics(): PluginCallMetrics[];
  /** A `tenancy: tenant` plugin's instance sets as the supervisor sees them (empty for others). */
  tenantInstances(plugin: string): PluginTenantInstance[];
}

/** One tenant's instance set of a `tenancy: tenant` plugin. */
export interface PluginTenantInstance {
  readonly plugin: string;
  readonly tenant: string;
  /** `<name>_<tenant>`. */
  readonly service: string;
  /** The supervisor's state of this set (`running`, `standby`, ...), `disabled`, or `stopped` when unknown here. */
  readonly state: string;
  /** Process failures of this set. */
  readonly restarts: number;
  /** Both the plugin's switch and this set's (`<name>_<tenant>`) are on. */
  readonly enabled: boolean;
}

/** Which state of a plugin's instance sets the plugin as a whole shows: the first present, in this order. */
const STATE_ORDER = ["failed", "restarting", "starting", "standby", "stopped", "running"];

interface Figures {
  calls: number;
  readonly errors: Record<string, number>;
  readonly latency: LatencyWindow;
}

class Host implements PluginHost {
  readonly plugins = new Map<string, HostedPlugin>();
  readonly #nc: NatsConnection;
  readonly #supervisor: PluginSupervisor | undefined;
  readonly #clients = new Map<string, PluginClient>();
  /** Clients of tenant instance sets, by service (`<name>_<tenant>`). */
  readonly #tenantClients = new Map<string, PluginClient>();
  /** Tenant instance sets switched off on their own (`<name>_<tenant>`). */
  readonly #disabledSets = new Set<string>();
  readonly #stepClients = new Map<number, Map<string, PluginClient>>();
  readonly #figures = new Map<string, Figures>();
  /** Calls in flight by `<plugin> <service>`. */
  readonly #inFlight = new Map<string, number>();
  readonly #idleWaiters = new Set<() => void>();
  readonly #callTimeouts = new Map<string, number | undefined>();

  constructor(options: PluginHostOptions) {
    this.#nc = options.nc;
    this.#supervisor = options.supervisor;
    const add = (p: HostedPlugin, callTimeoutMs: number | undefined): void => {
      this.plugins.set(p.name, p);
      this.#callTimeouts.set(p.name, callTimeoutMs);
      this.#clients.set(p.name, createPluginClient(options.nc, p.service, callTimeoutMs === undefined ? {} : { callTimeoutMs }));
      for (const t of p.tenants ?? []) {
        const service = tenantServiceName(p.service, t);
        this.#tenantClients.set(service, createPluginClient(options.nc, service, callTimeoutMs === undefined ? {} : { callTimeoutMs }));
      }
      this.#figures.set(p.name, { calls: 0, errors: {}, latency: new LatencyWindow() });
    };
    for (const m of options.plugins.managed) add(hosted(m), m.manifest.limits.callTimeoutMs);
    for (const x of options.plugins.external) add(external(x), undefined);
  }

  has(kind: string): boolean {
    const r = parseRemoteKind(kind);
    const p = r && this.plugins.get(r.plugin);
    if (!p) return false;
    return p.manifest ? p.manifest.capabilities.processors.some((c) => c.kind === r.kind) : true;
  }

  hasPlugin(plugin: string, tenant: string): boolean {
    const p = this.plugins.get(plugin);
    return p !== undefined && (p.tenant === undefined || p.tenant === tenant) && (p.tenants === undefined || p.tenants.includes(tenant));
  }

  /**
   * The service a call of `tenant` goes to: the tenant's instance set under the plugin's
   * current slot for a `tenancy: tenant` plugin (`<slot>_<tenant>`; undefined when it has
   * none), the plugin's service otherwise.
   */
  #serviceFor(p: HostedPlugin, tenant: string): string | undefined {
    if (p.tenants === undefined) return p.service;
    return p.tenants.includes(tenant) ? tenantServiceName(p.service, tenant) : undefined;
  }

  /** The client of a tenant's set at `service` (created on first use: an upgrade moves the sets to their other slot). */
  #tenantClient(p: HostedPlugin, service: string): PluginClient {
    let c = this.#tenantClients.get(service);
    if (!c) {
      const callTimeoutMs = this.#callTimeouts.get(p.name);
      c = createPluginClient(this.#nc, service, callTimeoutMs === undefined ? {} : { callTimeoutMs });
      this.#tenantClients.set(service, c);
    }
    return c;
  }

  /** The supervisor's key of the instance set a call went to. */
  #supervised(p: HostedPlugin, tenant: string): string {
    return p.tenants === undefined ? p.name : tenantServiceName(p.name, tenant);
  }

  hasStep(plugin: string, step: string): boolean {
    const p = this.plugins.get(plugin);
    if (!p) return false;
    return p.manifest ? p.manifest.capabilities.steps.some((s) => s.name === step) : true;
  }

  isPermanent(err: unknown): boolean {
    return err instanceof PluginRejectedError || err instanceof PluginBadReplyError;
  }

  setEnabled(plugin: string, enabled: boolean): void {
    const p = this.plugins.get(plugin);
    if (p) {
      p.enabled = enabled;
      return;
    }
    const set = parseServiceName(plugin);
    if (set.tenant === undefined || !this.plugins.get(set.plugin)?.tenants?.includes(set.tenant)) return;
    if (enabled) this.#disabledSets.delete(plugin);
    else this.#disabledSets.add(plugin);
  }

  setService(plugin: string, service: string, manifest?: PluginManifest): void {
    const p = this.plugins.get(plugin);
    if (!p || !p.managed) return;
    if (manifest) p.manifest = manifest;
    if (p.service === service) return;
    const callTimeoutMs = manifest?.limits.callTimeoutMs ?? this.#callTimeouts.get(plugin);
    this.#callTimeouts.set(plugin, callTimeoutMs);
    if (p.tenants !== undefined) {
      // Every tenant's calls move to its set under the new slot at once; the old slot's clients go.
      for (const t of p.tenants) {
        const old = tenantServiceName(p.service, t);
        this.#tenantClients.delete(old);
        for (const byTimeout of this.#stepClients.values()) byTimeout.delete(old);
      }
      p.service = service;
      return;
    }
    this.#clients.set(plugin, createPluginClient(this.#nc, service, callTimeoutMs === undefined ? {} : { callTimeoutMs }));
    for (const byTimeout of this.#stepClients.values()) byTimeout.delete(plugin);
    p.service = service;
  }

  idle(plugin: string, service: string, timeoutMs = 30_000): Promise<void> {
    const key = `${plugin} ${service}`;
    if ((this.#inFlight.get(key) ?? 0) === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        if ((this.#inFlight.get(key) ?? 0) > 0) return;
        clearTimeout(timer);
        this.#idleWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#idleWaiters.delete(done);
        resolve();
      }, timeoutMs);
      this.#idleWaiters.add(done);
    });
  }

  /** Counts the call in flight at the service (for a tenant plugin, the slot) chosen now, until it settles. */
  async #tracked<T>(p: HostedPlugin, service: string, call: () => Promise<T>): Promise<T> {
    const key = `${p.name} ${service}`;
    this.#inFlight.set(key, (this.#inFlight.get(key) ?? 0) + 1);
    try {
      return await call();
    } finally {
      this.#inFlight.set(key, this.#inFlight.get(key)! - 1);
      for (const w of [...this.#idleWaiters]) w();
    }
  }

  /** Throws when the call may not be made (counted in the figures like a failed call); undefined otherwise. */
  #gate(p: HostedPlugin, tenant: string, service: string | undefined, subject: string): undefined {
    if (!p.enabled) throw new PluginUnavailableError({ service: service ?? p.service, subject }, { cause: new Error(`plugin ${p.name} is disabled`) });
    // A tenant's plugin sees only its tenant's data: anything else is refused for good.
    if (p.tenant !== undefined && p.tenant !== tenant) throw new PluginRejectedError({ service: p.service, subject }, 403, `plugin ${p.name} belongs to tenant ${p.tenant}, not ${tenant}`);
    // A tenancy: tenant plugin runs no instance for a tenant it was not configured for: nowhere to send its data.
    if (service === undefined) throw new PluginRejectedError({ service: p.name, subject }, 403, `plugin ${p.name} runs no instance for tenant ${tenant} (its tenants: ${p.tenants?.join(", ")})`);
    if (p.tenants !== undefined && this.#disabledSets.has(tenantServiceName(p.name, tenant))) throw new PluginUnavailableError({ service, subject }, { cause: new Error(`plugin ${p.name}'s instance set for tenant ${tenant} is disabled`) });
    return undefined;
  }

  async #timed<T>(p: HostedPlugin, supervised: string, call: () => Promise<T>): Promise<T> {
    const f = this.#figures.get(p.name)!;
    const start = performance.now();
    try {
      const v = await call();
      f.calls += 1;
      f.latency.add(performance.now() - start);
      if (p.managed) reportTo(this.#supervisor, (s) => s.reportCallOk(supervised));
      return v;
    } catch (err) {
      const code = typeof (err as { code?: unknown }).code === "string" ? (err as { code: string }).code : "error";
      f.errors[code] = (f.errors[code] ?? 0) + 1;
      if (p.managed && err instanceof PluginTimeoutError) reportTo(this.#supervisor, (s) => s.reportCallTimeout(supervised));
      throw err;
    }
  }

  async process(batch: RemoteBatch, signal?: AbortSignal): Promise<RemoteBatchResult> {
    const r = parseRemoteKind(batch.kind);
    const p = r && this.plugins.get(r.plugin);
    if (!r || !p) throw new PluginUnavailableError({ service: r?.plugin ?? batch.kind, subject: batch.kind });
    // Client and service are read before the first await: the runtime starts a batch's
    // calls (one per tenant) in one go, so they all go to the same version.
    const slot = p.service;
    const service = this.#serviceFor(p, batch.tenant);
    const client = p.tenants === undefined ? this.#clients.get(p.name)! : service === undefined ? undefined : this.#tenantClient(p, service);
    const subject = `flexplugin.${service ?? p.name}.processor.${r.kind}`;
    return this.#tracked(p, slot, () => this.#timed(p, this.#supervised(p, batch.tenant), () => this.#gate(p, batch.tenant, service, subject) ?? client!.callProcessor(r.kind, { tenant: batch.tenant, options: batch.options, states: batch.states, inputs: batch.inputs }, signal)));
  }

  async callStep(plugin: string, step: string, request: Omit<StepRequest, "protocol" | "step">, options: { readonly timeoutMs?: number; readonly signal?: AbortSignal } = {}): Promise<StepReply> {
    const p = this.plugins.get(plugin);
    if (!p) throw new PluginUnavailableError({ service: plugin, subject: `flexplugin.${plugin}.step.${step}` });
    const slot = p.service;
    const service = this.#serviceFor(p, request.tenant);
    let client = p.tenants === undefined ? this.#clients.get(plugin) : service === undefined ? undefined : this.#tenantClient(p, service);
    if (options.timeoutMs !== undefined && service !== undefined) {
      let byTimeout = this.#stepClients.get(options.timeoutMs);
      if (!byTimeout) this.#stepClients.set(options.timeoutMs, (byTimeout = new Map()));
      // Keyed by plugin for a system-tenancy plugin (setService clears it), by service for a tenant's set.
      const key = p.tenants === undefined ? plugin : service;
      client = byTimeout.get(key) ?? createPluginClient(this.#nc, service, { callTimeoutMs: options.timeoutMs });
      byTimeout.set(key, client);
    }
    const subject = `flexplugin.${service ?? p.name}.step.${step}`;
    return this.#tracked(p, slot, () => this.#timed(p, this.#supervised(p, request.tenant), () => this.#gate(p, request.tenant, service, subject) ?? client!.callStep(step, { tenant: request.tenant, input: request.input, run: request.run }, options.signal)));
  }

  /** A tenant plugin's sets as one: failures summed, the first state of {@link STATE_ORDER} any set is in. */
  #combined(p: HostedPlugin): Pick<PluginStatus, "state" | "failures"> | undefined {
    const sets = (p.tenants ?? []).map((t) => safeStatus(this.#supervisor!, tenantServiceName(p.name, t))).filter((x): x is PluginStatus => x !== undefined);
    if (sets.length === 0) return undefined;
    const state = STATE_ORDER.find((st) => sets.some((x) => x.state === st)) ?? sets[0]!.state;
    return { state: state as PluginStatus["state"], failures: sets.reduce((n, x) => n + x.failures, 0) };
  }

  tenantInstances(plugin: string): PluginTenantInstance[] {
    const p = this.plugins.get(plugin);
    if (!p?.tenants) return [];
    return p.tenants.map((tenant) => {
      const service = tenantServiceName(p.name, tenant);
      const st = this.#supervisor ? safeStatus(this.#supervisor, service) : undefined;
      const enabled = p.enabled && !this.#disabledSets.has(service);
      return { plugin: p.name, tenant, service, state: !enabled ? "disabled" : (st?.state ?? "stopped"), restarts: st?.failures ?? 0, enabled };
    });
  }

  metrics(): PluginCallMetrics[] {
    return [...this.plugins.values()].map((p) => {
      const f = this.#figures.get(p.name)!;
      const status = p.managed && this.#supervisor ? (p.tenants === undefined ? safeStatus(this.#supervisor, p.name) : this.#combined(p)) : undefined;
      return {
        plugin: p.name,
        managed: p.managed,
        enabled: p.enabled,
        calls: f.calls,
        errors: { ...f.errors },
        ...f.latency.percentiles(),
        restarts: status?.failures ?? 0,
        state: !p.enabled ? "disabled" : p.managed ? (status?.state ?? "stopped") : "external",
      };
    });
  }
}

function reportTo(s: PluginSupervisor | undefined, report: (s: PluginSupervisor) => void): void {
  if (!s) return;
  try {
    report(s);
  } catch {
    // not supervised here
  }
}

function safeStatus(s: PluginSupervisor, name: string): PluginStatus | undefined {
  try {
    return s.status(name);
  } catch {
    return undefined;
  }
}

function hosted(m: ResolvedManagedPlugin): HostedPlugin {
  return { name: m.entry.name, managed: true, service: m.spec.service ?? m.manifest.name, tenant: m.entry.tenant, tenants: m.tenants, manifest: m.manifest, enabled: m.entry.enabled };
}

function external(x: ExternalPluginEntry): HostedPlugin {
  return { name: x.name, managed: false, service: x.service, tenant: x.tenant, manifest: undefined, enabled: x.enabled };
}

/** The plugin host over the resolved plugins of `flexcore.yaml`. */
export function createPluginHost(options: PluginHostOptions): PluginHost {
  return new Host(options);
}
