/**
 * The one way FlexCore validates structured input (`flexcore.yaml`, processor options,
 * workflow definitions, plugin manifests): a JSON Schema (draft 2020-12) compiled once
 * with ajv, and ajv's errors turned into issues that name the path, what was expected and
 * what was received, as users read them:
 * `processors[2].options.window: expected integer ≥ 2, got "ten"`.
 *
 * Schemas may carry the annotation `expected` (a phrase such as `"a duration ≥ 100 ms"`);
 * without it the phrase is derived from `type`, `enum`, bounds and lengths. Defaults in
 * `default` are filled in (`useDefaults`); the caller's value is never modified. Checks a
 * schema cannot say (cron syntax, a step graph, reserved names) run as code after the
 * schema pass, and report through {@link issue} in the same words.
 */
import { Ajv2020 } from "ajv/dist/2020.js";
import type { ErrorObject, ValidateFunction } from "ajv/dist/2020.js";
import formats from "ajv-formats";

/** A JSON Schema object (draft 2020-12), as plain JSON. */
export type JsonSchema = { readonly [key: string]: unknown };

/** One problem in a validated value: where it is and what is wrong. */
export interface SchemaIssue {
  /** Path of the value: `processors[2].options.window`, `steps[1].trusted`. */
  readonly path: string;
  /** `expected integer ≥ 2, got "ten"`, `unknown key; expected one of a, b`. */
  readonly message: string;
}

/** A compiled schema. */
export interface SchemaValidator<T> {
  /** The schema it was compiled from (for publishing it). */
  readonly schema: JsonSchema;
  /**
   * Validates a copy of `raw` with the schema's defaults filled in. `path` is where the
   * value sits (`processors[2].options`; `""` for a document), prefixed to every issue.
   */
  check(raw: unknown, path: string): { readonly value: T; readonly issues: readonly SchemaIssue[] } | { readonly value: undefined; readonly issues: readonly SchemaIssue[] };
}

/** The JSON Schema dialect of every FlexCore schema. */
export const SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema";

let shared: Ajv2020 | undefined;

/** The one ajv instance, made on first use (importing `streams/` does no work). */
function ajv(): Ajv2020 {
  if (shared) return shared;
  // strictRequired is off so `if: { required: [key] }` can pick a branch by the key it holds.
  const a = new Ajv2020({ allErrors: true, useDefaults: true, strict: true, strictRequired: false, allowUnionTypes: true, verbose: true });
  // ajv-formats is CommonJS; its default export arrives as the module under NodeNext.
  (((formats as unknown as { default?: typeof formats }).default ?? formats) as unknown as (i: Ajv2020) => void)(a);
  a.addKeyword({ keyword: "expected", schemaType: "string" });
  return (shared = a);
}

/** Shows a received value in a message: `"ten"`, `3.5`, `an array`, `an object`, `nothing`. */
export function shown(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (Array.isArray(value)) return value.length === 0 ? "an empty list" : "an array";
  if (typeof value === "object") return "an object";
  if (typeof value === "string") return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  return String(value);
}

/** `a.b` / `a[2]` path joining; `""` is the document itself. */
export function pathAt(path: string, key: string | number): string {
  if (typeof key === "number") return `${path}[${key}]`;
  return path ? `${path}.${key}` : key;
}

/** An issue in the schema pass's words: `expected <expected>, got <value>`. */
export function issue(path: string, expected: string, value: unknown): SchemaIssue {
  return { path, message: `expected ${expected}, got ${shown(value)}` };
}

function bounds(s: JsonSchema): string {
  const parts: string[] = [];
  if (typeof s.minimum === "number") parts.push(`≥ ${s.minimum}`);
  if (typeof s.exclusiveMinimum === "number") parts.push(`> ${s.exclusiveMinimum}`);
  if (typeof s.maximum === "number") parts.push(`≤ ${s.maximum}`);
  if (typeof s.exclusiveMaximum === "number") parts.push(`< ${s.exclusiveMaximum}`);
  return parts.length ? ` ${parts.join(" and ")}` : "";
}

/** What a schema accepts, in words: `integer ≥ 1 and ≤ 256`, `one of "a", "b"`, `true or false`. */
export function expectedOf(s: JsonSchema): string {
  if (typeof s.expected === "string") return s.expected;
  if (Array.isArray(s.enum)) return `one of ${s.enum.map((v) => JSON.stringify(v)).join(", ")}`;
  if ("const" in s) return JSON.stringify(s.const);
  const union = (s.anyOf ?? s.oneOf) as JsonSchema[] | undefined;
  if (Array.isArray(union)) return union.map(expectedOf).join(" or ");
  switch (s.type) {
    case "integer":
      return `integer${bounds(s)}`;
    case "number":
      return `number${bounds(s)}`;
    case "boolean":
      return "true or false";
    case "string":
      return s.minLength === 1 ? "a non-empty string" : "a string";
    case "array":
      return typeof s.minItems === "number" && s.minItems > 0 ? `a list of at least ${s.minItems} item(s)` : "a list";
    case "object":
      return "an object (a mapping of keys)";
    default:
      return "a valid value";
  }
}

/** A JSON pointer (`/processors/2/options`) as a path under `base`: `processors[2].options`. */
function pointerPath(base: string, pointer: string): string {
  if (pointer === "") return base;
  return pointer
    .slice(1)
    .split("/")
    .map((t) => t.replace(/~1/gu, "/").replace(/~0/gu, "~"))
    .reduce<string>((p, t) => pathAt(p, /^(0|[1-9]\d*)$/u.test(t) ? Number(t) : t), base);
}

function keysOf(s: JsonSchema): string[] {
  return Object.keys((s.properties as JsonSchema | undefined) ?? {});
}

/** One issue per ajv error that is not explained by another one. */
function issuesOf(errors: readonly ErrorObject[], base: string, root: string): SchemaIssue[] {
  // A failed union (anyOf/oneOf) stands for its branches' errors; `if` only says which branch ran.
  const unions = errors.filter((e) => e.keyword === "anyOf" || e.keyword === "oneOf").map((e) => `${e.schemaPath}/`);
  const out: SchemaIssue[] = [];
  const seen = new Set<string>();
  for (const e of errors) {
    if (e.keyword === "if" || unions.some((u) => e.schemaPath.startsWith(u))) continue;
    const at = pointerPath(base, e.instancePath);
    const parent = (e.parentSchema ?? {}) as JsonSchema;
    let item: SchemaIssue;
    if (e.keyword === "additionalProperties" || e.keyword === "unevaluatedProperties") {
      const key = (e.params as { additionalProperty?: string; unevaluatedProperty?: string }).additionalProperty ?? (e.params as { unevaluatedProperty: string }).unevaluatedProperty;
      item = { path: pathAt(at, key), message: `unknown key; expected one of ${keysOf(parent).join(", ")}` };
    } else if (e.keyword === "propertyNames") {
      continue; // reported by the name's own error just below
    } else if (e.schemaPath.includes("/propertyNames/")) {
      const key = (e.params as { propertyName?: string }).propertyName ?? String(e.data);
      // A list of names says which keys exist; a pattern says what a name must look like.
      item = Array.isArray(parent.enum) ? { path: pathAt(at, key), message: `unknown key; expected one of ${(parent.enum as string[]).join(", ")}` } : issue(pathAt(at, key), expectedOf(parent), key);
    } else if (e.keyword === "required") {
      const key = (e.params as { missingProperty: string }).missingProperty;
      const child = ((parent.properties as Record<string, JsonSchema> | undefined) ?? {})[key] ?? {};
      item = issue(pathAt(at, key), expectedOf(child), undefined);
    } else if (e.keyword === "uniqueItems") {
      const { i, j } = e.params as { i: number; j: number };
      item = { path: pathAt(at, i), message: `a duplicate of ${pathAt(at, j) || root}` };
    } else {
      item = issue(at, expectedOf(parent), e.data);
    }
    const shownPath = item.path || root;
    if (seen.has(shownPath)) continue;
    seen.add(shownPath);
    out.push({ ...item, path: shownPath });
  }
  return out;
}

/**
 * A validator of `schema`, compiled once, on its first check (so modules can declare their
 * validators without doing work when imported). `rootName` names the document itself in
 * issues (`(root)`, `$`).
 * @throws Error from the first check when the schema itself is invalid (a programming error)
 */
export function compileSchema<T>(schema: JsonSchema, rootName = "(root)"): SchemaValidator<T> {
  let compiled: ValidateFunction | undefined;
  const compile = (): ValidateFunction => {
    // A root `default` speaks to a parent schema that embeds this one; ajv (strict) refuses it at the root.
    const { default: _unused, ...root } = schema;
    return (compiled = ajv().compile(root));
  };
  return {
    schema,
    check(raw, path) {
      const validate = compiled ?? compile();
      // useDefaults writes into the value: validate a copy, so the caller's stays as given.
      let value: unknown;
      try {
        value = structuredClone(raw);
      } catch {
        return { value: undefined, issues: [issue(path || rootName, "plain data (YAML or JSON values)", raw)] };
      }
      if (validate(value)) return { value: value as T, issues: [] };
      const issues = issuesOf(validate.errors ?? [], path, path || rootName);
      return { value: undefined, issues: issues.length > 0 ? issues : [issue(path || rootName, expectedOf(schema), raw)] };
    },
  };
}

/** `500ms`, `2s`, `1.5m` (or a plain number of milliseconds). */
const DURATION_PATTERN = "^\\d+(\\.\\d+)?(ms|s|m)$";
const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1_000, m: 60_000 };

/** What a duration of at least `minMs` is called in messages. */
export function durationExpected(minMs: number): string {
  return `a duration ≥ ${minMs} ms (milliseconds, or "500ms", "2s", "1m")`;
}

/** Schema of a duration: milliseconds, or a string such as `500ms`, `2s`, `1m`; read it with {@link durationMs}. */
export function durationSchema(minMs: number, defaultValue?: number | string): JsonSchema {
  return {
    anyOf: [{ type: "number", minimum: minMs }, { type: "string", pattern: DURATION_PATTERN }],
    expected: durationExpected(minMs),
    ...(defaultValue === undefined ? {} : { default: defaultValue }),
  };
}

/**
 * The milliseconds of a duration that passed {@link durationSchema}; a string below
 * `minMs` (which the schema cannot see) adds an issue to `issues` and gives `minMs`.
 */
export function durationMs(value: number | string, path: string, minMs: number, issues: SchemaIssue[]): number {
  if (typeof value === "number") return Math.round(value);
  const m = new RegExp(DURATION_PATTERN, "u").exec(value)!;
  const ms = Math.round(Number(value.slice(0, value.length - m[2]!.length)) * UNIT_MS[m[2]!]!);
  if (ms < minMs) issues.push(issue(path, durationExpected(minMs), value));
  return Math.max(ms, minMs);
}

/** Whether any issue sits at `path` or below it. */
export function hasIssueAt(issues: readonly SchemaIssue[], path: string): boolean {
  return issues.some((i) => i.path === path || i.path.startsWith(`${path}.`) || i.path.startsWith(`${path}[`));
}
