/**
 * The plugin manifest, `flexcore-plugin.yaml` at the root of a bundle: checked against the
 * published JSON Schema (`flexcore-plugin.schema.json`, unknown keys rejected everywhere),
 * then semantically (semver version and range, command, environment, unique capability
 * names, embedded JSON Schemas that compile), then against this host (FlexCore version in
 * the plugin's range, a protocol in common). The result is frozen.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv2020 } from "ajv/dist/2020.js";
import type { ErrorObject, ValidateFunction } from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import semver from "semver";
import { parseDocument } from "yaml";
import { ManifestError, PluginIncompatibleError } from "./errors.js";
import type { ManifestIssue } from "./errors.js";

/** The manifest's file name at the root of a bundle. */
export const MANIFEST_FILE = "flexcore-plugin.yaml";
/** The JSON Schema's file name, beside this module in `plugins/`. */
export const MANIFEST_SCHEMA_FILE = "flexcore-plugin.schema.json";
/** The schema's `$id`, also the value to put after `$schema=` when the schema is not at hand as a file. */
export const MANIFEST_SCHEMA_ID = "urn:flexcore:plugin-manifest:1";
/** Plugin protocol versions this host speaks (`FLEXCORE_PLUGIN_PROTOCOLS`). */
export const HOST_PROTOCOLS: readonly number[] = Object.freeze([1]);
/** Largest manifest accepted, in bytes. */
export const MAX_MANIFEST_BYTES = 256 * 1024;
/** Environment variable names a manifest may not set: the host's handshake. */
export const RESERVED_ENV_PREFIX = "FLEXCORE_";

/** Defaults of `limits`, in the units of their names. */
export const DEFAULT_PLUGIN_LIMITS: PluginLimits = Object.freeze({
  memoryMb: 256,
  maxProcesses: 64,
  openFiles: 256,
  concurrency: 64,
  callTimeoutMs: 5_000,
  startTimeoutMs: 10_000,
});

/** Resources of each plugin process (`limits:` in the manifest, snake_case there). */
export interface PluginLimits {
  /** Address-space limit of the process, MiB. @default 256 */
  readonly memoryMb: number;
  /** Processes and threads the plugin may run. @default 64 */
  readonly maxProcesses: number;
  /** Open file descriptors. @default 256 */
  readonly openFiles: number;
  /** Calls in flight the host sends one instance (`FLEXCORE_PLUGIN_CONCURRENCY`). @default 64 */
  readonly concurrency: number;
  /** How long the host waits for one call's reply, ms. @default 5000 */
  readonly callTimeoutMs: number;
  /** How long the host waits for the `INFO` reply carrying the launch's nonce, ms. @default 10000 */
  readonly startTimeoutMs: number;
}

/** A processor kind the plugin implements (`flexplugin.<service>.processor.<kind>`). */
export interface ProcessorCapability {
  readonly kind: string;
  readonly description: string | undefined;
  /** Same inputs and states always give the same outputs. */
  readonly deterministic: boolean;
  /** JSON Schema (2020-12) of the processor's `options`; `undefined`: any options. */
  readonly options: Readonly<Record<string, unknown>> | undefined;
}

/** A workflow step kind (`flexplugin.<service>.step.<name>`). */
export interface StepCapability {
  readonly name: string;
  readonly description: string | undefined;
  /** JSON Schema (2020-12) of the step's `input`; `undefined`: any input. */
  readonly input: Readonly<Record<string, unknown>> | undefined;
}

/** A sink or a source (`flexplugin.<service>.sink.<name>`, `.source.<name>`). */
export interface EndpointCapability {
  readonly name: string;
  readonly description: string | undefined;
  /** JSON Schema (2020-12) of its `options`; `undefined`: any options. */
  readonly options: Readonly<Record<string, unknown>> | undefined;
}

/** A validated, frozen `flexcore-plugin.yaml`. */
export interface PluginManifest {
  /** Plugin and NATS service name, `^[a-z][a-z0-9-]{1,39}$`. */
  readonly name: string;
  /** Semantic version of the plugin. */
  readonly version: string;
  /** @default "" */
  readonly description: string;
  /** Protocol versions the plugin speaks. */
  readonly protocols: readonly number[];
  /** Semver range of FlexCore versions the plugin runs on. */
  readonly flexcore: string;
  /** argv; the bundle is the working directory. `command[0]` is a PATH name or a path inside the bundle. */
  readonly command: readonly string[];
  /** Extra environment of the process (never `FLEXCORE_*`). @default {} */
  readonly env: Readonly<Record<string, string>>;
  /** @default "system" */
  readonly tenancy: "system" | "tenant";
  /**
   * A FlexCore SDK the host provides to the plugin (`python`: `flexcore_plugin.py` on
   * `PYTHONPATH`, read-only), so the bundle need not carry a copy. @default undefined (none)
   */
  readonly sdk: "python" | undefined;
  readonly capabilities: {
    readonly processors: readonly ProcessorCapability[];
    readonly steps: readonly StepCapability[];
    readonly sinks: readonly EndpointCapability[];
    readonly sources: readonly EndpointCapability[];
  };
  readonly limits: PluginLimits;
}

/** Options of {@link parseManifest}. */
export interface ManifestOptions {
  /** Named in errors. */
  readonly file?: string;
  /** The host's version checked against the plugin's range. @default FlexCore's package.json version */
  readonly flexcoreVersion?: string;
  /** Protocols the host speaks. @default HOST_PROTOCOLS */
  readonly hostProtocols?: readonly number[];
}

interface RawCapability {
  kind?: string;
  name?: string;
  description?: string;
  deterministic?: boolean;
  options?: Record<string, unknown>;
  input?: Record<string, unknown>;
}

interface RawManifest {
  name: string;
  version: string;
  description?: string;
  protocols: number[];
  flexcore: string;
  command: string[];
  env?: Record<string, string>;
  tenancy?: "system" | "tenant";
  sdk?: "python";
  capabilities: Partial<Record<"processors" | "steps" | "sinks" | "sources", RawCapability[]>>;
  limits?: Partial<Record<"memory_mb" | "max_processes" | "open_files" | "concurrency" | "call_timeout_ms" | "start_timeout_ms", number>>;
}

/** The folder holding FlexCore's package.json, from the sources or from dist/. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "plugins", MANIFEST_SCHEMA_FILE))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`Cannot find FlexCore's package.json beside plugins/${MANIFEST_SCHEMA_FILE}`);
    dir = parent;
  }
}

let cachedVersion: string | undefined;
/** FlexCore's own version (package.json), the one `flexcore` ranges are checked against. */
export function flexcoreVersion(): string {
  cachedVersion ??= (JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string }).version;
  return cachedVersion;
}

let cachedSchema: Readonly<Record<string, unknown>> | undefined;
/** The published JSON Schema of the manifest (`plugins/flexcore-plugin.schema.json`). */
export function manifestSchema(): Readonly<Record<string, unknown>> {
  cachedSchema ??= JSON.parse(readFileSync(join(packageRoot(), "plugins", MANIFEST_SCHEMA_FILE), "utf8")) as Record<string, unknown>;
  return cachedSchema;
}

function newAjv(): Ajv2020 {
  // strictTypes/strictRequired would refuse ordinary schemas plugin authors write; unknown
  // keywords (strictSchema) stay errors, so a typo such as `minimun` does not pass silently.
  const ajv = new Ajv2020({ allErrors: true, strict: true, strictTypes: false, strictRequired: false, strictTuples: false, validateFormats: true });
  addFormats.default(ajv);
  return ajv;
}

let manifestValidator: ValidateFunction | undefined;
function validator(): ValidateFunction {
  // verbose: errors carry their parent schema, so an unknown key's error can list the known ones
  manifestValidator ??= new Ajv2020({ allErrors: true, strict: true, verbose: true }).compile(manifestSchema());
  return manifestValidator;
}

/**
 * Compiles a JSON Schema (draft 2020-12) embedded in a manifest: a processor's or sink's
 * `options`, a step's `input`. Remote `$ref`s are not fetched (they fail to compile).
 * @throws Error with Ajv's reason when it does not compile
 */
export function compileEmbeddedSchema(schema: Readonly<Record<string, unknown>>): ValidateFunction {
  return newAjv().compile(schema as Record<string, unknown>);
}

/** `/capabilities/processors/0/options` → `capabilities.processors[0].options`. */
function dotted(pointer: string): string {
  let out = "";
  for (const raw of pointer.split("/").slice(1)) {
    const token = raw.replace(/~1/gu, "/").replace(/~0/gu, "~");
    out += /^\d+$/u.test(token) ? `[${token}]` : /^[A-Za-z_$][\w$]*$/u.test(token) ? `${out ? "." : ""}${token}` : `[${JSON.stringify(token)}]`;
  }
  return out;
}

function join2(path: string, key: string): string {
  return /^[A-Za-z_$][\w$]*$/u.test(key) ? (path ? `${path}.${key}` : key) : `${path}[${JSON.stringify(key)}]`;
}

function valueAt(root: unknown, pointer: string): unknown {
  let v: unknown = root;
  for (const raw of pointer.split("/").slice(1)) {
    const token = raw.replace(/~1/gu, "/").replace(/~0/gu, "~");
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<string, unknown>)[token];
  }
  return v;
}

function describeSchemaNode(schemaPath: string): string | undefined {
  if (schemaPath.includes("capabilityName")) return "a lowercase letter, then up to 63 lowercase letters, digits, `-` or `_`";
  if (schemaPath.startsWith("#/properties/name/")) return "a plugin name: a lowercase letter, then 1 to 39 lowercase letters, digits or `-`";
  if (schemaPath.startsWith("#/properties/env/propertyNames")) return "an environment variable name (letters, digits, `_`, not starting with a digit)";
  return undefined;
}

function issueOf(err: ErrorObject, doc: unknown): ManifestIssue {
  const path = dotted(err.instancePath);
  const here = valueAt(doc, err.instancePath);
  const p = err.params as Record<string, unknown>;
  if (err.propertyName !== undefined) {
    // a key itself broke `propertyNames` (Ajv reports the inner keyword with the key's name)
    return { path: join2(path, err.propertyName), value: err.propertyName, expected: describeSchemaNode(err.schemaPath) ?? "a valid key" };
  }
  switch (err.keyword) {
    case "additionalProperties": {
      const key = String(p.additionalProperty);
      const parent = err.parentSchema as { properties?: Record<string, unknown> } | undefined;
      const known = Object.keys(parent?.properties ?? {});
      return { path: join2(path, key), value: (here as Record<string, unknown>)[key], expected: `absent: it is not a known key (the keys of \`${path || "(manifest)"}\` are ${known.join(", ") || "none"})` };
    }
    case "required":
      return { path: join2(path, String(p.missingProperty)), value: undefined, expected: "present (it is required)" };
    case "propertyNames":
      return { path: join2(path, String(p.propertyName)), value: p.propertyName, expected: describeSchemaNode(err.schemaPath) ?? "a valid key" };
    case "type":
      return { path, value: here, expected: `${/^[aeiou]/u.test(String(p.type)) ? "an" : "a"} ${String(p.type)}${path === "version" ? " (quote it: `version: \"1.0.0\"`)" : ""}` };
    case "enum":
      return { path, value: here, expected: `one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(", ")}` };
    case "pattern":
      return { path, value: here, expected: describeSchemaNode(err.schemaPath) ?? `a string matching ${String(p.pattern)}` };
    case "minimum":
    case "maximum":
      return { path, value: here, expected: `a number ${err.keyword === "minimum" ? "≥" : "≤"} ${String(p.limit)}` };
    case "minItems":
      return { path, value: here, expected: `an array of at least ${String(p.limit)} item(s)` };
    case "maxItems":
      return { path, value: here, expected: `an array of at most ${String(p.limit)} items` };
    case "uniqueItems":
      return { path, value: here, expected: "an array without duplicates" };
    case "minLength":
      return { path, value: here, expected: `a string of at least ${String(p.limit)} character(s)` };
    case "maxLength":
      return { path, value: here, expected: `a string of at most ${String(p.limit)} characters` };
    case "maxProperties":
      return { path, value: here, expected: `an object of at most ${String(p.limit)} keys` };
    default:
      return { path, value: here, expected: err.message ?? err.keyword };
  }
}

const CAPABILITY_LISTS = ["processors", "steps", "sinks", "sources"] as const;

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/**
 * What the schema cannot say. Runs on a document that may have failed the schema too (so
 * every issue is reported at once), hence the shape guards.
 */
function semanticIssues(doc: unknown): ManifestIssue[] {
  const issues: ManifestIssue[] = [];
  if (!isObject(doc)) return issues;
  const m = doc as Partial<Record<keyof RawManifest, unknown>>;
  if (typeof m.version === "string" && (semver.parse(m.version) === null || !/^\d/u.test(m.version))) {
    issues.push({ path: "version", value: m.version, expected: "a semantic version such as `1.4.0` (https://semver.org)" });
  }
  if (typeof m.flexcore === "string" && m.flexcore !== "" && semver.validRange(m.flexcore) === null) {
    issues.push({ path: "flexcore", value: m.flexcore, expected: "a semver range of FlexCore versions such as `>=0.1.0 <1.0.0` or `^0.1`" });
  }
  const program = Array.isArray(m.command) ? m.command[0] : undefined;
  if (typeof program === "string") {
    const segments = program.split("/");
    if (program.startsWith("/") || segments.includes("..") || program.includes("\\")) {
      issues.push({ path: "command[0]", value: program, expected: "a program name looked up on PATH (`node`, `python3`) or a relative path inside the bundle without `..` (`./bin/plugin`)" });
    }
  }
  if (Array.isArray(m.command)) {
    m.command.forEach((arg: unknown, i) => {
      if (typeof arg === "string" && arg.includes("\0")) issues.push({ path: `command[${i}]`, value: arg, expected: "a string without NUL characters" });
    });
  }
  for (const [name, value] of isObject(m.env) ? Object.entries(m.env) : []) {
    if (typeof value === "string" && value.includes("\0")) issues.push({ path: join2("env", name), value, expected: "a string without NUL characters" });
    if (name.startsWith(RESERVED_ENV_PREFIX)) issues.push({ path: join2("env", name), value: name, expected: `a name not starting with \`${RESERVED_ENV_PREFIX}\` (the host sets those)` });
  }
  if (!isObject(m.capabilities)) return issues;
  let count = 0;
  for (const list of CAPABILITY_LISTS) {
    const entries = m.capabilities[list];
    if (!Array.isArray(entries)) continue;
    count += entries.length;
    const seen = new Set<string>();
    entries.forEach((c: unknown, i) => {
      if (!isObject(c)) return;
      const idKey = list === "processors" ? "kind" : "name";
      const id = c[idKey];
      if (typeof id === "string") {
        if (seen.has(id)) issues.push({ path: `capabilities.${list}[${i}].${idKey}`, value: id, expected: `a ${idKey} not used by another entry of \`capabilities.${list}\`` });
        seen.add(id);
      }
      const schemaKey = list === "steps" ? "input" : "options";
      const schema = c[schemaKey];
      if (!isObject(schema)) return;
      try {
        compileEmbeddedSchema(schema);
      } catch (err) {
        issues.push({ path: `capabilities.${list}[${i}].${schemaKey}`, value: schema, expected: `a JSON Schema (draft 2020-12) that compiles (${(err as Error).message})` });
      }
    });
  }
  if (count === 0) issues.push({ path: "capabilities", value: m.capabilities, expected: "at least one processor, step, sink or source" });
  return issues;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

function build(m: RawManifest): PluginManifest {
  const l = m.limits ?? {};
  const d = DEFAULT_PLUGIN_LIMITS;
  const endpoint = (c: RawCapability): EndpointCapability => ({ name: c.name!, description: c.description, options: c.options });
  return deepFreeze({
    name: m.name,
    version: m.version,
    description: m.description ?? "",
    protocols: [...m.protocols],
    flexcore: m.flexcore,
    command: [...m.command],
    env: { ...(m.env ?? {}) },
    tenancy: m.tenancy ?? "system",
    sdk: m.sdk,
    capabilities: {
      processors: (m.capabilities.processors ?? []).map((c) => ({ kind: c.kind!, description: c.description, deterministic: c.deterministic!, options: c.options })),
      steps: (m.capabilities.steps ?? []).map((c) => ({ name: c.name!, description: c.description, input: c.input })),
      sinks: (m.capabilities.sinks ?? []).map(endpoint),
      sources: (m.capabilities.sources ?? []).map(endpoint),
    },
    limits: {
      memoryMb: l.memory_mb ?? d.memoryMb,
      maxProcesses: l.max_processes ?? d.maxProcesses,
      openFiles: l.open_files ?? d.openFiles,
      concurrency: l.concurrency ?? d.concurrency,
      callTimeoutMs: l.call_timeout_ms ?? d.callTimeoutMs,
      startTimeoutMs: l.start_timeout_ms ?? d.startTimeoutMs,
    },
  });
}

/**
 * Validates an already parsed manifest document (schema, then semantics), without the
 * host compatibility check.
 * @throws ManifestError listing every issue with its path
 */
export function validateManifest(doc: unknown, file?: string): PluginManifest {
  const validate = validator();
  const issues = validate(doc) ? [] : (validate.errors ?? []).map((e) => issueOf(e, doc));
  issues.push(...semanticIssues(doc));
  if (issues.length > 0) {
    const seen = new Set<string>();
    throw new ManifestError(issues.filter((i) => {
      const k = `${i.path}\n${i.expected}`;
      return seen.has(k) ? false : (seen.add(k), true);
    }), file);
  }
  return build(doc as RawManifest);
}

/**
 * Checks that this host can run the plugin.
 * @throws PluginIncompatibleError naming `flexcore` or `protocols`
 */
export function checkCompatible(manifest: PluginManifest, options: Pick<ManifestOptions, "flexcoreVersion" | "hostProtocols"> = {}): void {
  const version = options.flexcoreVersion ?? flexcoreVersion();
  if (!semver.satisfies(version, manifest.flexcore, { includePrerelease: true })) {
    throw new PluginIncompatibleError(manifest.name, "flexcore", manifest.flexcore, `a range that includes this FlexCore's version ${version}`);
  }
  const host = options.hostProtocols ?? HOST_PROTOCOLS;
  if (!manifest.protocols.some((p) => host.includes(p))) {
    throw new PluginIncompatibleError(manifest.name, "protocols", manifest.protocols, `a list including a protocol this host speaks (${host.join(", ")})`);
  }
}

/**
 * Parses the YAML of a `flexcore-plugin.yaml` (at most {@link MAX_MANIFEST_BYTES}, UTF-8,
 * unique keys, few aliases) into a plain document, not yet validated.
 * @throws ManifestError
 */
export function readManifestDocument(text: string | Uint8Array, file?: string): unknown {
  const size = typeof text === "string" ? Buffer.byteLength(text) : text.byteLength;
  if (size > MAX_MANIFEST_BYTES) throw new ManifestError([{ path: "", value: `${size} bytes`, expected: `a manifest of at most ${MAX_MANIFEST_BYTES} bytes` }], file);
  let source: string;
  try {
    source = typeof text === "string" ? text : new TextDecoder("utf-8", { fatal: true }).decode(text);
  } catch (err) {
    throw new ManifestError([{ path: "", value: "bytes that are not UTF-8", expected: "a UTF-8 YAML document" }], file, { cause: err });
  }
  const parsed = parseDocument(source, { prettyErrors: true, uniqueKeys: true });
  if (parsed.errors.length > 0) {
    const issues = parsed.errors.map((e) => ({
      path: "",
      value: `YAML${e.linePos?.[0] ? ` (line ${e.linePos[0].line}, column ${e.linePos[0].col})` : ""}: ${e.message.split("\n")[0]}`,
      expected: "a valid YAML document",
    }));
    throw new ManifestError(issues, file);
  }
  try {
    return parsed.toJS({ maxAliasCount: 100 }) ?? null;
  } catch (err) {
    throw new ManifestError([{ path: "", value: (err as Error).message, expected: "a YAML document without excessive aliases" }], file, { cause: err });
  }
}

/**
 * Parses and validates the text of a `flexcore-plugin.yaml`, then checks it against this host.
 * @throws ManifestError (YAML syntax, schema, semantics: every issue with its path)
 * @throws PluginIncompatibleError (FlexCore version outside the range, no protocol in common)
 */
export function parseManifest(text: string | Uint8Array, options: ManifestOptions = {}): PluginManifest {
  const manifest = validateManifest(readManifestDocument(text, options.file), options.file);
  checkCompatible(manifest, options);
  return manifest;
}
