/**
 * Upgrades of a `tenancy: tenant` plugin whose tenants' sets run on several instances (each
 * set has its own lease). The instance answering `flexcore plugins upgrade` (the coordinator,
 * see plugins/control.ts) asks every other instance to join on
 * `<PLUGIN_CONTROL_SUBJECT>.upgrade-join.<name>`; each instance holding enabled sets of the
 * plugin answers with their keys, installs the bundle from `flex_plugin_bundles` by digest
 * (verified against its own trusted keys), starts its new sets beside its old ones and reports
 * "ready" to the coordinator's inbox. The coordinator stores the choice (the commit point)
 * only when its own and every joiner's new sets are ready and the joiners together hold every
 * enabled set it does not; then it publishes the decision on
 * `<PLUGIN_CONTROL_SUBJECT>.upgrade-decision.<name>.<id>` and each instance drains its own
 * old sets. A joiner that hears no decision reads the stored choice: it commits only if that
 * names this upgrade's digest and slot. Any failure before the commit point aborts everywhere:
 * every tenant keeps the running version and the stored choice is unchanged.
 */
import { randomUUID } from "node:crypto";
import { createInbox } from "@nats-io/transport-node";
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { installStoredBundle } from "./bundle-store.js";
import { PLUGIN_CONTROL_SUBJECT } from "./control.js";
import { PluginUpgradeFailedError } from "./errors.js";
import { launchSpec } from "./host-config.js";
import type { PluginHost } from "./host.js";
import { PLUGIN_NAME_PATTERN } from "./protocol.js";
import { pluginServiceNames } from "./supervisor.js";
import type { PluginSupervisor } from "./supervisor.js";
import { DEFAULT_SWITCH_SETTLE_MS, readPluginVersions } from "./upgrade.js";
import type { CrossInstanceUpgradePlan, UpgradeJoiners } from "./upgrade.js";

/** Subject root of the join requests: `<root>.<name>` (service user only). */
export const UPGRADE_JOIN_SUBJECT = `${PLUGIN_CONTROL_SUBJECT}.upgrade-join`;
/** Subject root of the coordinator's decisions: `<root>.<name>.<id>` (service user only). */
export const UPGRADE_DECISION_SUBJECT = `${PLUGIN_CONTROL_SUBJECT}.upgrade-decision`;
/**
 * How long the coordinator collects the instances' answers to its join request, in ms; it
 * stops as soon as the answers cover every enabled set it does not hold (a set has one holder).
 */
export const DEFAULT_JOIN_WAIT_MS = 5_000;
/** More than the start timeout a joiner may take to report (it installs the bundle first), in ms. */
const INSTALL_MARGIN_MS = 15_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/u;
const DIGEST = /^[0-9a-f]{64}$/u;

/** What the coordinator sends on the join subject. */
interface JoinRequest {
  readonly id: string;
  readonly name: string;
  readonly coordinator: string;
  readonly version: string;
  readonly digest: string;
  readonly slot: string;
  readonly manifest: string;
  readonly reportTo: string;
  readonly startTimeoutMs: number;
  /** How long a ready joiner waits for the decision before it reads the stored choice, in ms. */
  readonly decisionTimeoutMs: number;
}

/** A joiner's report to the coordinator's inbox. */
interface JoinReport {
  readonly id: string;
  readonly instance: string;
  readonly ready?: true;
  readonly error?: { readonly code: string; readonly message: string };
}

function parse<T>(data: Uint8Array): T | undefined {
  try {
    return JSON.parse(decoder.decode(data)) as T;
  } catch {
    return undefined;
  }
}

const send = (value: unknown): Uint8Array => encoder.encode(JSON.stringify(value));

/** Options of {@link upgradeJoinCoordinator}. */
export interface UpgradeJoinCoordinatorOptions {
  /** This instance's name (the joiners skip their own coordinator's request). */
  readonly instance: string;
  /** @default {@link DEFAULT_JOIN_WAIT_MS} */
  readonly joinWaitMs?: number;
  /** What a joiner may take beyond the start timeout to report ready (it installs the bundle first), in ms. @default 15000 */
  readonly installMarginMs?: number;
  readonly log?: (line: string, level?: "warn" | "error") => void;
}

/**
 * The coordinator's side, for {@link UpgradePluginOptions.joiners}: asks the other instances
 * to join, checks that they hold every enabled set this instance does not, and drives them.
 * @throws PluginUpgradeFailedError when an instance refuses or a set is held by no instance that answered (the joiners are told to abort)
 */
export function upgradeJoinCoordinator(nc: NatsConnection, options: UpgradeJoinCoordinatorOptions): (plan: CrossInstanceUpgradePlan) => Promise<UpgradeJoiners> {
  return async (plan) => {
    const fail = (reason: string): never => {
      throw new PluginUpgradeFailedError(plan.name, plan.version, reason);
    };
    const id = randomUUID();
    const decision = `${UPGRADE_DECISION_SUBJECT}.${plan.name}.${id}`;
    const decide = (d: "commit" | "abort", reason?: string): void => {
      if (!nc.isClosed()) nc.publish(decision, send({ id, decision: d, ...(reason ? { reason } : {}) }));
    };
    const reports = new Map<string, JoinReport>();
    let changed: () => void = () => undefined;
    let firstReadyAt: number | undefined;
    const reportTo = createInbox();
    const sub = nc.subscribe(reportTo, {
      callback: (err, msg) => {
        const r = err ? undefined : parse<JoinReport>(msg.data);
        if (!r || r.id !== id || typeof r.instance !== "string") return;
        if (r.ready) firstReadyAt ??= Date.now();
        // A failure after "ready" (its drain) does not undo a ready report the coordinator acted on.
        if (!reports.get(r.instance)?.ready) reports.set(r.instance, r);
        changed();
      },
    });
    // Long enough for the coordinator's own start and every joiner's; the coordinator stores the choice only in the first half of it.
    const margin = options.installMarginMs ?? INSTALL_MARGIN_MS;
    const decisionTimeoutMs = 2 * (plan.startTimeoutMs + margin);
    const request: JoinRequest = { id, name: plan.name, coordinator: options.instance, version: plan.version, digest: plan.digest, slot: plan.slot, manifest: plan.manifest, reportTo, startTimeoutMs: plan.startTimeoutMs, decisionTimeoutMs };
    const joined = new Map<string, readonly string[]>();
    const refused: string[] = [];
    try {
      const answers = await nc.requestMany(`${UPGRADE_JOIN_SUBJECT}.${plan.name}`, send(request), { strategy: "timer", maxWait: options.joinWaitMs ?? DEFAULT_JOIN_WAIT_MS });
      for await (const m of answers) {
        const a = parse<{ id?: unknown; instance?: unknown; sets?: unknown; error?: { message?: unknown } }>(m.data);
        if (!a || a.id !== id || typeof a.instance !== "string") continue;
        if (a.error) refused.push(`instance ${a.instance}: ${String(a.error.message)}`);
        else if (Array.isArray(a.sets)) joined.set(a.instance, a.sets.filter((s): s is string => typeof s === "string"));
        if (refused.length > 0) break;
        const covered = new Set([...joined.values()].flat());
        // Every set has one holder: once all are covered, nobody else can join.
        if (plan.sets.every((k) => covered.has(k))) break;
      }
    } catch {
      // no instance answered: the coverage check below names the sets
    }
    const covered = new Set([...joined.values()].flat());
    const missing = plan.sets.filter((k) => !covered.has(k));
    if (refused.length > 0 || missing.length > 0) {
      decide("abort", "the upgrade cannot cover every tenant");
      sub.unsubscribe();
      fail([...refused, ...(missing.length > 0 ? [`the sets ${missing.join(", ")} are held by no instance that joined (another instance may be taking them over); try again`] : [])].join("; "));
    }
    const startedAt = Date.now();
    options.log?.(`plugin ${plan.name}: upgrade ${id} to ${plan.version}: ${[...joined].map(([i, s]) => `instance ${i} joins with ${s.join(", ")}`).join("; ")}`);
    return {
      prepared: async () => {
        const deadline = startedAt + plan.startTimeoutMs + margin;
        for (;;) {
          const failed = [...reports.values()].find((r) => r.error);
          if (failed) fail(`instance ${failed.instance} could not start it: ${failed.error!.message}`);
          const waiting = [...joined.keys()].filter((i) => !reports.get(i)?.ready);
          if (waiting.length === 0) break;
          const left = deadline - Date.now();
          if (left <= 0) fail(`instance${waiting.length > 1 ? "s" : ""} ${waiting.join(", ")} (holding ${waiting.flatMap((i) => joined.get(i) ?? []).join(", ")}) did not report ready within ${plan.startTimeoutMs + margin} ms`);
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, Math.min(left, 1_000));
            changed = () => {
              clearTimeout(timer);
              resolve();
            };
          });
        }
        // A joiner that hears nothing reads the stored choice after decisionTimeoutMs; storing it this late could race that read.
        if (firstReadyAt !== undefined && Date.now() - firstReadyAt > decisionTimeoutMs / 2) fail(`the joiners became ready too long ago (over ${decisionTimeoutMs / 2} ms) to commit safely`);
      },
      commit: () => decide("commit"),
      abort: (reason) => decide("abort", reason),
      close: () => {
        if (!nc.isClosed()) sub.unsubscribe();
      },
    };
  };
}

/** Options of {@link serveUpgradeJoin}. */
export interface UpgradeJoinServiceOptions {
  readonly supervisor: PluginSupervisor;
  readonly host: PluginHost;
  /** This instance's name. */
  readonly instance: string;
  readonly storeDir: string;
  /** This instance's trusted keys: the bundle is verified again against them. */
  readonly trustedKeysDir: string;
  /** Whether this instance's flexcore.yaml lets `name` run unsigned (never taken from the request). @default none */
  readonly allowUnsigned?: (name: string) => boolean;
  /** @default {@link DEFAULT_SWITCH_SETTLE_MS} */
  readonly settleMs?: number;
  readonly log?: (line: string, level?: "warn" | "error") => void;
}

function checkRequest(r: Partial<JoinRequest> | undefined, name: string): JoinRequest | undefined {
  if (!r || r.name !== name || typeof r.id !== "string" || !UUID.test(r.id) || typeof r.coordinator !== "string") return undefined;
  if (typeof r.digest !== "string" || !DIGEST.test(r.digest) || typeof r.version !== "string" || typeof r.manifest !== "string") return undefined;
  if (typeof r.slot !== "string" || !PLUGIN_NAME_PATTERN.test(name) || !pluginServiceNames(name).includes(r.slot)) return undefined;
  if (typeof r.reportTo !== "string" || !r.reportTo.startsWith("_INBOX.")) return undefined;
  const positive = (n: unknown): boolean => typeof n === "number" && Number.isFinite(n) && n > 0 && n <= 3_600_000;
  if (!positive(r.startTimeoutMs) || !positive(r.decisionTimeoutMs)) return undefined;
  return r as JoinRequest;
}

/**
 * The joiner's side: answers the join requests of other instances' upgrades for the sets this
 * instance holds, upgrades those (and only those) when told, and drains its old sets once the
 * coordinator committed. Until `close()`.
 */
export function serveUpgradeJoin(nc: NatsConnection, options: UpgradeJoinServiceOptions): { close(): Promise<void> } {
  const log = options.log ?? (() => undefined);
  const busy = new Set<string>();
  const sub = nc.subscribe(`${UPGRADE_JOIN_SUBJECT}.*`, {
    callback: (err, msg) => {
      if (err) return;
      const name = msg.subject.slice(UPGRADE_JOIN_SUBJECT.length + 1);
      const req = checkRequest(parse<Partial<JoinRequest>>(msg.data), name);
      if (!req || req.coordinator === options.instance) return;
      const hosted = options.host.plugins.get(name);
      if (!hosted?.managed || hosted.tenants === undefined) return;
      // Only an instance holding enabled sets of the plugin joins; the others' standby sets follow the stored choice.
      const held = options.supervisor.status().filter((x) => x.plugin === name && x.tenant !== undefined && x.leaseHeld && x.state !== "stopped").map((x) => x.name);
      if (held.length === 0) return;
      if (busy.has(name)) {
        msg.respond(send({ id: req.id, instance: options.instance, error: { code: "FLEX_PLUGIN_UPGRADE_FAILED", message: "another upgrade of it is under way here" } }));
        return;
      }
      busy.add(name);
      void join(req, held, msg).finally(() => busy.delete(name));
    },
  });

  async function join(req: JoinRequest, held: readonly string[], msg: Msg): Promise<void> {
    const { name, id } = req;
    const report = (body: Omit<JoinReport, "id" | "instance">): void => {
      if (!nc.isClosed()) nc.publish(req.reportTo, send({ id, instance: options.instance, ...body }));
    };
    const abort = new AbortController();
    let decided: "commit" | "abort" | undefined;
    let wake: () => void = () => undefined;
    // Subscribed before the answer, so no decision can pass unheard.
    const decisions: Subscription = nc.subscribe(`${UPGRADE_DECISION_SUBJECT}.${name}.${id}`, {
      callback: (e, m) => {
        const d = e ? undefined : parse<{ id?: unknown; decision?: unknown }>(m.data);
        if (d?.id !== id || (d.decision !== "commit" && d.decision !== "abort")) return;
        decided ??= d.decision;
        if (decided === "abort") abort.abort();
        wake();
      },
    });
    msg.respond(send({ id, instance: options.instance, sets: held }));
    log(`plugin ${name}: joining upgrade ${id} to ${req.version} coordinated by instance ${req.coordinator} with the sets ${held.join(", ")}`);
    const oldService = options.host.plugins.get(name)!.service;
    try {
      const verifyOptions = { trustedKeysDir: options.trustedKeysDir, allowUnsigned: options.allowUnsigned?.(name) ? [name] : [] };
      const installed = await installStoredBundle(nc, req.digest, options.storeDir, verifyOptions);
      const manifest = installed.manifest;
      if (installed.digest !== req.digest) throw new Error(`the stored bundle has digest ${installed.digest}, not ${req.digest}`);
      if (manifest.name !== name || manifest.version !== req.version || manifest.tenancy !== "tenant") throw new Error(`the stored bundle is plugin ${manifest.name} ${manifest.version} (tenancy ${manifest.tenancy}), not ${name} ${req.version} (tenancy tenant)`);
      if (decided === "abort") throw new Error("the coordinator aborted the upgrade");
      const current = options.supervisor.spec(held[0]!);
      const next = launchSpec(manifest, installed.path, { instances: current.instances ?? 1, config: current.config ?? {} });
      await options.supervisor.upgrade(name, next, {
        onlyHeld: true,
        signal: abort.signal,
        timeoutMs: req.startTimeoutMs,
        switchTo: async (service) => {
          if (service !== req.slot) throw new Error(`its sets here would move to slot ${service}, the coordinator's to ${req.slot}`);
          report({ ready: true });
          if (decided === undefined) {
            await new Promise<void>((resolve) => {
              const timer = setTimeout(resolve, req.decisionTimeoutMs);
              wake = () => {
                clearTimeout(timer);
                resolve();
              };
            });
          }
          let commit = decided === "commit";
          if (decided === undefined) {
            // No decision heard: the stored choice is the truth.
            const stored = (await readPluginVersions(nc)).get(name);
            commit = stored?.digest === req.digest && stored.service === req.slot;
            log(`plugin ${name}: upgrade ${id}: no decision within ${req.decisionTimeoutMs} ms; the stored choice is ${commit ? "this upgrade's: committing" : "not this upgrade's: aborting"}`, "warn");
          }
          if (!commit) throw new Error("the coordinator aborted the upgrade");
          options.host.setService(name, service, manifest);
          await options.host.idle(name, oldService, manifest.limits.callTimeoutMs);
          await new Promise((r) => setTimeout(r, options.settleMs ?? DEFAULT_SWITCH_SETTLE_MS));
        },
      });
      log(`plugin ${name}: upgrade ${id}: the sets ${held.join(", ")} run ${req.version}`);
    } catch (err) {
      const e = err as Error & { code?: string };
      report({ error: { code: e.code ?? "FLEX_PLUGIN_UPGRADE_FAILED", message: e.message } });
      log(`plugin ${name}: upgrade ${id} to ${req.version} did not go through here: ${e.message}`, "warn");
    } finally {
      if (!nc.isClosed()) decisions.unsubscribe();
    }
  }

  return {
    close: async () => {
      if (!nc.isClosed()) sub.unsubscribe();
    },
  };
}
