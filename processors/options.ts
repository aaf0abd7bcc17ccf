/**
 * Small validators for configuration values and processor options. Each takes the raw
 * value and its path and throws a {@link ConfigError} such as
 * `processors[2].options.window: expected integer ≥ 2, got "ten"`.
 * Processor definitions use them in `validateOptions(raw, path)`.
 */
import { ConfigError } from "./errors.js";
import type { ConfigIssue } from "./errors.js";

/** Shows a received value in an error: `"ten"`, `3.5`, `an array`, `an object`. */
export function shown(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  if (typeof value === "string") return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  return String(value);
}

/** Throws a one-issue {@link ConfigError}: `<path>: expected <expected>, got <value>`. */
export function fail(path: string, expected: string, value: unknown): never {
  throw new ConfigError([{ path, message: `expected ${expected}, got ${shown(value)}` }]);
}

/** `a.b` / `a[2]` path joining. */
export function at(path: string, key: string | number): string {
  if (typeof key === "number") return `${path}[${key}]`;
  return path ? `${path}.${key}` : key;
}

/**
 * Checks that `raw` is a plain object whose keys are all in `allowed`; unknown keys are
 * errors naming the key. `undefined`/`null` count as `{}` when `optional`.
 */
export function object(raw: unknown, path: string, allowed: readonly string[], optional = false): Record<string, unknown> {
  if ((raw === undefined || raw === null) && optional) return {};
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) fail(path || "(root)", "an object (a mapping of keys)", raw);
  const obj = raw as Record<string, unknown>;
  const issues: ConfigIssue[] = [];
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) issues.push({ path: at(path, key), message: `unknown key; expected one of ${allowed.join(", ")}` });
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return obj;
}

export interface NumberBounds {
  /** Inclusive lower bound. */
  readonly min?: number;
  /** Inclusive upper bound. */
  readonly max?: number;
  /** Exclusive lower bound. */
  readonly above?: number;
  /** Exclusive upper bound. */
  readonly below?: number;
}

function boundsText(b: NumberBounds): string {
  const parts: string[] = [];
  if (b.min !== undefined) parts.push(`≥ ${b.min}`);
  if (b.above !== undefined) parts.push(`> ${b.above}`);
  if (b.max !== undefined) parts.push(`≤ ${b.max}`);
  if (b.below !== undefined) parts.push(`< ${b.below}`);
  return parts.length ? ` ${parts.join(" and ")}` : "";
}

function inBounds(v: number, b: NumberBounds): boolean {
  return (b.min === undefined || v >= b.min) && (b.max === undefined || v <= b.max) && (b.above === undefined || v > b.above) && (b.below === undefined || v < b.below);
}

/** An integer within bounds; `fallback` when absent. */
export function integer(raw: unknown, path: string, fallback: number, bounds: NumberBounds = {}): number {
  if (raw === undefined) return fallback;
  if (typeof raw !== "number" || !Number.isInteger(raw) || !inBounds(raw, bounds)) fail(path, `integer${boundsText(bounds)}`, raw);
  return raw;
}

/** A finite number within bounds; `fallback` when absent. */
export function number(raw: unknown, path: string, fallback: number, bounds: NumberBounds = {}): number {
  if (raw === undefined) return fallback;
  if (typeof raw !== "number" || !Number.isFinite(raw) || !inBounds(raw, bounds)) fail(path, `number${boundsText(bounds)}`, raw);
  return raw;
}

/** One of `choices`; `fallback` when absent. */
export function oneOf<T extends string>(raw: unknown, path: string, choices: readonly T[], fallback: T): T {
  if (raw === undefined) return fallback;
  if (typeof raw !== "string" || !(choices as readonly string[]).includes(raw)) fail(path, `one of ${choices.map((c) => JSON.stringify(c)).join(", ")}`, raw);
  return raw as T;
}

/** A string (non-empty unless `allowEmpty`) matching `pattern` when given; `fallback` when absent. */
export function string(raw: unknown, path: string, fallback: string, pattern?: { readonly re: RegExp; readonly describe: string }): string {
  if (raw === undefined) return fallback;
  if (typeof raw !== "string" || raw.length === 0) fail(path, pattern ? pattern.describe : "a non-empty string", raw);
  if (pattern && !pattern.re.test(raw)) fail(path, pattern.describe, raw);
  return raw;
}

/** A required value: fails with `expected <what>, got nothing` when absent. */
export function required<T>(raw: unknown, path: string, what: string, check: (raw: unknown, path: string) => T): T {
  if (raw === undefined || raw === null) fail(path, what, raw);
  return check(raw, path);
}

/** A boolean; `fallback` when absent. */
export function boolean(raw: unknown, path: string, fallback: boolean): boolean {
  if (raw === undefined) return fallback;
  if (typeof raw !== "boolean") fail(path, "true or false", raw);
  return raw;
}

/** An array whose items are checked by `item(raw, path)`; collects every item's issues. */
export function array<T>(raw: unknown, path: string, item: (raw: unknown, path: string, index: number) => T, bounds: { readonly minLength?: number } = {}): T[] {
  if (!Array.isArray(raw)) fail(path, bounds.minLength ? `a list of at least ${bounds.minLength} item(s)` : "a list", raw);
  if (bounds.minLength !== undefined && raw.length < bounds.minLength) fail(path, `a list of at least ${bounds.minLength} item(s)`, raw.length === 0 ? "an empty list" : raw);
  const out: T[] = [];
  const issues: ConfigIssue[] = [];
  raw.forEach((v, i) => {
    try {
      out.push(item(v, at(path, i), i));
    } catch (err) {
      issues.push(...issuesOf(err, at(path, i)));
    }
  });
  if (issues.length > 0) throw new ConfigError(issues);
  return out;
}

/**
 * Runs each check and throws one {@link ConfigError} listing every issue, so a user sees
 * all mistakes at once. Returns the checks' results in order.
 */
export function collect<T extends readonly unknown[]>(checks: { [K in keyof T]: () => T[K] }): T {
  const issues: ConfigIssue[] = [];
  const out = checks.map((check) => {
    try {
      return check();
    } catch (err) {
      issues.push(...issuesOf(err, ""));
      return undefined;
    }
  });
  if (issues.length > 0) throw new ConfigError(issues);
  return out as unknown as T;
}

/**
 * The issues of an error thrown by a validator: a {@link ConfigError}'s own, an
 * `InvalidOptionError`'s field and message, or the message of anything else at `path`.
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
