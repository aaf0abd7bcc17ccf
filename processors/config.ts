/**
 * The pipeline configuration file (`flexcore.yaml`): a YAML document whose top-level keys
 * are sections, each checked by its own validator. The loader is generic: other areas add
 * a section by passing its validator (`workflows:` from `workflows/`, ...). Every issue in
 * every section is reported at once, with its path; the result is frozen.
 */
import { readFile } from "node:fs/promises";
import { isAbsolute, join, resolve } from "node:path";
import { parseDocument } from "yaml";
import { checkSubjectFilter } from "../streams/index.js";
import { BUILTIN_PROCESSORS } from "./builtin/index.js";
import { ConfigError, PartitionFilterError } from "./errors.js";
import type { ConfigIssue } from "./errors.js";
import { array, at, collect, fail, integer, issuesOf, object, string } from "./options.js";
import { partitionRules } from "./partition-stream.js";
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

const PROCESSOR_KEYS = ["name", "kind", "subjects", "options", "partitions", "batch_size", "max_deliver", "backoff", "ack_wait", "max_in_flight", "scale"] as const;
const RUNTIME_KEYS = ["threads", "worker_memory_mb", "metrics_interval", "max_keys_in_memory", "instance_id", "lease_ttl"] as const;
const NAME = { re: /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/u, describe: "a name of letters, digits, `-` and `_` (at most 64, starting with a letter or digit)" };
const INSTANCE = { re: /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/u, describe: "an instance id of letters, digits, `.`, `:`, `-` and `_` (at most 128)" };
/** How long a processor lease lasts unrenewed: the `flex_leases` bucket's default max age. */
export const DEFAULT_LEASE_TTL_MS = 30_000;
const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m)$/u;
const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1_000, m: 60_000 };

/** A duration: a number of milliseconds or a string such as `500ms`, `2s`, `1m`. */
export function duration(raw: unknown, path: string, fallback: number, min = 0): number {
  if (raw === undefined) return fallback;
  let ms: number | undefined;
  if (typeof raw === "number" && Number.isFinite(raw)) ms = raw;
  else if (typeof raw === "string") {
    const m = DURATION.exec(raw.trim());
    if (m) ms = Number(m[1]) * UNIT_MS[m[2]!]!;
  }
  if (ms === undefined || ms < min) fail(path, `a duration ≥ ${min} ms (milliseconds, or "500ms", "2s", "1m")`, raw);
  return Math.round(ms);
}

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
  try {
    top = object(raw, "", Object.keys(sections));
  } catch (err) {
    issues.push(...issuesOf(err, ""));
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new ConfigError(issues, file);
    top = raw as Record<string, unknown>;
  }
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

function processorEntry(raw: unknown, path: string, definitions: ReadonlyMap<string, ProcessorDefinition>): ResolvedProcessor {
  const o = object(raw, path, PROCESSOR_KEYS);
  const kindOk = typeof o.kind === "string" && definitions.has(o.kind);
  // Options are checked with the rest, so every mistake of the entry is reported at once.
  const [name, kind, subjects, partitions, batchSize, maxDeliver, backoffMs, ackWaitMs, maxInFlight, scale, validatedOptions] = collect([
    () => string(o.name, at(path, "name"), "", NAME) || fail(at(path, "name"), NAME.describe, o.name),
    () => {
      if (!kindOk) fail(at(path, "kind"), `one of ${[...definitions.keys()].map((d) => JSON.stringify(d)).join(", ")}`, o.kind);
      return o.kind as string;
    },
    () =>
      array(o.subjects, at(path, "subjects"), (s, p) => {
        if (typeof s !== "string") fail(p, "a subject filter such as evt.*.sensor.*", s);
        try {
          checkSubjectFilter(s);
        } catch (err) {
          fail(p, `a valid subject filter (${(err as Error).message})`, s);
        }
        if (!/^(evt|\*|>)(\.|$)/u.test(s)) fail(p, "a filter on FLEX_EVENTS (starting with evt.)", s);
        return s;
      }, { minLength: 1 }),
    () => integer(o.partitions, at(path, "partitions"), DEFAULT_PARTITIONS, { min: 1, max: 256 }),
    () => integer(o.batch_size, at(path, "batch_size"), DEFAULT_PROCESSOR_BATCH_SIZE, { min: 1, max: 65_536 }),
    () => integer(o.max_deliver, at(path, "max_deliver"), DEFAULT_MAX_DELIVER, { min: 1, max: 1_000 }),
    () => (o.backoff === undefined ? DEFAULT_BACKOFF_MS : array(o.backoff, at(path, "backoff"), (v, p) => duration(v, p, 0), { minLength: 1 })),
    () => duration(o.ack_wait, at(path, "ack_wait"), DEFAULT_ACK_WAIT_MS, 1_000),
    () => integer(o.max_in_flight, at(path, "max_in_flight"), DEFAULT_MAX_IN_FLIGHT, { min: 1, max: 1_000_000 }),
    () => {
      const scale = o.scale ?? "single";
      if (typeof scale !== "string" || !(PROCESSOR_SCALES as readonly string[]).includes(scale)) fail(at(path, "scale"), PROCESSOR_SCALES.map((x) => JSON.stringify(x)).join(" or "), o.scale);
      if (scale === "partitioned" && Array.isArray(o.subjects) && o.subjects.every((x) => typeof x === "string")) {
        try {
          partitionRules(typeof o.name === "string" ? o.name : "?", o.subjects as string[], 1);
        } catch (err) {
          if (!(err instanceof PartitionFilterError)) throw err;
          fail(at(path, "subjects"), `filters a partitioned processor can split: ${err.expected}`, err.filter);
        }
      }
      return scale as ProcessorScale;
    },
    () => (kindOk ? definitions.get(o.kind as string)!.validateOptions(o.options ?? {}, at(path, "options")) : undefined),
  ] as const);
  const definition = definitions.get(kind)!;
  return { name, kind, subjects, options: o.options ?? {}, partitions, batchSize, maxDeliver, backoffMs, ackWaitMs, maxInFlight, scale, definition, validatedOptions };
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
    const list = array(raw, path, (item, p) => processorEntry(item, p, definitions));
    const seen = new Map<string, number>();
    const issues: ConfigIssue[] = [];
    list.forEach((p, i) => {
      if (seen.has(p.name)) issues.push({ path: `${path}[${i}].name`, message: `duplicate name ${JSON.stringify(p.name)} (also ${path}[${seen.get(p.name)}])` });
      seen.set(p.name, i);
    });
    if (issues.length > 0) throw new ConfigError(issues);
    return list;
  };
}

/** The validator of `runtime:`. */
export function runtimeSection(defaultThreads: number): SectionValidator<RuntimeConfig> {
  return (raw, path) => {
    const o = object(raw, path, RUNTIME_KEYS, true);
    const [threads, workerMemoryMb, metricsIntervalMs, maxKeysInMemory, instanceId, leaseTtlMs] = collect([
      () => integer(o.threads, at(path, "threads"), defaultThreads, { min: 1, max: 256 }),
      () => integer(o.worker_memory_mb, at(path, "worker_memory_mb"), 512, { min: 0, max: 65_536 }),
      () => duration(o.metrics_interval, at(path, "metrics_interval"), DEFAULT_METRICS_INTERVAL_MS, 100),
      () => integer(o.max_keys_in_memory, at(path, "max_keys_in_memory"), 100_000, { min: 1 }),
      () => (o.instance_id === undefined ? undefined : string(o.instance_id, at(path, "instance_id"), "", INSTANCE)),
      () => duration(o.lease_ttl, at(path, "lease_ttl"), DEFAULT_LEASE_TTL_MS, 200),
    ] as const);
    return { threads, workerMemoryMb, metricsIntervalMs, maxKeysInMemory, instanceId, leaseTtlMs };
  };
}

/** The sections the processor runtime reads; spread it and add your own: `{ ...pipelineSections(), workflows }`. */
export function pipelineSections(options: { readonly threads: number; readonly extra?: readonly ProcessorDefinition[] }): {
  readonly processors: SectionValidator<readonly ResolvedProcessor[]>;
  readonly runtime: SectionValidator<RuntimeConfig>;
} {
  return { processors: processorsSection(options.extra), runtime: runtimeSection(options.threads) };
}
