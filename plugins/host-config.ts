/**
 * The `plugins:` section of flexcore.yaml and what `flexcore up` makes of it: managed
 * bundles verified and installed into the content-addressed store (then run from there),
 * external services only named; each managed plugin's manifest mapped onto the
 * supervisor's launch spec; processors of kind `<plugin>/<kind>` checked against the
 * plugins' manifests.
 */
import { stat } from "node:fs/promises";
import { isAbsolute, resolve } from "node:path";
import { ConfigError, parseRemoteKind } from "../processors/index.js";
import type { ConfigIssue, ResolvedProcessor, SectionValidator } from "../processors/index.js";
import { checkTenantName, compileSchema, issue, pathAt } from "../streams/index.js";
import type { JsonSchema } from "../streams/index.js";
import { install } from "./bundle.js";
import type { InstalledBundle } from "./bundle.js";
import { compileEmbeddedSchema } from "./manifest.js";
import type { PluginManifest } from "./manifest.js";
import { PLUGIN_NAME_PATTERN } from "./protocol.js";
import type { PluginLaunchSpec } from "./supervisor.js";
import { checkPluginTenant, PLUGIN_TENANT_PATTERN, tenantServiceName } from "./tenancy.js";

/** One entry of `plugins:` (keyed by the plugin's name, the `<plugin>` of `<plugin>/<kind>`). */
export type PluginEntry = ManagedPluginEntry | ExternalPluginEntry;

interface PluginEntryBase {
  /** The plugin's name in FlexCore (processor kinds `<name>/<kind>`, steps, `flexcore plugins`). */
  readonly name: string;
  /** Started (managed) or called (external). Disabled: not started, its calls wait (never dropped). @default true */
  readonly enabled: boolean;
  /** The tenant owning it; absent: a system plugin (the operator's). Only that tenant's data is sent to a tenant's plugin. */
  readonly tenant: string | undefined;
}

/** A bundle FlexCore verifies, installs and supervises. */
export interface ManagedPluginEntry extends PluginEntryBase {
  readonly managed: true;
  /** The bundle folder, as written (relative paths are resolved against the configuration file's folder). */
  readonly bundle: string;
  /** Load even without a trusted signature (development). @default false */
  readonly allowUnsigned: boolean;
  /** Processes in its queue group. @default 1 */
  readonly instances: number;
  /** The operator's options (`FLEXCORE_PLUGIN_CONFIG`). @default {} */
  readonly config: Readonly<Record<string, unknown>>;
  /**
   * For a `tenancy: tenant` plugin: the tenants it serves, one instance set (service
   * `<name>_<tenant>`) each. Absent: `[tenant]` when `tenant` is set.
   */
  readonly tenants?: readonly string[] | undefined;
}

/** A service running elsewhere, only discovered and called. */
export interface ExternalPluginEntry extends PluginEntryBase {
  readonly managed: false;
  /** Its NATS service name. */
  readonly service: string;
}

const NAME_EXPECTED = "a plugin name: a lower-case letter, then 1 to 39 of a-z, 0-9 and -";

/** Schema of one entry of `plugins:` (its key is the name). */
export const PLUGIN_ENTRY_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  properties: {
    bundle: { type: "string", minLength: 1, expected: "the folder of a plugin bundle (flexcore-plugin.yaml, .sum, .sig)" },
    external: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$", expected: "the NATS service name of a plugin running elsewhere" },
    allow_unsigned: { type: "boolean", default: false },
    instances: { type: "integer", minimum: 1, maximum: 64, default: 1 },
    config: { type: "object", default: {}, expected: "the plugin's options (an object)" },
    enabled: { type: "boolean", default: true },
    tenant: { type: "string", pattern: "^[A-Za-z0-9][A-Za-z0-9-]{0,63}$", expected: "a tenant name (the plugin's owner)" },
    tenants: {
      type: "array",
      minItems: 1,
      maxItems: 1000,
      uniqueItems: true,
      items: { type: "string", pattern: PLUGIN_TENANT_PATTERN.source, expected: "a tenant name that fits a NATS service name (letters, digits, - and _, not starting with _)" },
      expected: "the tenants a `tenancy: tenant` plugin serves, one instance set each",
    },
  },
  oneOf: [{ required: ["bundle"] }, { required: ["external"] }],
  expected: "either `bundle: <folder>` (managed) or `external: <service name>`",
};

/** Schema of `plugins:`: a mapping of plugin names to entries. */
export const PLUGINS_SCHEMA: JsonSchema = {
  type: "object",
  default: {},
  propertyNames: { pattern: PLUGIN_NAME_PATTERN.source, expected: NAME_EXPECTED },
  additionalProperties: PLUGIN_ENTRY_SCHEMA,
};

interface RawEntry {
  bundle?: string;
  external?: string;
  allow_unsigned: boolean;
  instances: number;
  config: Record<string, unknown>;
  enabled: boolean;
  tenant?: string;
  tenants?: string[];
}

const validator = compileSchema<Record<string, RawEntry>>(PLUGINS_SCHEMA);

/** The validator of `plugins:` (only the file's shape: bundles are read by {@link resolvePlugins}). */
export function pluginsSection(): SectionValidator<readonly PluginEntry[]> {
  return (raw, path) => {
    const checked = validator.check(raw ?? {}, path);
    const issues: ConfigIssue[] = [...checked.issues];
    const out: PluginEntry[] = [];
    for (const [name, e] of Object.entries(checked.value ?? {})) {
      const at = pathAt(path, name);
      if (e.external !== undefined) {
        for (const k of ["allow_unsigned", "instances", "config", "tenants"] as const) {
          if (raw && Object.hasOwn((raw as Record<string, Record<string, unknown>>)[name] ?? {}, k)) issues.push({ path: pathAt(at, k), message: "only for managed plugins (`bundle:`); an external plugin is run by whoever runs it" });
        }
        out.push({ name, managed: false, service: e.external, enabled: e.enabled, tenant: e.tenant });
      } else {
        if (e.tenant !== undefined && e.tenants !== undefined) issues.push({ path: pathAt(at, "tenants"), message: `absent when \`tenant: ${e.tenant}\` is set (a tenant's own plugin serves only its owner)` });
        out.push({ name, managed: true, bundle: e.bundle!, allowUnsigned: e.allow_unsigned, instances: e.instances, config: e.config, enabled: e.enabled, tenant: e.tenant, tenants: e.tenants });
      }
    }
    // `<name>--b` is the service name an upgrade of `<name>` runs under (supervisor.ts): two plugins may not share it.
    for (const e of out) {
      if (e.name.endsWith("--b") && out.some((x) => x.name === e.name.slice(0, -3))) issues.push({ path: pathAt(path, e.name), message: `a name other than ${e.name}: it is the upgrade service name of plugin ${e.name.slice(0, -3)}` });
    }
    if (issues.length > 0) throw new ConfigError(issues);
    return out;
  };
}

/** A managed plugin, verified and installed. */
export interface ResolvedManagedPlugin {
  readonly entry: ManagedPluginEntry;
  readonly installed: InstalledBundle;
  readonly manifest: PluginManifest;
  /** The base launch spec (a `tenancy: tenant` plugin runs it once per tenant of {@link tenants}, see {@link supervisedSpecs}). */
  readonly spec: PluginLaunchSpec;
  /** `tenancy: tenant`: the tenants it runs an instance set for; `undefined` for a system-tenancy plugin. */
  readonly tenants?: readonly string[] | undefined;
}

/** The plugins of the configuration, ready to start. */
export interface ResolvedPlugins {
  readonly managed: readonly ResolvedManagedPlugin[];
  readonly external: readonly ExternalPluginEntry[];
}

/** Options of {@link resolvePlugins}. */
export interface ResolvePluginsOptions {
  /** Where relative bundle paths start: the configuration file's folder. */
  readonly baseDir: string;
  /** The content-addressed store the verified bundles are installed into and run from. */
  readonly storeDir: string;
  /** The operator's trusted public keys (`*.pub`). */
  readonly trustedKeysDir: string;
  /** The configuration file, named in errors. */
  readonly file?: string;
}

/** The supervisor's launch spec of an installed bundle: command from the manifest (`node` is this Node, `python3` the system's), limits from the manifest. */
export function launchSpec(manifest: PluginManifest, bundleDir: string, entry: Pick<ManagedPluginEntry, "instances" | "config">): PluginLaunchSpec {
  return { name: manifest.name, version: manifest.version, command: manifest.command, env: manifest.env, bundleDir, instances: entry.instances, limits: manifest.limits, config: entry.config, ...(manifest.sdk ? { sdk: manifest.sdk } : {}) };
}

/**
 * What the supervisor runs of a managed plugin: its launch spec, or for a `tenancy: tenant`
 * plugin one spec per tenant (service, NATS user, uid, lease `<name>_<tenant>`).
 */
export function supervisedSpecs(m: Pick<ResolvedManagedPlugin, "spec" | "tenants">): PluginLaunchSpec[] {
  if (m.tenants === undefined) return [m.spec];
  // The stored slot (an upgrade's `<name>--b`) applies to every tenant's set: `<slot>_<tenant>`.
  const { service: slot, ...base } = m.spec;
  return m.tenants.map((tenant) => ({ ...base, tenant, ...(slot !== undefined && slot !== base.name ? { service: tenantServiceName(slot, tenant) } : {}) }));
}

/**
 * Verifies and installs every managed bundle (`FLEX_PLUGIN_CHECKSUM`, `_SIGNATURE`,
 * `_MANIFEST`, `_INCOMPATIBLE` refuse it and nothing starts), and maps each manifest onto a
 * launch spec. A bundle whose manifest name is not its key in `plugins:` is refused.
 */
export async function resolvePlugins(entries: readonly PluginEntry[], options: ResolvePluginsOptions): Promise<ResolvedPlugins> {
  const managed: ResolvedManagedPlugin[] = [];
  const external: ExternalPluginEntry[] = [];
  for (const entry of entries) {
    if (!entry.managed) {
      external.push(entry);
      continue;
    }
    const dir = isAbsolute(entry.bundle) ? entry.bundle : resolve(options.baseDir, entry.bundle);
    const installed = await install(dir, options.storeDir, { trustedKeysDir: options.trustedKeysDir, allowUnsigned: entry.allowUnsigned ? [entry.name] : [] });
    if (installed.manifest.name !== entry.name) {
      throw new ConfigError([issue(`plugins.${entry.name}.bundle`, `the bundle of plugin ${JSON.stringify(entry.name)} (its manifest names it ${JSON.stringify(installed.manifest.name)})`, entry.bundle)], options.file);
    }
    if (process.getuid?.() === 0) {
      // As root the plugin runs as a uid of its own, which must be able to reach the store copy.
      const closed = await closedAncestor(installed.path);
      if (closed) throw new ConfigError([{ path: `plugins.${entry.name}.bundle`, message: `the plugin runs as a uid of its own and cannot reach its installed copy ${installed.path}: ${closed} is not traversable by other users (chmod o+x it, or set FLEXCORE_PLUGIN_STORE to a folder that is)` }], options.file);
    }
    managed.push({ entry, installed, manifest: installed.manifest, spec: launchSpec(installed.manifest, installed.path, entry), tenants: instanceTenants(entry, installed.manifest, options.file) });
  }
  return { managed, external };
}

/**
 * The tenants a managed plugin runs instances for: for `tenancy: tenant`, the entry's
 * `tenants:` (or its owner `tenant:`), which must be named; for `tenancy: system`, none
 * (and `tenants:` is refused: a system plugin runs once for everyone).
 */
function instanceTenants(entry: ManagedPluginEntry, manifest: PluginManifest, file: string | undefined): readonly string[] | undefined {
  const at = `plugins.${entry.name}.tenants`;
  if (manifest.tenancy !== "tenant") {
    if (entry.tenants !== undefined) throw new ConfigError([{ path: at, message: `absent: plugin ${entry.name}'s manifest says \`tenancy: ${manifest.tenancy}\` (one instance set for everyone); only a \`tenancy: tenant\` plugin runs per tenant` }], file);
    return undefined;
  }
  const tenants = entry.tenants ?? (entry.tenant !== undefined ? [entry.tenant] : undefined);
  if (!tenants) throw new ConfigError([{ path: at, message: `the tenants plugin ${entry.name} serves (its manifest says \`tenancy: tenant\`: one instance set per tenant, service ${entry.name}_<tenant>), e.g. \`tenants: [acme, globex]\`, or \`tenant: <owner>\`` }], file);
  tenants.forEach((t, i) => {
    try {
      checkPluginTenant(t, `${at}[${i}]`);
      checkTenantName(t, `${at}[${i}]`);
    } catch (err) {
      throw new ConfigError([{ path: `${at}[${i}]`, message: (err as Error).message }], file);
    }
  });
  return Object.freeze([...tenants]);
}

/** The first folder from `/` down to `path` that other users cannot traverse (no `o+x`), if any. */
async function closedAncestor(path: string): Promise<string | undefined> {
  const parts = resolve(path).split("/").filter(Boolean);
  for (let i = 1; i <= parts.length; i++) {
    const dir = `/${parts.slice(0, i).join("/")}`;
    const s = await stat(dir);
    if ((s.mode & 0o001) === 0) return dir;
  }
  return undefined;
}

/**
 * Checks every processor of kind `<plugin>/<kind>`: the plugin is in `plugins:`, a managed
 * plugin's manifest lists the kind, and the options pass its options schema. External
 * plugins' kinds are known only when they answer; their options go unchecked here.
 * @throws ConfigError naming `processors[i].kind` or `processors[i].options...`
 */
export function checkPluginProcessors(processors: readonly ResolvedProcessor[], plugins: ResolvedPlugins, file?: string): void {
  const issues: ConfigIssue[] = [];
  processors.forEach((p, i) => {
    const remote = parseRemoteKind(p.kind);
    if (!remote) return;
    const at = `processors[${i}]`;
    const m = plugins.managed.find((x) => x.entry.name === remote.plugin);
    const x = plugins.external.find((e) => e.name === remote.plugin);
    if (!m && !x) {
      const names = [...plugins.managed.map((y) => y.entry.name), ...plugins.external.map((y) => y.name)];
      issues.push(issue(pathAt(at, "kind"), `a plugin of plugins: (${names.join(", ") || "none configured"}) and one of its processor kinds`, p.kind));
      return;
    }
    // A tenant's plugin gets only its tenant's events: every filter must name that tenant.
    const owner = m ? m.entry.tenant : x!.tenant;
    if (owner !== undefined) {
      p.subjects.forEach((f, j) => {
        if (f.split(".")[1] !== owner) issues.push(issue(pathAt(pathAt(at, "subjects"), j), `a filter within tenant ${owner}, which owns plugin ${remote.plugin} (evt.${owner}.<…>)`, f));
      });
    }
    // A tenancy: tenant plugin has instances only for its tenants: a filter reaching another tenant's events would have nowhere to go.
    if (m?.tenants && owner === undefined) {
      p.subjects.forEach((f, j) => {
        const t = f.split(".")[1];
        if (t === undefined || !m.tenants!.includes(t)) issues.push(issue(pathAt(pathAt(at, "subjects"), j), `a filter within one of the tenants plugin ${remote.plugin} runs instances for (${m.tenants!.join(", ")}): evt.<tenant>.<…>`, f));
      });
    }
    if (!m) return;
    const cap = m.manifest.capabilities.processors.find((c) => c.kind === remote.kind);
    if (!cap) {
      issues.push(issue(pathAt(at, "kind"), `a processor kind of plugin ${remote.plugin} ${m.manifest.version} (${m.manifest.capabilities.processors.map((c) => `${remote.plugin}/${c.kind}`).join(", ") || "it has none"})`, p.kind));
      return;
    }
    if (cap.options) {
      const validate = compileEmbeddedSchema(cap.options);
      if (!validate(structuredClone(p.validatedOptions))) {
        for (const e of validate.errors ?? []) {
          const sub = e.instancePath.split("/").slice(1).map((s) => s.replace(/~1/gu, "/").replace(/~0/gu, "~"));
          const extra = e.keyword === "additionalProperties" ? `.${String((e.params as { additionalProperty?: string }).additionalProperty)}` : "";
          issues.push({ path: `${[pathAt(at, "options"), ...sub].join(".")}${extra}`, message: `${e.message ?? "invalid"} (the options schema of ${p.kind})` });
        }
      }
    }
  });
  if (issues.length > 0) throw new ConfigError(issues, file);
}
