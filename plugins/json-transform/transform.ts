/**
 * The `json-transform` plugin's transform as a plain function: declarative pick, rename,
 * default, cast and filter on dotted paths. The plugin runs it per input; the benchmark
 * runs it in-process as the baseline.
 */
import { Ajv2020 } from "ajv/dist/2020.js";
import type { ErrorObject, ValidateFunction } from "ajv/dist/2020.js";

/** Types a value can be cast to. `date-iso`: a date string or epoch milliseconds → RFC 3339 UTC. */
export const CAST_TYPES = ["string", "number", "integer", "boolean", "date-iso"] as const;
export type CastType = (typeof CAST_TYPES)[number];
/** Comparison operators of `filter`. */
export const FILTER_OPS = ["eq", "ne", "gt", "gte", "lt", "lte", "in", "exists"] as const;
export type FilterOp = (typeof FILTER_OPS)[number];

/** One condition of `filter` (all must hold for an input to be kept). */
export interface FilterCondition {
  /** Dotted path in the transformed data. */
  readonly path: string;
  readonly op: FilterOp;
  /** The value compared with (for `in`, a list; for `exists`, true or false). */
  readonly value?: unknown;
}

/**
 * Options of the transform. Applied in this order: `pick` (keep only these paths), `rename`
 * (move `from` to `to`), `default` (set where missing or null), `cast`, then `filter` on the
 * result (so a filter sees renamed and cast values).
 */
export interface TransformOptions {
  readonly pick?: readonly string[];
  readonly rename?: Readonly<Record<string, string>>;
  readonly default?: Readonly<Record<string, unknown>>;
  readonly cast?: Readonly<Record<string, CastType>>;
  readonly filter?: readonly FilterCondition[];
  /** Output event type of the processor. @default "Transformed" */
  readonly type?: string;
}

/** @default output event type */
export const DEFAULT_OUTPUT_TYPE = "Transformed";

/** Result of one transform: dropped by the filter, transformed, or refused (a value that cannot be cast). */
export type TransformResult = { readonly kept: true; readonly data: unknown } | { readonly kept: false; readonly data?: undefined } | { readonly kept: false; readonly error: string };

// A path segment: no empty segment, no prototype names (a path must never reach Object.prototype).
const SEGMENT = "(?!(?:__proto__|prototype|constructor)(?:\\.|$))[A-Za-z0-9_$@-]{1,64}";
/** A dotted path: `a`, `a.b`, `user.address.zip`. */
export const PATH_PATTERN = `^${SEGMENT}(?:\\.${SEGMENT}){0,15}$`;
const PATH = { type: "string", pattern: PATH_PATTERN } as const;

/** The JSON Schema of the options (the manifest embeds the same; a test keeps them equal). */
export const TRANSFORM_OPTIONS_SCHEMA = {
  type: "object",
  additionalProperties: false,
  properties: {
    pick: { type: "array", items: PATH, maxItems: 256 },
    rename: { type: "object", propertyNames: PATH, additionalProperties: PATH, maxProperties: 256 },
    default: { type: "object", propertyNames: PATH, maxProperties: 256 },
    cast: { type: "object", propertyNames: PATH, additionalProperties: { enum: [...CAST_TYPES] }, maxProperties: 256 },
    filter: {
      type: "array",
      maxItems: 64,
      items: {
        type: "object",
        required: ["path", "op"],
        additionalProperties: false,
        properties: { path: PATH, op: { enum: [...FILTER_OPS] }, value: {} },
      },
    },
    type: { type: "string", pattern: "^[A-Za-z][A-Za-z0-9_-]{0,127}$" },
  },
} as const;

/** Thrown for options that do not validate; `path` names the option (`options.cast.amount`). */
export class TransformOptionsError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "TransformOptionsError";
    this.path = path;
  }
}

let validator: ValidateFunction | undefined;

function describeError(e: ErrorObject): TransformOptionsError {
  let path = "options" + e.instancePath.split("/").slice(1).map((s) => (/^\d+$/u.test(s) ? `[${s}]` : `.${s.replace(/~1/gu, "/").replace(/~0/gu, "~")}`)).join("");
  if (e.keyword === "additionalProperties") path += `.${(e.params as { additionalProperty: string }).additionalProperty}`;
  const name = (e.params as { propertyName?: string }).propertyName ?? (e as { propertyName?: string }).propertyName;
  if (name !== undefined) path += `.${name}`;
  const got = e.keyword === "additionalProperties" ? "an unknown key" : JSON.stringify(e.data) ?? "undefined";
  return new TransformOptionsError(path, `expected ${e.keyword === "additionalProperties" ? "no such key" : (e.message ?? "a valid value")}, got ${got}`);
}

/** Checks options against {@link TRANSFORM_OPTIONS_SCHEMA}. @throws TransformOptionsError naming the first bad path */
export function checkTransformOptions(options: unknown): TransformOptions {
  validator ??= new Ajv2020({ allErrors: false, strict: true, verbose: true }).compile(TRANSFORM_OPTIONS_SCHEMA);
  if (options === undefined || options === null) return {};
  if (!validator(options)) throw describeError(validator.errors![0]!);
  const o = options as TransformOptions;
  for (const c of o.filter ?? []) {
    if (c.op === "in" && !Array.isArray(c.value)) throw new TransformOptionsError(`options.filter[${o.filter!.indexOf(c)}].value`, `expected a list for \`in\`, got ${JSON.stringify(c.value) ?? "undefined"}`);
    if (c.op === "exists" && c.value !== undefined && typeof c.value !== "boolean") throw new TransformOptionsError(`options.filter[${o.filter!.indexOf(c)}].value`, `expected true, false or nothing for \`exists\`, got ${JSON.stringify(c.value)}`);
  }
  return o;
}

/** A compiled transform: `(data) => result`. Pure and deterministic. */
export type Transform = (data: unknown) => TransformResult;

type Path = readonly string[];
const split = (p: string): Path => p.split(".");

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function get(root: unknown, path: Path): unknown {
  let cur = root;
  for (const seg of path) {
    if (!isObject(cur) || !Object.hasOwn(cur, seg)) return undefined;
    cur = cur[seg];
  }
  return cur;
}

function define(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** Sets `path` in `root` (a fresh object tree of our own), creating objects on the way. */
function set(root: Record<string, unknown>, path: Path, value: unknown): void {
  let cur = root;
  for (let i = 0; i < path.length - 1; i++) {
    const seg = path[i]!;
    let next = Object.hasOwn(cur, seg) ? cur[seg] : undefined;
    if (!isObject(next)) {
      next = {};
      define(cur, seg, next);
    }
    cur = next as Record<string, unknown>;
  }
  define(cur, path[path.length - 1]!, value);
}

function remove(root: unknown, path: Path): void {
  let cur = root;
  for (let i = 0; i < path.length - 1; i++) {
    if (!isObject(cur) || !Object.hasOwn(cur, path[i]!)) return;
    cur = cur[path[i]!];
  }
  if (isObject(cur)) delete cur[path[path.length - 1]!];
}

const NUMERIC = /^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$/u;

/** Casts one value; returns `{ error }` when it cannot be cast. null and undefined stay as they are. */
export function castValue(value: unknown, to: CastType): { value: unknown } | { error: string } {
  if (value === null || value === undefined) return { value };
  const bad = { error: `cannot cast ${JSON.stringify(value)} (${Array.isArray(value) ? "array" : typeof value}) to ${to}` };
  switch (to) {
    case "string":
      return typeof value === "object" ? bad : { value: String(value) };
    case "number":
    case "integer": {
      let n: number;
      if (typeof value === "number") n = value;
      else if (typeof value === "string" && NUMERIC.test(value)) n = Number(value);
      else if (typeof value === "boolean") n = value ? 1 : 0;
      else return bad;
      if (!Number.isFinite(n)) return bad;
      return { value: to === "integer" ? Math.trunc(n) : n };
    }
    case "boolean":
      if (typeof value === "boolean") return { value };
      if (value === 1 || value === 0) return { value: value === 1 };
      if (typeof value === "string") {
        const s = value.trim().toLowerCase();
        if (["true", "1", "yes", "y", "on"].includes(s)) return { value: true };
        if (["false", "0", "no", "n", "off", ""].includes(s)) return { value: false };
      }
      return bad;
    case "date-iso": {
      if (typeof value !== "string" && typeof value !== "number") return bad;
      const d = new Date(value);
      return Number.isNaN(d.getTime()) ? bad : { value: d.toISOString() };
    }
  }
}

function compare(a: unknown, op: FilterOp, b: unknown): boolean {
  switch (op) {
    case "exists":
      return (a !== undefined) === (b === undefined ? true : b === true);
    case "eq":
      return deepEqual(a, b);
    case "ne":
      return !deepEqual(a, b);
    case "in":
      return (b as unknown[]).some((x) => deepEqual(a, x));
    default: {
      const same = (typeof a === "number" && typeof b === "number") || (typeof a === "string" && typeof b === "string");
      if (!same) return false;
      const x = a as number | string;
      const y = b as number | string;
      return op === "gt" ? x > y : op === "gte" ? x >= y : op === "lt" ? x < y : x <= y;
    }
  }
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  return JSON.stringify(a) === JSON.stringify(b);
}

function clone(v: unknown): unknown {
  // Primitives are values already; only objects and arrays need a copy of their own.
  return typeof v !== "object" || v === null ? v : (JSON.parse(JSON.stringify(v)) as unknown);
}

/**
 * Compiles checked options into a transform. The input is never modified. Data that is not
 * an object is treated as `{}` for pick and as itself otherwise.
 * @throws TransformOptionsError when the options do not validate
 */
export function compileTransform(options: unknown): Transform {
  const o = checkTransformOptions(options);
  const pick = o.pick?.map(split);
  const rename = Object.entries(o.rename ?? {}).map(([from, to]) => [split(from), split(to)] as const);
  const defaults = Object.entries(o.default ?? {}).map(([p, v]) => [split(p), v] as const);
  const casts = Object.entries(o.cast ?? {}).map(([p, t]) => [p, split(p), t] as const);
  const filter = (o.filter ?? []).map((c) => [split(c.path), c.op, c.value] as const);
  return (data) => {
    let out: Record<string, unknown>;
    if (pick) {
      out = {};
      for (const p of pick) {
        const v = get(data, p);
        if (v !== undefined) set(out, p, clone(v));
      }
    } else {
      const c = clone(data);
      out = isObject(c) ? c : {};
    }
    for (const [from, to] of rename) {
      const v = get(out, from);
      if (v === undefined) continue;
      remove(out, from);
      set(out, to, v);
    }
    for (const [p, v] of defaults) {
      const cur = get(out, p);
      if (cur === undefined || cur === null) set(out, p, clone(v));
    }
    for (const [name, p, t] of casts) {
      const cur = get(out, p);
      if (cur === undefined) continue;
      const r = castValue(cur, t);
      if ("error" in r) return { kept: false, error: `${name}: ${r.error}` };
      set(out, p, r.value);
    }
    for (const [p, op, v] of filter) if (!compare(get(out, p), op, v)) return { kept: false };
    return { kept: true, data: out };
  };
}
