/**
 * Publishes a managed plugin's lifecycle on `evt._system.plugin.<name>` (`PluginLoaded`,
 * `PluginStarted`, `PluginHealth`, `PluginFailed`, `PluginStopped`, see
 * streams/system-events.ts), each checked against its schema first, so the `plugin_status`
 * read model folds only well-formed, real transitions. `PluginHealth` is published when
 * health changes, at most once per `healthIntervalMs`: a change inside the interval is
 * published when it ends, if it still holds.
 */
import { checkTenantName, InvalidEventError, PLUGIN_CATEGORY, PLUGIN_EVENT_TYPES, SYSTEM_TENANT } from "../streams/index.js";
import type { ErrorInfo, EventStore, PluginFailed, PluginHealth, PluginLoaded, PluginStarted, PluginStopped } from "../streams/index.js";
import { checkPluginName } from "./nats-users.js";

/** Least time between two `PluginHealth` events of one plugin, in ms. */
export const DEFAULT_HEALTH_INTERVAL_MS = 60_000;

/** `PluginStarted` as the supervisor writes it. */
export interface PluginStartedEvent extends PluginStarted {
  /** Services-protocol instance id of the process that became ready. */
  readonly instance?: string;
  /** Launch attempt of this slot since the last success (1 = first launch). */
  readonly attempt?: number;
}

/** `PluginFailed` as the supervisor writes it. */
export interface PluginFailedEvent extends PluginFailed {
  readonly exitCode?: number | null;
  readonly signal?: string | null;
  /** Failures within the crash-loop window, this one included. */
  readonly attempt?: number;
  /** When the next launch is due (RFC 3339), when `willRestart`. */
  readonly nextRestartAt?: string;
  readonly nextRestartInMs?: number;
}

/** Options of {@link createPluginLifecycle}. */
export interface PluginLifecycleOptions {
  /** Where the events are appended. */
  readonly store: Pick<EventStore, "append">;
  /** Tenant token of the subject. @default `_system` */
  readonly tenant?: string;
  /** @default {@link DEFAULT_HEALTH_INTERVAL_MS} */
  readonly healthIntervalMs?: number;
  /** Where a failed append is reported (lifecycle events never throw into the supervisor). */
  readonly log?: (line: string, level?: "warn" | "error") => void;
}

/** The lifecycle publisher; every method resolves once the event is stored (or its failure logged). */
export interface PluginLifecycle {
  loaded(e: PluginLoaded): Promise<void>;
  started(e: PluginStartedEvent): Promise<void>;
  failed(e: PluginFailedEvent): Promise<void>;
  stopped(e: PluginStopped): Promise<void>;
  /** Resolves true when published now; a change inside the interval is published later. */
  health(e: PluginHealth): Promise<boolean>;
  /** Cancels held health events. */
  close(): void;
  /**
   * The publisher of a `tenancy: tenant` plugin's instance for `tenant`: the same events on
   * `evt.<tenant>.plugin.<name>`, so `plugin_status` shows each tenant its own instance. Closed with this one.
   */
  forTenant(tenant: string): PluginLifecycle;
}

/** A field check: `[field, expected]` when the field is wrong. */
type Check = (d: Record<string, unknown>) => readonly [string, string] | undefined;
const str = (k: string, optional = false): Check => (d) =>
  (optional && (d[k] === undefined || d[k] === null)) || (typeof d[k] === "string" && (optional || (d[k] as string).length > 0)) ? undefined : [k, optional ? "absent or a string" : "a non-empty string"];
const num = (k: string): Check => (d) => (d[k] === undefined || d[k] === null || (typeof d[k] === "number" && Number.isFinite(d[k])) ? undefined : [k, "absent or a finite number"]);
const bool = (k: string, optional = false): Check => (d) => ((optional && d[k] === undefined) || typeof d[k] === "boolean" ? undefined : [k, optional ? "absent or a boolean" : "a boolean"]);
const error: Check = (d) => {
  const e = d.error as ErrorInfo | undefined;
  return e && typeof e === "object" && typeof e.message === "string" && (e.code === undefined || typeof e.code === "string") ? undefined : ["error", "{ message: string, code?: string }"];
};

/** Schemas of streams/system-events.ts's plugin events, as checks of their fields. */
const SCHEMAS: Record<string, readonly Check[]> = {
  [PLUGIN_EVENT_TYPES.loaded]: [str("plugin"), str("version")],
  [PLUGIN_EVENT_TYPES.started]: [str("plugin"), str("version", true), str("instance", true), num("attempt")],
  [PLUGIN_EVENT_TYPES.failed]: [str("plugin"), error, bool("willRestart", true), num("exitCode"), str("signal", true), num("attempt"), str("nextRestartAt", true), num("nextRestartInMs")],
  [PLUGIN_EVENT_TYPES.stopped]: [str("plugin"), str("reason", true), str("version", true)],
  [PLUGIN_EVENT_TYPES.health]: [str("plugin"), bool("ok"), str("detail", true), num("latencyMs")],
};

/**
 * Checks a plugin lifecycle event's data against its schema.
 * @throws InvalidEventError naming the type and the field
 */
export function validatePluginEvent(type: string, data: unknown): void {
  const checks = SCHEMAS[type];
  if (!checks) throw new InvalidEventError("type", type, `one of ${Object.keys(SCHEMAS).join(", ")}`);
  if (!data || typeof data !== "object" || Array.isArray(data)) throw new InvalidEventError(`${type}.data`, data, "an object");
  const d = data as Record<string, unknown>;
  for (const check of checks) {
    const problem = check(d);
    if (problem) throw new InvalidEventError(`${type}.${problem[0]}`, d[problem[0]], problem[1]);
  }
  checkPluginName(d.plugin, `${type}.plugin`);
}

/** Creates the lifecycle publisher of managed plugins. */
export function createPluginLifecycle(options: PluginLifecycleOptions): PluginLifecycle {
  const tenant = options.tenant ?? SYSTEM_TENANT;
  const perTenant = new Map<string, PluginLifecycle>();
  const interval = options.healthIntervalMs ?? DEFAULT_HEALTH_INTERVAL_MS;
  const health = new Map<string, { ok: boolean | undefined; at: number; timer: NodeJS.Timeout | undefined; latest: PluginHealth | undefined }>();
  const publish = async (type: string, data: { readonly plugin: string }): Promise<void> => {
    const copy = { ...data } as Record<string, unknown>;
    validatePluginEvent(type, copy);
    try {
      await options.store.append({ tenant, category: PLUGIN_CATEGORY, id: data.plugin }, [{ type, data: copy }]);
    } catch (err) {
      options.log?.(`plugin ${data.plugin}: could not publish ${type}: ${(err as Error).message}`, "warn");
    }
  };
  const publishHealth = async (e: PluginHealth): Promise<void> => {
    const h = health.get(e.plugin)!;
    h.ok = e.ok;
    h.at = Date.now();
    h.latest = undefined;
    await publish(PLUGIN_EVENT_TYPES.health, e);
  };
  return {
    loaded: (e) => publish(PLUGIN_EVENT_TYPES.loaded, e),
    started: (e) => publish(PLUGIN_EVENT_TYPES.started, e),
    failed: (e) => publish(PLUGIN_EVENT_TYPES.failed, e),
    stopped: (e) => publish(PLUGIN_EVENT_TYPES.stopped, e),
    async health(e) {
      validatePluginEvent(PLUGIN_EVENT_TYPES.health, { ...e });
      let h = health.get(e.plugin);
      if (!h) health.set(e.plugin, (h = { ok: undefined, at: 0, timer: undefined, latest: undefined }));
      if (h.ok === e.ok) {
        h.latest = undefined;
        return false;
      }
      const wait = h.at + interval - Date.now();
      if (wait <= 0) {
        await publishHealth(e);
        return true;
      }
      h.latest = e;
      h.timer ??= setTimeout(() => {
        h.timer = undefined;
        if (h.latest && h.latest.ok !== h.ok) void publishHealth(h.latest);
      }, wait);
      h.timer.unref();
      return false;
    },
    close() {
      for (const h of health.values()) if (h.timer) clearTimeout(h.timer);
      health.clear();
      for (const l of perTenant.values()) l.close();
      perTenant.clear();
    },
    forTenant(t) {
      let l = perTenant.get(t);
      if (!l) perTenant.set(t, (l = createPluginLifecycle({ ...options, tenant: checkTenantName(t) })));
      return l;
    },
  };
}
