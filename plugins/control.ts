/**
 * Operating plugins across instances: the enabled/disabled switch persisted in `flex_state`
 * (`plugin-enabled.<name>`, watched by every instance, so all agree), and a NATS control
 * service (`flexcore.plugins.*`, service user only) each instance of `flexcore up` answers:
 * its view of every plugin (`status`), and, from the instance holding a plugin's lease,
 * `restart` (clears a crash loop) and `logs` (the last lines kept in memory).
 */
import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { BUCKETS, InvalidOptionError } from "../streams/index.js";
import { PluginUpgradeFailedError } from "./errors.js";
import type { PluginCallMetrics, PluginHost } from "./host.js";
import { PLUGIN_SERVICE_PATTERN } from "./tenancy.js";
import type { PluginStatus, PluginSupervisor } from "./supervisor.js";

/** Key prefix of the switches in `flex_state`: `plugin-enabled.<name>`. */
export const PLUGIN_SWITCH_PREFIX = "plugin-enabled";
/** Subjects of the control service: `<root>.status`, `<root>.restart.<name>`, `<root>.logs.<name>`, `<root>.upgrade.<name>`. */
export const PLUGIN_CONTROL_SUBJECT = "flexcore.plugins";
/** Lines kept per plugin for `flexcore plugins logs`. */
export const DEFAULT_PLUGIN_LOG_LINES = 500;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function checkName(name: unknown): string {
  if (typeof name !== "string" || !PLUGIN_SERVICE_PATTERN.test(name)) throw new InvalidOptionError("name", name, "a plugin name (a lower-case letter, then 1 to 39 of a-z, 0-9 and -), or `<name>_<tenant>` for a tenant's instance set");
  return name;
}

/** The switch of one plugin as stored. */
export interface PluginSwitch {
  readonly enabled: boolean;
  readonly at: string;
  /** Who flipped it (`cli`, `tenant:<t>/<user>`). */
  readonly by: string;
}

async function stateKv(nc: NatsConnection): Promise<KV> {
  return new Kvm(nc).open(BUCKETS.state);
}

/** Stores a plugin's switch; every instance's host follows it within moments. */
export async function setPluginEnabled(nc: NatsConnection, name: string, enabled: boolean, by: string): Promise<PluginSwitch> {
  const value: PluginSwitch = { enabled, at: new Date().toISOString(), by };
  await (await stateKv(nc)).put(`${PLUGIN_SWITCH_PREFIX}.${checkName(name)}`, encoder.encode(JSON.stringify(value)));
  return value;
}

/** The stored switches, by plugin name (plugins never switched are absent: their `enabled:` in flexcore.yaml holds). */
export async function readPluginSwitches(nc: NatsConnection): Promise<Map<string, PluginSwitch>> {
  const kv = await stateKv(nc);
  const out = new Map<string, PluginSwitch>();
  const keys = await kv.keys(`${PLUGIN_SWITCH_PREFIX}.*`);
  for await (const key of keys) {
    const e = await kv.get(key);
    const s = e && e.operation === "PUT" ? parseSwitch(e.value) : undefined;
    if (s) out.set(key.slice(PLUGIN_SWITCH_PREFIX.length + 1), s);
  }
  return out;
}

function parseSwitch(bytes: Uint8Array): PluginSwitch | undefined {
  try {
    const v = JSON.parse(decoder.decode(bytes)) as PluginSwitch;
    return typeof v.enabled === "boolean" ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Applies the stored switches to `host` now and on every change, until `stop()`. */
export async function followPluginSwitches(nc: NatsConnection, host: Pick<PluginHost, "setEnabled">, log?: (line: string) => void, supervisor?: Pick<PluginSupervisor, "setEnabled" | "status">): Promise<{ stop(): void }> {
  const kv = await stateKv(nc);
  const watch = await kv.watch({ key: `${PLUGIN_SWITCH_PREFIX}.>` });
  void (async () => {
    for await (const e of watch) {
      const name = e.key.slice(PLUGIN_SWITCH_PREFIX.length + 1);
      const s = e.operation === "PUT" ? parseSwitch(e.value) : undefined;
      if (!s) continue;
      host.setEnabled(name, s.enabled);
      // A managed plugin's processes follow the switch (a disabled one's are stopped).
      // (A tenancy: tenant plugin's name switches all its sets, `<name>_<tenant>` one; an external plugin has none.)
      if (supervisor) await Promise.resolve().then(() => supervisor.setEnabled(name, s.enabled)).catch(() => undefined);
      log?.(`flexcore: plugin ${name} ${s.enabled ? "enabled" : "disabled"} by ${s.by}`);
    }
  })().catch(() => undefined);
  return { stop: () => watch.stop() };
}

/** The last lines of each plugin's output, from the supervisor's log callback. */
export class PluginLogBuffer {
  readonly #lines = new Map<string, string[]>();
  readonly #max: number;

  constructor(maxLines = DEFAULT_PLUGIN_LOG_LINES) {
    this.#max = maxLines;
  }

  /** Keeps `line` if it is a plugin's (`[plugin <name>] ...`, or the supervisor's `plugin <name>: ...`). */
  capture(line: string): void {
    const m = /^\[plugin ([a-z][a-z0-9-]{1,39}(?:_[A-Za-z0-9][A-Za-z0-9_-]{0,63})?)\] |^plugin ([a-z][a-z0-9-]{1,39}(?:_[A-Za-z0-9][A-Za-z0-9_-]{0,63})?): /u.exec(line);
    const name = m?.[1] ?? m?.[2];
    if (!name) return;
    const list = this.#lines.get(name) ?? [];
    list.push(`${new Date().toISOString()} ${line}`);
    if (list.length > this.#max) list.splice(0, list.length - this.#max);
    this.#lines.set(name, list);
  }

  tail(name: string, n: number): string[] {
    const list = this.#lines.get(name) ?? [];
    return list.slice(Math.max(0, list.length - n));
  }
}

/** One instance's view of one plugin (the answer to `status`). */
export interface PluginInstanceView extends PluginCallMetrics {
  readonly instance: string;
  readonly version: string | undefined;
  readonly tenant: string | null;
  /** Whether this instance holds the plugin's lease (runs its processes). */
  readonly leaseHeld: boolean;
  readonly processes: number;
  readonly lastError: { readonly message: string; readonly code?: string | undefined } | null;
}

/** Options of {@link servePluginControl}. */
export interface PluginControlOptions {
  readonly host: PluginHost;
  readonly supervisor?: PluginSupervisor;
  readonly logs?: PluginLogBuffer;
  /** This instance's name. */
  readonly instance: string;
  /** Performs `flexcore plugins upgrade` on this instance (see plugins/upgrade.ts); absent: upgrades are not answered. */
  readonly upgrade?: (name: string, bundle: string, by: string) => Promise<unknown>;
}

function reply(msg: Msg, value: unknown): void {
  msg.respond(encoder.encode(JSON.stringify(value)));
}

/**
 * Whether this instance coordinates an upgrade of `name`: holds its lease, or for a
 * `tenancy: tenant` plugin (whose sets may be spread over instances, one lease each) the lease
 * of its first enabled set by key (`<name>_<tenant>`, sorted). Every instance knows every set
 * and which are enabled (the switches are stored), and one instance holds a lease, so exactly
 * one answers; the others join (plugins/upgrade-join.ts). While that set's lease is changing
 * hands nobody answers, and the request times out: ask again.
 */
export function coordinatesUpgrade(s: Pick<PluginSupervisor, "status"> | undefined, name: string): boolean {
  const st = statusOf(s, name);
  if (st) return st.leaseHeld;
  const first = (s?.status() ?? []).filter((x) => x.plugin === name && x.tenant !== undefined && x.state !== "stopped").sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))[0];
  return first?.leaseHeld ?? false;
}

function statusOf(s: Pick<PluginSupervisor, "status"> | undefined, name: string): PluginStatus | undefined {
  try {
    return s?.status(name);
  } catch {
    return undefined;
  }
}

/** This instance's view of every configured plugin. */
export function pluginViews(options: PluginControlOptions): PluginInstanceView[] {
  return options.host.metrics().map((m) => {
    const p = options.host.plugins.get(m.plugin)!;
    const st = p.managed ? statusOf(options.supervisor, m.plugin) : undefined;
    // A tenancy: tenant plugin: its sets on this instance (`<name>_<tenant>`), as one row.
    const sets = p.managed && p.tenants !== undefined ? (options.supervisor?.status() ?? []).filter((x) => x.plugin === m.plugin && x.tenant !== undefined) : [];
    return {
      ...m,
      instance: options.instance,
      version: p.manifest?.version,
      tenant: p.tenant ?? null,
      leaseHeld: st?.leaseHeld ?? sets.some((x) => x.leaseHeld),
      processes: st ? st.instances.filter((i) => i.ready).length : sets.reduce((n, x) => n + x.instances.filter((i) => i.ready).length, 0),
      lastError: st?.lastError ? { message: st.lastError.message, ...(st.lastError.code ? { code: st.lastError.code } : {}) } : null,
    };
  });
}

/**
 * Answers the control requests: `status` from every instance, `restart.<name>` and
 * `logs.<name>` only from the instance holding the plugin's lease (the others stay silent,
 * so the request gets the holder's answer).
 */
export function servePluginControl(nc: NatsConnection, options: PluginControlOptions): { close(): Promise<void> } {
  const subs: Subscription[] = [];
  subs.push(nc.subscribe(`${PLUGIN_CONTROL_SUBJECT}.status`, {
    callback: (err, msg) => {
      if (!err) reply(msg, { instance: options.instance, plugins: pluginViews(options) });
    },
  }));
  subs.push(nc.subscribe(`${PLUGIN_CONTROL_SUBJECT}.restart.*`, {
    callback: (err, msg) => {
      if (err) return;
      const name = msg.subject.split(".").pop()!;
      if (!statusOf(options.supervisor, name)?.leaseHeld) return;
      options.supervisor!.restart(name);
      reply(msg, { instance: options.instance, restarted: name });
    },
  }));
  subs.push(nc.subscribe(`${PLUGIN_CONTROL_SUBJECT}.logs.*`, {
    callback: (err, msg) => {
      if (err) return;
      const name = msg.subject.split(".").pop()!;
      if (!statusOf(options.supervisor, name)?.leaseHeld) return;
      let n = 100;
      try {
        const body = msg.data.length > 0 ? (JSON.parse(decoder.decode(msg.data)) as { lines?: unknown }) : {};
        if (typeof body.lines === "number" && Number.isInteger(body.lines) && body.lines > 0) n = Math.min(body.lines, DEFAULT_PLUGIN_LOG_LINES);
      } catch {
        // the default
      }
      reply(msg, { instance: options.instance, plugin: name, lines: options.logs?.tail(name, n) ?? [] });
    },
  }));
  subs.push(nc.subscribe(`${PLUGIN_CONTROL_SUBJECT}.upgrade.*`, {
    callback: (err, msg) => {
      if (err || !options.upgrade) return;
      const name = msg.subject.split(".").pop()!;
      // Only the lease holder runs the plugin's processes, so only it can start the new version
      // beside them; of a tenant plugin's, the holder of the first enabled set coordinates.
      if (!coordinatesUpgrade(options.supervisor, name)) return;
      let bundle: unknown;
      let by: unknown;
      try {
        ({ bundle, by } = JSON.parse(decoder.decode(msg.data)) as { bundle?: unknown; by?: unknown });
      } catch {
        bundle = undefined;
      }
      void (async () => {
        try {
          if (typeof bundle !== "string" || bundle.length === 0) throw new InvalidOptionError("bundle", bundle, "the absolute path of the new bundle's folder");
          reply(msg, { instance: options.instance, upgraded: await options.upgrade!(name, bundle, typeof by === "string" ? by.slice(0, 200) : "cli") });
        } catch (e) {
          const x = e as { code?: unknown; message?: unknown };
          reply(msg, { instance: options.instance, error: { code: typeof x.code === "string" ? x.code : "FLEX_PLUGIN_UPGRADE_FAILED", message: String(x.message ?? e) } });
        }
      })();
    },
  }));
  return {
    close: async () => {
      for (const s of subs) if (!nc.isClosed()) s.unsubscribe();
    },
  };
}

/**
 * Asks the instance holding `name`'s lease to upgrade it to the bundle in `bundle` (an
 * absolute path that instance can read; every instance that may take the lease over must
 * reach it too). Waits up to `timeoutMs` (the new version's start timeout and the drain).
 * @throws PluginUpgradeFailedError (or the coded error the instance answered with, as its cause)
 */
export async function requestPluginUpgrade(nc: NatsConnection, name: string, bundle: string, options: { readonly timeoutMs?: number; readonly by?: string } = {}): Promise<{ instance: string; upgraded: unknown }> {
  const m = await nc.request(`${PLUGIN_CONTROL_SUBJECT}.upgrade.${checkName(name)}`, encoder.encode(JSON.stringify({ bundle, by: options.by ?? "cli" })), { timeout: options.timeoutMs ?? 120_000 });
  const answer = JSON.parse(decoder.decode(m.data)) as { instance: string; upgraded?: unknown; error?: { code: string; message: string } };
  if (answer.error) {
    if (answer.error.code === "FLEX_PLUGIN_UPGRADE_FAILED") {
      const err = new PluginUpgradeFailedError(name, undefined, answer.error.message);
      err.message = answer.error.message;
      throw err;
    }
    throw new PluginUpgradeFailedError(name, undefined, `${answer.error.code}: ${answer.error.message}`);
  }
  return { instance: answer.instance, upgraded: answer.upgraded };
}

/** Every instance's view of the plugins (`flexcore plugins list`), collected for `timeoutMs`. */
export async function collectPluginViews(nc: NatsConnection, timeoutMs = 1_000): Promise<PluginInstanceView[]> {
  const out: PluginInstanceView[] = [];
  try {
    const replies = await nc.requestMany(`${PLUGIN_CONTROL_SUBJECT}.status`, "", { strategy: "timer", maxWait: timeoutMs });
    for await (const m of replies) {
      try {
        out.push(...(JSON.parse(decoder.decode(m.data)) as { plugins: PluginInstanceView[] }).plugins);
      } catch {
        // not an answer of ours
      }
    }
  } catch {
    // no instance answered
  }
  return out;
}

/** Asks the instance holding `name`'s lease to restart it (clearing a crash loop). */
export async function requestPluginRestart(nc: NatsConnection, name: string, timeoutMs = 3_000): Promise<{ instance: string }> {
  const m = await nc.request(`${PLUGIN_CONTROL_SUBJECT}.restart.${checkName(name)}`, "", { timeout: timeoutMs });
  return JSON.parse(decoder.decode(m.data)) as { instance: string };
}

/** The last `lines` lines of `name`'s output, from the instance holding its lease. */
export async function requestPluginLogs(nc: NatsConnection, name: string, lines = 100, timeoutMs = 3_000): Promise<{ instance: string; lines: string[] }> {
  const m = await nc.request(`${PLUGIN_CONTROL_SUBJECT}.logs.${checkName(name)}`, encoder.encode(JSON.stringify({ lines })), { timeout: timeoutMs });
  return JSON.parse(decoder.decode(m.data)) as { instance: string; lines: string[] };
}
