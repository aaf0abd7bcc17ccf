/**
 * Processor options and configuration sections are JSON Schemas checked by the shared
 * validator of `streams/schema.ts`; this module holds the small builders the schemas of
 * this area are written with, and {@link checkOptions}, which runs a compiled schema and
 * throws a {@link ConfigError} naming every bad path
 * (`processors[2].options.window: expected integer ≥ 2, got "ten"`).
 */
import { issue } from "../streams/index.js";
import type { JsonSchema, SchemaIssue, SchemaValidator } from "../streams/index.js";
import { ConfigError } from "./errors.js";

/** An integer in `[min, max]`, `fallback` when absent. */
export function integerSchema(fallback: number | undefined, min: number, max?: number): JsonSchema {
  return { type: "integer", minimum: min, ...(max === undefined ? {} : { maximum: max }), ...(fallback === undefined ? {} : { default: fallback }) };
}

/** A number in `[min, max]` (`open`: in `(min, max)`), `fallback` when absent. */
export function numberSchema(fallback: number, min: number, max: number, open = false): JsonSchema {
  return open ? { type: "number", exclusiveMinimum: min, exclusiveMaximum: max, default: fallback } : { type: "number", minimum: min, maximum: max, default: fallback };
}

/** One of `values`, `fallback` when absent. */
export function enumSchema(values: readonly string[], fallback: string): JsonSchema {
  return { type: "string", enum: [...values], default: fallback };
}

/** `true` or `false`, `fallback` when absent. */
export function booleanSchema(fallback: boolean): JsonSchema {
  return { type: "boolean", default: fallback };
}

/** A mapping with exactly these keys (unknown keys are errors naming the key), `{}` when absent. */
export function objectSchema(properties: Readonly<Record<string, JsonSchema>>, extra: JsonSchema = {}): JsonSchema {
  return { type: "object", additionalProperties: false, properties, default: {}, ...extra };
}

/** The seed of a processor's PRNG: an unsigned 32-bit integer. */
export const DEFAULT_SEED = 42;
export const SEED_SCHEMA: JsonSchema = integerSchema(DEFAULT_SEED, 0, 0xffffffff);

/**
 * Checks `raw` (absent: `{}`) against a compiled schema and returns it with its defaults.
 * @throws ConfigError listing every issue, each prefixed with `path`
 */
export function checkOptions<T>(validator: SchemaValidator<T>, raw: unknown, path: string): T {
  const { value, issues } = validator.check(raw ?? {}, path);
  if (value === undefined || issues.length > 0) throw new ConfigError(issues);
  return value;
}

/** Throws the issues found by code after the schema pass, if any. */
export function throwIssues(issues: readonly SchemaIssue[]): void {
  if (issues.length > 0) throw new ConfigError(issues);
}

/** `{ retrain_every: 5 }` → `{ retrainEvery: 5 }`: the options types name the YAML keys in camelCase. */
export function camelKeys<T>(o: Readonly<Record<string, unknown>>): T {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k.replace(/_([a-z])/gu, (_, c: string) => c.toUpperCase()), v])) as T;
}

/** An integer option whose bounds depend on other options, checked after the schema pass. */
export function checkBetween(issues: SchemaIssue[], path: string, value: number, min: number, max?: number): void {
  if (value < min || (max !== undefined && value > max)) issues.push(issue(path, `integer ≥ ${min}${max === undefined ? "" : ` and ≤ ${max}`}`, value));
}
