/**
 * Upgrades of managed plugins without loss, across instances: the lease holder verifies and
 * installs the new bundle, starts it beside the running version under the plugin's other
 * service name (`<name>` ↔ `<name>--b`), persists the choice in `flex_state`
 * (`plugin-version.<name>`), which every instance's host follows (its callers switch
 * between two batches), waits for its own calls to the old service, and drains the old
 * processes. An instance that takes the lease over later starts the chosen version under
 * the chosen service, not flexcore.yaml's bundle: the verified bundle is put into the object
 * store `flex_plugin_bundles` before the choice is stored, and any instance installs it from
 * there (verified again against its own trusted keys) when it cannot read the upgrade's folder.
 */
import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { readFile } from "node:fs/promises";
import { isAbsolute, join, resolve } from "node:path";
import { BUCKETS, InvalidOptionError, OBJECT_STORES } from "../streams/index.js";
import { install, verify } from "./bundle.js";
import type { InstalledBundle, VerifyOptions } from "./bundle.js";
import { installStoredBundle, pruneStoredBundles, storeBundle } from "./bundle-store.js";
import { PluginUpgradeFailedError } from "./errors.js";
import { launchSpec } from "./host-config.js";
import type { ResolvedManagedPlugin, ResolvedPlugins } from "./host-config.js";
import type { PluginHost } from "./host.js";
import { MANIFEST_FILE, readManifestDocument, validateManifest } from "./manifest.js";
import type { PluginManifest } from "./manifest.js";
import { checkPluginName } from "./nats-users.js";
import { pluginServiceNames, upgradeServiceName } from "./supervisor.js";
import { parseServiceName, tenantServiceName } from "./tenancy.js";
import type { PluginSupervisor, PluginUpgradeResult } from "./supervisor.js";

/** Key prefix of the chosen versions in `flex_state`: `plugin-version.<name>`. */
export const PLUGIN_VERSION_PREFIX = "plugin-version";
/**
 * After the switch, how long the lease holder waits before it drains the old version, so
 * that the other instances, which follow the switch through a KV watch, have moved too;
 * a call of theirs that still reaches the old version while it drains is answered (the
 * plugin drains on SIGTERM) or retried on the new one: nothing is lost. In ms.
 */
export const DEFAULT_SWITCH_SETTLE_MS = 500;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The chosen version of a managed plugin, as stored. */
export interface PluginVersionRecord {
  readonly version: string;
  /** The service name it registers as (`<name>` or `<name>--b`); every caller calls this one. */
  readonly service: string;
  /** SHA-256 digest of the verified bundle (its store folder's name). */
  readonly digest: string;
  /**
   * Where the lease holder installed the bundle from. An instance that can read it there (a
   * shared path) installs it from there when it holds this digest; any other fetches the
   * digest from the `flex_plugin_bundles` object store.
   */
  readonly bundle: string;
  /** The version it replaced. */
  readonly previous: { readonly version: string; readonly service: string; readonly digest: string | undefined } | undefined;
  readonly at: string;
  /** Who asked (`cli`, ...). */
  readonly by: string;
  /**
   * The chosen version's `flexcore-plugin.yaml` as the lease holder verified it (kinds,
   * steps, call timeout), so every instance's callers learn it with the switch, not only the
   * lease holder's. Absent in records written before it was kept: the service name alone switches.
   */
  readonly manifest?: string;
}

async function stateKv(nc: NatsConnection): Promise<KV> {
  return new Kvm(nc).open(BUCKETS.state);
}

function parseRecord(bytes: Uint8Array): PluginVersionRecord | undefined {
  try {
    const v = JSON.parse(decoder.decode(bytes)) as PluginVersionRecord;
    return typeof v.version === "string" && typeof v.service === "string" && typeof v.digest === "string" && typeof v.bundle === "string" ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Stores the chosen version of `name`. */
export async function writePluginVersion(nc: NatsConnection, name: string, record: PluginVersionRecord): Promise<void> {
  await (await stateKv(nc)).put(`${PLUGIN_VERSION_PREFIX}.${checkPluginName(name)}`, encoder.encode(JSON.stringify(record)));
}

/** The stored chosen versions, by plugin name (plugins never upgraded are absent: flexcore.yaml's bundle holds). */
export async function readPluginVersions(nc: NatsConnection): Promise<Map<string, PluginVersionRecord>> {
  const kv = await stateKv(nc);
  const out = new Map<string, PluginVersionRecord>();
  for await (const key of await kv.keys(`${PLUGIN_VERSION_PREFIX}.*`)) {
    const e = await kv.get(key);
    const r = e && e.operation === "PUT" ? parseRecord(e.value) : undefined;
    if (r) out.set(key.slice(PLUGIN_VERSION_PREFIX.length + 1), r);
  }
  return out;
}

/**
 * Switches `host`'s callers to each plugin's chosen service now and on every change, until
 * `stop()`; `onChoice` gets every record too (`flexcore up` passes it to
 * {@link adoptPluginVersion}, so the standby sets follow the choice).
 */
export async function followPluginVersions(nc: NatsConnection, host: Pick<PluginHost, "setService">, log?: (line: string) => void, onChoice?: (name: string, record: PluginVersionRecord) => void): Promise<{ stop(): void }> {
  const kv = await stateKv(nc);
  const watch = await kv.watch({ key: `${PLUGIN_VERSION_PREFIX}.>` });
  void (async () => {
    for await (const e of watch) {
      const name = e.key.slice(PLUGIN_VERSION_PREFIX.length + 1);
      const r = e.operation === "PUT" ? parseRecord(e.value) : undefined;
      if (!r) continue;
      host.setService(name, r.service, storedManifest(name, r, log));
      log?.(`flexcore: plugin ${name} is called as service ${r.service} (version ${r.version}, by ${r.by})`);
      onChoice?.(name, r);
    }
  })().catch(() => undefined);
  return { stop: () => watch.stop() };
}

/**
 * The record's manifest, checked again as a manifest file would be (the record is FlexCore's
 * own, in a bucket no tenant reaches, but a bad one must not replace a good manifest), when
 * it is the record's plugin and version; else undefined (the host keeps the one it has).
 */
function storedManifest(name: string, r: PluginVersionRecord, log?: (line: string) => void): PluginManifest | undefined {
  if (typeof r.manifest !== "string") return undefined;
  const where = `${BUCKETS.state}/${PLUGIN_VERSION_PREFIX}.${name}`;
  try {
    const m = validateManifest(readManifestDocument(r.manifest, where), where);
    if (m.name === name && m.version === r.version) return m;
    log?.(`flexcore: plugin ${name}: the stored choice's manifest is plugin ${m.name} ${m.version}, not ${name} ${r.version}; keeping the manifest loaded`);
  } catch (err) {
    log?.(`flexcore: plugin ${name}: the stored choice's manifest is invalid (${(err as Error).message}); keeping the manifest loaded`);
  }
  return undefined;
}

/** Options of {@link applyPluginVersions}. */
export interface ApplyPluginVersionsOptions {
  /**
   * Where to fetch a chosen bundle that is not at the record's path (`flex_plugin_bundles`).
   * Without it only the record's path is tried.
   */
  readonly nc?: NatsConnection;
  readonly storeDir: string;
  readonly trustedKeysDir: string;
  readonly log?: (line: string, level?: "warn" | "error") => void;
}

/**
 * The managed plugins with the stored choices applied (at start, before the supervisor):
 * every plugin is launched and called under its chosen service; its bundle is the chosen
 * one unless flexcore.yaml names another than both the chosen and the replaced one (the
 * operator's newer choice wins). The chosen bundle is installed from the record's path when
 * that holds the chosen digest, else from the object store (see {@link installChosenBundle});
 * one that cannot be installed either way is reported and flexcore.yaml's is run, under the
 * chosen service, so callers still reach it.
 */
export async function applyPluginVersions(plugins: ResolvedPlugins, records: ReadonlyMap<string, PluginVersionRecord>, options: ApplyPluginVersionsOptions): Promise<ResolvedPlugins> {
  const managed: ResolvedManagedPlugin[] = [];
  for (const m of plugins.managed) {
    const r = records.get(m.entry.name);
    if (!r || !pluginServiceNames(m.entry.name).includes(r.service)) {
      managed.push(m);
      continue;
    }
    const yamlDigest = m.installed.digest;
    const stale = yamlDigest !== r.digest && (r.previous?.digest === undefined || yamlDigest === r.previous.digest);
    if (!stale) {
      managed.push({ ...m, spec: { ...m.spec, service: r.service } });
      continue;
    }
    try {
      const { installed, from } = await installChosenBundle(r, options, { trustedKeysDir: options.trustedKeysDir, allowUnsigned: m.entry.allowUnsigned ? [m.entry.name] : [] });
      if (installed.manifest.name !== m.entry.name) throw new Error(`its manifest names plugin ${installed.manifest.name}`);
      options.log?.(`flexcore: plugin ${m.entry.name}: running the chosen version ${r.version} (upgraded ${r.at} by ${r.by}, installed from ${from}) from ${installed.path}, not flexcore.yaml's ${m.manifest.version}`);
      // A tenant plugin keeps its tenants: every tenant's set runs the chosen version under `<service>_<tenant>`.
      managed.push({ entry: m.entry, installed, manifest: installed.manifest, spec: { ...launchSpec(installed.manifest, installed.path, m.entry), service: r.service }, tenants: m.tenants });
    } catch (err) {
      options.log?.(`flexcore: plugin ${m.entry.name}: the chosen version ${r.version} (digest ${r.digest}) cannot be installed (${(err as { code?: string }).code ?? "error"}: ${(err as Error).message}); running flexcore.yaml's ${m.manifest.version} as service ${r.service}`, "error");
      managed.push({ ...m, spec: { ...m.spec, service: r.service } });
    }
  }
  return { managed, external: plugins.external };
}

/**
 * Installs the chosen bundle of `r`: from the record's path when that holds the chosen
 * digest (a shared path), else from the object store by digest, verified here again in both
 * cases. The reasons both failed are in the error.
 */
async function installChosenBundle(r: PluginVersionRecord, options: ApplyPluginVersionsOptions, verifyOptions: VerifyOptions): Promise<{ installed: InstalledBundle; from: string }> {
  let atPath: string;
  try {
    const installed = await install(r.bundle, options.storeDir, verifyOptions);
    if (installed.digest === r.digest) return { installed, from: r.bundle };
    atPath = `${r.bundle} holds a bundle with digest ${installed.digest}, not the chosen one`;
  } catch (err) {
    atPath = `${r.bundle}: ${(err as { code?: string }).code ?? "error"}: ${(err as Error).message}`;
  }
  if (!options.nc) throw new Error(atPath);
  try {
    const installed = await installStoredBundle(options.nc, r.digest, options.storeDir, verifyOptions);
    return { installed, from: `the object store ${OBJECT_STORES.pluginBundles}` };
  } catch (err) {
    const e = err as Error & { code?: string };
    // The store's reason is the one that counts (the path is expected to be missing on another machine); keep its code.
    e.message = `${e.message} (and not at ${atPath})`;
    throw e;
  }
}

/**
 * Makes the sets of `m` that this instance does not run now (standby, switched off) follow
 * the chosen version `record` (installed from its path or the object store and verified as at start, see
 * {@link applyPluginVersions}), so that if this instance takes one over, it launches the
 * chosen version under the chosen service, which is what every caller calls. Without it, an
 * instance started before the upgrade would launch flexcore.yaml's version under the old
 * service after a failover, and the calls would wait until its restart.
 * @returns the keys of the sets that now follow it
 */
export async function adoptPluginVersion(supervisor: Pick<PluginSupervisor, "follow">, m: ResolvedManagedPlugin, record: PluginVersionRecord, options: ApplyPluginVersionsOptions): Promise<string[]> {
  const [applied] = (await applyPluginVersions({ managed: [m], external: [] }, new Map([[m.entry.name, record]]), options)).managed;
  if (!applied || applied.spec.service !== record.service) return [];
  return supervisor.follow(m.entry.name, applied.spec);
}

/** Options of {@link upgradePlugin}. */
export interface UpgradePluginOptions {
  readonly nc: NatsConnection;
  readonly supervisor: PluginSupervisor;
  readonly host: PluginHost;
  readonly storeDir: string;
  readonly trustedKeysDir: string;
  /** Load the bundle without a trusted signature (the plugin's `allow_unsigned`). @default false */
  readonly allowUnsigned?: boolean;
  /** Who asks, kept in the record. @default "cli" */
  readonly by?: string;
  /** @default {@link DEFAULT_SWITCH_SETTLE_MS} */
  readonly settleMs?: number;
  readonly signal?: AbortSignal;
  /** Where what is worth an operator's attention but fails nothing goes (a failed removal of an old stored bundle). */
  readonly log?: (line: string, level?: "warn" | "error") => void;
  /**
   * For a `tenancy: tenant` plugin whose enabled sets are spread over instances: asks the
   * instances holding the others to join the upgrade (plugins/upgrade-join.ts
   * `upgradeJoinCoordinator`). Absent: such an upgrade is refused, as a set held elsewhere
   * cannot be started here.
   */
  readonly joiners?: (plan: CrossInstanceUpgradePlan) => Promise<UpgradeJoiners>;
}

/** What the coordinator of a cross-instance upgrade asks the other instances to do. */
export interface CrossInstanceUpgradePlan {
  readonly name: string;
  readonly version: string;
  /** The verified bundle's digest, in `flex_plugin_bundles`. */
  readonly digest: string;
  /** The slot every tenant's new set registers under (`<slot>_<tenant>`). */
  readonly slot: string;
  /** The bundle's `flexcore-plugin.yaml`, as verified here. */
  readonly manifest: string;
  /** The enabled sets (`<name>_<tenant>`) this instance does not hold: the joiners must hold every one. */
  readonly sets: readonly string[];
  /** How long a new set may take to become ready, in ms. */
  readonly startTimeoutMs: number;
}

/** The instances that joined a cross-instance upgrade, as the coordinator drives them. */
export interface UpgradeJoiners {
  /** Resolves once every joiner's new sets are ready; rejects (naming the instance and its reason) when one fails or does not report in time. */
  prepared(): Promise<void>;
  /** The stored choice was written: the joiners drain their old sets. */
  commit(): void;
  /** The upgrade is off: the joiners drop their new sets (the stored choice was not written). */
  abort(reason: string): void;
  close(): void;
}

/**
 * Upgrades managed plugin `name` to the bundle in `bundleDir` on this instance (which must
 * hold its lease): verifies and installs it (checksum, signature per the trusted keys,
 * compatibility), starts it beside the running version, persists the choice (every
 * instance's callers switch), waits for this host's calls to the old version, lets the
 * others move, drains the old one. The verified bundle is put into `flex_plugin_bundles`
 * before anything starts, so a stored choice always has its bundle in the store; after the
 * upgrade, the plugin's stored bundles other than the chosen and the replaced one are removed.
 * @throws PluginUpgradeFailedError (the running version keeps serving, the stored choice is unchanged)
 */
export async function upgradePlugin(name: string, bundleDir: string, options: UpgradePluginOptions): Promise<PluginUpgradeResult & { readonly digest: string }> {
  checkPluginName(name);
  if (typeof bundleDir !== "string" || !isAbsolute(bundleDir)) throw new InvalidOptionError("bundle", bundleDir, "an absolute path of a bundle folder");
  const hosted = options.host.plugins.get(name);
  if (!hosted || !hosted.managed) throw new PluginUpgradeFailedError(name, undefined, "it is not a managed plugin of this instance");
  // A tenant plugin's sets share one version and one slot: the first tenant's set speaks for them.
  const current = options.supervisor.spec(hosted.tenants?.[0] === undefined ? name : tenantServiceName(name, hosted.tenants[0]));
  let installed;
  try {
    installed = await install(resolve(bundleDir), options.storeDir, { trustedKeysDir: options.trustedKeysDir, allowUnsigned: options.allowUnsigned ? [name] : [] });
  } catch (err) {
    throw new PluginUpgradeFailedError(name, undefined, `the bundle ${bundleDir} was refused (${(err as { code?: string }).code ?? "error"}: ${(err as Error).message})`, { cause: err });
  }
  const manifest: PluginManifest = installed.manifest;
  if (manifest.name !== name) throw new PluginUpgradeFailedError(name, manifest.version, `the bundle is plugin ${JSON.stringify(manifest.name)}`);
  // One instance set for everyone or one per tenant is a different set of NATS users and leases: a restart changes it, not an upgrade.
  const tenancy = hosted.tenants === undefined ? "system" : "tenant";
  if (manifest.tenancy !== tenancy) throw new PluginUpgradeFailedError(name, manifest.version, `the bundle says \`tenancy: ${manifest.tenancy}\`, the running version \`tenancy: ${tenancy}\`; change it by a restart`);
  const manifestText = await readFile(join(installed.path, MANIFEST_FILE), "utf8");
  const previousDigest = current.bundleDir.split("/").pop();
  const verifyOptions: VerifyOptions = { trustedKeysDir: options.trustedKeysDir, allowUnsigned: options.allowUnsigned ? [name] : [] };
  try {
    // The bytes of the read-only store folder just installed, verified again as they are put.
    const verified = await verify(installed.path, verifyOptions);
    if (verified.digest !== installed.digest) throw new Error(`the store folder holds digest ${verified.digest}`);
    await storeBundle(options.nc, name, verified);
  } catch (err) {
    throw new PluginUpgradeFailedError(name, manifest.version, `the bundle could not be put into the object store ${OBJECT_STORES.pluginBundles} (${(err as Error).message}), so other instances could not install it`, { cause: err });
  }
  const next = launchSpec(manifest, installed.path, { instances: current.instances ?? 1, config: current.config ?? {} });
  // A tenant plugin whose enabled sets are spread over instances: the others join (see plugins/upgrade-join.ts).
  const elsewhere = hosted.tenants === undefined ? [] : options.supervisor.status().filter((x) => x.plugin === name && x.tenant !== undefined && x.state !== "stopped" && !x.leaseHeld).map((x) => x.name);
  const slot = upgradeServiceName(name, parseServiceName(current.service ?? name).plugin);
  let joiners: UpgradeJoiners | undefined;
  if (elsewhere.length > 0 && options.joiners && slot !== undefined) {
    joiners = await options.joiners({ name, version: manifest.version, digest: installed.digest, slot, manifest: manifestText, sets: elsewhere, startTimeoutMs: manifest.limits.startTimeoutMs });
  }
  let committed = false;
  const result = await options.supervisor.upgrade(name, next, {
    ...(options.signal ? { signal: options.signal } : {}),
    ...(joiners ? { onlyHeld: true } : {}),
    switchTo: async (service) => {
      const oldService = hosted.service;
      // Every joiner's new sets are ready before the choice is stored: the commit point.
      await joiners?.prepared();
      await writePluginVersion(options.nc, name, {
        version: manifest.version,
        service,
        digest: installed.digest,
        bundle: resolve(bundleDir),
        previous: { version: current.version, service: hosted.tenants === undefined ? (current.service ?? name) : oldService, digest: previousDigest },
        at: new Date().toISOString(),
        by: options.by ?? "cli",
        manifest: manifestText,
      });
      committed = true;
      joiners?.commit();
      options.host.setService(name, service, manifest);
      await options.host.idle(name, oldService, manifest.limits.callTimeoutMs);
      await new Promise((r) => setTimeout(r, options.settleMs ?? DEFAULT_SWITCH_SETTLE_MS));
    },
  }).catch((err: unknown) => {
    if (!committed) joiners?.abort((err as Error).message);
    throw err;
  }).finally(() => joiners?.close());
  const keep = [installed.digest, ...(previousDigest !== undefined && /^[0-9a-f]{64}$/u.test(previousDigest) ? [previousDigest] : [])];
  await pruneStoredBundles(options.nc, name, keep).catch((err: unknown) => options.log?.(`flexcore: plugin ${name}: old bundles could not be removed from ${OBJECT_STORES.pluginBundles}: ${(err as Error).message}`, "warn"));
  return { ...result, digest: installed.digest };
}
