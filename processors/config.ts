/**
 * The pipeline configuration file (`flexcore.yaml`): a YAML document whose top-level keys
 * are sections, each checked by its own validator. The loader is generic: other areas add
 * a section by passing its validator (`workflows:` from `workflows/`, ...). Every issue in
 * every section is reported at once, with its path; the result is frozen.
 */
import { readFile } from "node:fs/promises";
import { isAbsolute, join, resolve } from "node:path";
import { parseDocument } from "yaml";
import { checkSubjectFilter, compileSchema, durationMs, durationSchema, expectedOf, hasIssueAt, issue, pathAt } from "../streams/index.js";
import type { JsonSchema } from "../streams/index.js";
import { BUILTIN_PROCESSORS } from "./builtin/index.js";
import { ConfigError, PartitionFilterError } from "./errors.js";
import type { ConfigIssue } from "./errors.js";
import { checkOptions, integerSchema, objectSchema, throwIssues } from "./options.js";
import { partitionRules } from "./partition-stream.js";
import { DEFAULT_WORKER_MEMORY_MB } from "./pool.js";
import { isRemoteKind, parseRemoteKind, remoteDefinition } from "./remote.js";
import type { ProcessorDefinition } from "./types.js";

/** File read when neither an explicit path nor `FLEXCORE_CONFIG` is given. */
export const DEFAULT_CONFIG_FILE = "flexcore.yaml";
/** Partitions per processor. */
export const DEFAULT_PARTITIONS = 4;
/** Messages per pool task. */
export const DEFAULT_PROCESSOR_BATCH_SIZE = 256;
/** Attempts at a message before it is dead-lettered. */
export const DEFAULT_MAX_DELIVER = 5;
/** Waits between attempts, in ms (the last one repeats). */
export const DEFAULT_BACKOFF_MS: readonly number[] = [100, 1_000, 5_000];
/** How long JetStream waits for an ack before redelivering, in ms. */
export const DEFAULT_ACK_WAIT_MS = 30_000;
/** Messages fetched but not yet acknowledged, per processor. */
export const DEFAULT_MAX_IN_FLIGHT = 8_192;
/** How often runtime metrics are published, in ms. */
export const DEFAULT_METRICS_INTERVAL_MS = 60_000;

/** Validates one section of the file; `raw` is `undefined` when the section is absent. */
export type SectionValidator<T> = (raw: unknown, path: string) => T;

/** The validated sections, by name. */
export type ConfigSections<V extends Readonly<Record<string, SectionValidator<unknown>>>> = { readonly [K in keyof V]: ReturnType<V[K]> };

/** One processor of `processors:`. */
export interface ProcessorConfig {
  /** Names the durable consumer, the derived subjects `drv.<tenant>.<name>.<key>` and the state keys. */
  readonly name: string;
  /** Processor kind (`anomaly`, ...). */
  readonly kind: string;
  /** Subject filters on `FLEX_EVENTS`, e.g. `evt.*.sensor.*`. */
  readonly subjects: readonly string[];
  /** Options checked by the kind's `validateOptions`. */
  readonly options: unknown;
  /** Key partitions processed in parallel; per-key order holds within a partition. @default 4 */
  readonly partitions: number;
  /** Most messages per pool task. @default 256 */
  readonly batchSize: number;
  /** Attempts at a message before it goes to `FLEX_DLQ`. @default 5 */
  readonly maxDeliver: number;
  /** Waits between attempts, in ms; the last one repeats. @default [100, 1000, 5000] */
  readonly backoffMs: readonly number[];
  /** JetStream ack wait, in ms. @default 30000 */
  readonly ackWaitMs: number;
  /** Messages fetched and not yet acknowledged. @default 8192 */
  readonly maxInFlight: number;
  /**
   * `single`: one instance runs the whole processor (lease `proc.<name>`), the others stand
   * by. `partitioned`: its `partitions` are spread over every instance running it (see
   * docs/processors.md, "Scale-out"). @default "single"
   */
  readonly scale: ProcessorScale;
}

/** How a processor runs across instances (`scale:` in flexcore.yaml). */
export type ProcessorScale = "single" | "partitioned";
/** The values of `scale:`. */
export const PROCESSOR_SCALES: readonly ProcessorScale[] = ["single", "partitioned"];

/** The `runtime:` section. */
export interface RuntimeConfig {
  /** Worker threads of the shared Piscina pool. @default the number of CPUs */
  readonly threads: number;
  /** Per-worker heap limit in MiB (`resourceLimits.maxOldGenerationSizeMb`); 0: Node's default. @default 512 */
  readonly workerMemoryMb: number;
  /** @default 60000 */
  readonly metricsIntervalMs: number;
  /** Key states kept in memory per processor (least recently used beyond it are reloaded from `flex_state`). @default 100000 */
  readonly maxKeysInMemory: number;
  /** This instance's name in `flex_leases` (`instance_id`). @default `<hostname>-<pid>-<random>` (undefined here) */
  readonly instanceId: string | undefined;
  /** `lease_ttl`: a processor lease not renewed for this long may be taken by another instance. @default 30000 */
  readonly leaseTtlMs: number;
}

const NAME_SCHEMA: JsonSchema = { type: "string", pattern: "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", expected: "a name of letters, digits, `-` and `_` (at most 64, starting with a letter or digit)" };
/** How long a processor lease lasts unrenewed: the `flex_leases` bucket's default max age. */
export const DEFAULT_LEASE_TTL_MS = 30_000;
const ACK_WAIT_MIN_MS = 1_000;
const METRICS_INTERVAL_MIN_MS = 100;
const LEASE_TTL_MIN_MS = 200;

/** Schema of one entry of `processors:` (its `options` are checked by the kind's own schema). */
export const PROCESSOR_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  required: ["name", "kind", "subjects"],
  properties: {
    name: NAME_SCHEMA,
    kind: { type: "string", minLength: 1, expected: "a processor kind (anomaly, clustering, forecast, classify, nlp, vision, recommend, auto) or <plugin>/<kind>" },
    subjects: { type: "array", minItems: 1, items: { type: "string", minLength: 1, expected: "a subject filter such as evt.*.sensor.*" } },
    options: { type: "object", default: {}, expected: "the kind's options (an object)" },
    partitions: integerSchema(DEFAULT_PARTITIONS, 1, 256),
    batch_size: integerSchema(DEFAULT_PROCESSOR_BATCH_SIZE, 1, 65_536),
    max_deliver: integerSchema(DEFAULT_MAX_DELIVER, 1, 1_000),
    backoff: { type: "array", minItems: 1, items: durationSchema(0), default: [...DEFAULT_BACKOFF_MS] },
    ack_wait: durationSchema(ACK_WAIT_MIN_MS, DEFAULT_ACK_WAIT_MS),
    max_in_flight: integerSchema(DEFAULT_MAX_IN_FLIGHT, 1, 1_000_000),
    scale: { enum: [...PROCESSOR_SCALES], default: "single", expected: PROCESSOR_SCALES.map((x) => JSON.stringify(x)).join(" or ") },
  },
};

/** Schema of `processors:`. */
export const PROCESSORS_SCHEMA: JsonSchema = { type: "array", items: PROCESSOR_SCHEMA, default: [] };

/** Schema of `runtime:` (`threads` defaults to the number of CPUs, which a schema cannot say). */
export const RUNTIME_SCHEMA: JsonSchema = objectSchema({
  threads: integerSchema(undefined, 1, 256),
  worker_memory_mb: integerSchema(DEFAULT_WORKER_MEMORY_MB, 0, 65_536),
  metrics_interval: durationSchema(METRICS_INTERVAL_MIN_MS, DEFAULT_METRICS_INTERVAL_MS),
  max_keys_in_memory: integerSchema(100_000, 1),
  instance_id: { type: "string", pattern: "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", expected: "an instance id of letters, digits, `.`, `:`, `-` and `_` (at most 128)" },
  lease_ttl: durationSchema(LEASE_TTL_MIN_MS, DEFAULT_LEASE_TTL_MS),
});

interface RawProcessor {
  name: string;
  kind: string;
  subjects: string[];
  options: Record<string, unknown>;
  partitions: number;
  batch_size: number;
  max_deliver: number;
  backoff: Array<number | string>;
  ack_wait: number | string;
  max_in_flight: number;
  scale: ProcessorScale;
}

interface RawRuntime {
  threads?: number;
  worker_memory_mb: number;
  metrics_interval: number | string;
  max_keys_in_memory: number;
  instance_id?: string;
  lease_ttl: number | string;
}

const processorValidator = compileSchema<RawProcessor>(PROCESSOR_SCHEMA);
const runtimeValidator = compileSchema<RawRuntime>(RUNTIME_SCHEMA);

/** Where the configuration is read from: `explicit`, else `$FLEXCORE_CONFIG`, else `<root>/flexcore.yaml`. */
export function resolveConfigPath(root: string, explicit?: string): string {
  const chosen = explicit ?? process.env.FLEXCORE_CONFIG;
  if (!chosen) return join(root, DEFAULT_CONFIG_FILE);
  return isAbsolute(chosen) ? chosen : resolve(chosen);
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/**
 * Parses YAML text and validates each section. Unknown top-level keys are errors.
 * @throws ConfigError listing every issue with its path
 */
export function parseConfig<V extends Readonly<Record<string, SectionValidator<unknown>>>>(text: string, sections: V, file?: string): ConfigSections<V> {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => ({ path: "", message: `YAML: ${e.message.split("\n")[0]}${e.linePos?.[0] ? ` (line ${e.linePos[0].line}, column ${e.linePos[0].col})` : ""}` })), file);
  }
  const raw: unknown = doc.toJS() ?? {};
  const issues: ConfigIssue[] = [];
  let top: Record<string, unknown> = {};
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new ConfigError([issue("(root)", "an object (a mapping of keys)", raw)], file);
  top = raw as Record<string, unknown>;
  const names = Object.keys(sections);
  for (const key of Object.keys(top)) if (!names.includes(key)) issues.push({ path: key, message: `unknown key; expected one of ${names.join(", ")}` });
  const out: Record<string, unknown> = {};
  for (const [name, validate] of Object.entries(sections)) {
    try {
      out[name] = validate(top[name], name);
    } catch (err) {
      issues.push(...issuesOf(err, name));
    }
  }
  if (issues.length > 0) throw new ConfigError(issues, file);
  return deepFreeze(out) as ConfigSections<V>;
}

/** Reads and validates a configuration file (see {@link parseConfig}). */
export async function loadConfig<V extends Readonly<Record<string, SectionValidator<unknown>>>>(file: string, sections: V): Promise<ConfigSections<V>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new ConfigError([{ path: "", message: `cannot read the file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); set FLEXCORE_CONFIG or pass --config` }], file, { cause: err });
  }
  return parseConfig(text, sections, file);
}

// ---- the processors' sections ----

/** A processor with its options validated by its definition. */
export interface ResolvedProcessor extends ProcessorConfig {
  readonly definition: ProcessorDefinition;
  readonly validatedOptions: unknown;
}

/**
 * The issues of an error thrown by a section validator or a kind's `validateOptions`: a
 * {@link ConfigError}'s own, an `InvalidOptionError`'s field and message, or the message of
 * anything else at `path`.
 */
export function issuesOf(err: unknown, path: string): ConfigIssue[] {
  if (err instanceof ConfigError) return [...err.issues];
  const e = err as { field?: unknown; message?: unknown };
  if (typeof e?.field === "string") {
    // InvalidOptionError says "Expected `<field>` to be X, got Y"; the path is printed already.
    const prefix = `Expected \`${e.field}\` to be `;
    const message = String(e.message);
    return [{ path: e.field, message: message.startsWith(prefix) ? `expected ${message.slice(prefix.length)}` : message }];
  }
  return [{ path, message: err instanceof Error ? err.message : String(err) }];
}

/** What the schema cannot check of one entry: its kind, its subject filters, its options. */
function resolveProcessor(raw: unknown, path: string, definitions: ReadonlyMap<string, ProcessorDefinition>, issues: ConfigIssue[]): ResolvedProcessor | undefined {
  const checked = processorValidator.check(raw, path);
  issues.push(...checked.issues);
  // The rest is checked even when the schema found issues, so every mistake is reported at once.
  const p = (checked.value ?? (raw !== null && typeof raw === "object" ? raw : {})) as Partial<RawProcessor>;
  const before = issues.length;
  // `<plugin>/<kind>`: a plugin's kind, checked against the plugin's manifest once plugins are known (flexcore up).
  const remote = typeof p.kind === "string" && isRemoteKind(p.kind);
  const definition = typeof p.kind === "string" ? (remote ? (parseRemoteKind(p.kind) ? remoteDefinition(p.kind) : undefined) : definitions.get(p.kind)) : undefined;
  if (typeof p.kind === "string" && !hasIssueAt(issues, pathAt(path, "kind")) && !definition) {
    issues.push(issue(pathAt(path, "kind"), remote ? "<plugin>/<kind>: a plugin name (a-z, 0-9, -), a slash, and one of its processor kinds" : `one of ${[...definitions.keys()].map((d) => JSON.stringify(d)).join(", ")}, or <plugin>/<kind> for a plugin's`, p.kind));
  }
  if (Array.isArray(p.subjects)) {
    p.subjects.forEach((s, i) => {
      const at = pathAt(pathAt(path, "subjects"), i);
      if (typeof s !== "string" || hasIssueAt(issues, at)) return;
      try {
        checkSubjectFilter(s);
      } catch (err) {
        issues.push(issue(at, `a valid subject filter (${(err as Error).message})`, s));
        return;
      }
      if (!/^(evt|\*|>)(\.|$)/u.test(s)) issues.push(issue(at, "a filter on FLEX_EVENTS (starting with evt.)", s));
    });
    const subjectsPath = pathAt(path, "subjects");
    if (p.scale === "partitioned" && p.subjects.every((x) => typeof x === "string") && !issues.some((i) => i.path.startsWith(subjectsPath))) {
      try {
        partitionRules(typeof p.name === "string" ? p.name : "?", p.subjects, 1);
      } catch (err) {
        if (!(err instanceof PartitionFilterError)) throw err;
        issues.push(issue(subjectsPath, `filters a partitioned processor can split: ${err.expected}`, err.filter));
      }
    }
  }
  let validatedOptions: unknown;
  const optionsPath = pathAt(path, "options");
  if (definition && !hasIssueAt(issues, optionsPath)) {
    try {
      validatedOptions = definition.validateOptions(p.options, optionsPath);
    } catch (err) {
      issues.push(...issuesOf(err, optionsPath));
    }
  }
  if (checked.value === undefined || issues.length > before || !definition) return undefined;
  const backoffMs = checked.value.backoff.map((d, i) => durationMs(d, pathAt(pathAt(path, "backoff"), i), 0, issues));
  const { name, kind, subjects, options, partitions, batch_size: batchSize, max_deliver: maxDeliver, ack_wait, max_in_flight: maxInFlight, scale } = checked.value;
  const ackWaitMs = durationMs(ack_wait, pathAt(path, "ack_wait"), ACK_WAIT_MIN_MS, issues);
  return { name, kind, subjects, options, partitions, batchSize, maxDeliver, backoffMs, ackWaitMs, maxInFlight, scale, definition, validatedOptions };
}

/**
 * The validator of `processors:`: a list of processors whose kinds are built in or in
 * `extra`, with options checked by each kind. Names must be distinct.
 */
export function processorsSection(extra: readonly ProcessorDefinition[] = []): SectionValidator<readonly ResolvedProcessor[]> {
  const definitions = new Map<string, ProcessorDefinition>(BUILTIN_PROCESSORS);
  for (const d of extra) definitions.set(d.kind, d);
  return (raw, path) => {
    if (raw === undefined || raw === null) return [];
    if (!Array.isArray(raw)) throw new ConfigError([issue(path, expectedOf(PROCESSORS_SCHEMA), raw)]);
    const issues: ConfigIssue[] = [];
    const list: ResolvedProcessor[] = [];
    const seen = new Map<string, number>();
    raw.forEach((entry: unknown, i) => {
      const resolved = resolveProcessor(entry, pathAt(path, i), definitions, issues);
      if (resolved === undefined) return;
      if (seen.has(resolved.name)) issues.push({ path: `${path}[${i}].name`, message: `duplicate name ${JSON.stringify(resolved.name)} (also ${path}[${seen.get(resolved.name)}])` });
      seen.set(resolved.name, i);
      list.push(resolved);
    });
    throwIssues(issues);
    return list;
  };
}

/** The validator of `runtime:`. */
export function runtimeSection(defaultThreads: number): SectionValidator<RuntimeConfig> {
  return (raw, path) => {
    const o = checkOptions(runtimeValidator, raw, path);
    const issues: ConfigIssue[] = [];
    const metricsIntervalMs = durationMs(o.metrics_interval, pathAt(path, "metrics_interval"), METRICS_INTERVAL_MIN_MS, issues);
    const leaseTtlMs = durationMs(o.lease_ttl, pathAt(path, "lease_ttl"), LEASE_TTL_MIN_MS, issues);
    throwIssues(issues);
    return { threads: o.threads ?? defaultThreads, workerMemoryMb: o.worker_memory_mb, metricsIntervalMs, maxKeysInMemory: o.max_keys_in_memory, instanceId: o.instance_id, leaseTtlMs };
  };
}

/** The sections the processor runtime reads; spread it and add your own: `{ ...pipelineSections(), workflows }`. */
export function pipelineSections(options: { readonly threads: number; readonly extra?: readonly ProcessorDefinition[] }): {
  readonly processors: SectionValidator<readonly ResolvedProcessor[]>;
  readonly runtime: SectionValidator<RuntimeConfig>;
} {
  return { processors: processorsSection(options.extra), runtime: runtimeSection(options.threads) };
}
