/**
 * The `schema-validate` plugin's logic: options checked, the user's JSON Schema compiled
 * with Ajv (draft 2020-12, formats, all errors), compiled validators cached by schema.
 */
import { Ajv2020 } from "ajv/dist/2020.js";
import type { ErrorObject, ValidateFunction } from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

/** What to do with an invalid input. */
export const ON_INVALID = ["dlq", "event"] as const;
export type OnInvalid = (typeof ON_INVALID)[number];

/** Options of the `schema-validate` processor. */
export interface SchemaValidateOptions {
  /** JSON Schema (draft 2020-12) the inputs' data must match. Remote `$ref`s are never fetched. */
  readonly schema: Record<string, unknown> | boolean;
  /**
   * `dlq`: an invalid input is rejected alone (the host dead-letters it with ajv's errors);
   * `event`: it becomes an `EventInvalid` output. @default "dlq"
   */
  readonly onInvalid?: OnInvalid;
}

/** Output types. */
export const VALID_TYPE = "EventValid";
export const INVALID_TYPE = "EventInvalid";
/** Most errors reported per input. */
export const MAX_ERRORS = 20;

/** One validation error as reported (ajv's `instancePath`, `message`, `keyword`). */
export interface ValidationIssue {
  readonly instancePath: string;
  readonly keyword: string;
  readonly message: string;
}

/** The options' JSON Schema (the manifest embeds the same; a test keeps them equal). */
export const SCHEMA_VALIDATE_OPTIONS_SCHEMA = {
  type: "object",
  required: ["schema"],
  additionalProperties: false,
  properties: {
    schema: { type: ["object", "boolean"] },
    onInvalid: { enum: [...ON_INVALID] },
  },
} as const;

/** Bad options; `path` names the option (`options.schema`). */
export class SchemaOptionsError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "SchemaOptionsError";
    this.path = path;
  }
}

/** A compiled validator: `(data) => issues` (empty when valid). */
export type Validator = (data: unknown) => readonly ValidationIssue[];

function newAjv(): Ajv2020 {
  // strict: false so schemas written for other validators (unknown keywords such as
  // `example`) still compile; no loadSchema, so a remote $ref fails to compile instead of
  // making the plugin fetch URLs an option names.
  const ajv = new Ajv2020({ allErrors: true, strict: false, validateFormats: true });
  addFormats.default(ajv);
  return ajv;
}

let optionsValidator: ValidateFunction | undefined;

function issues(errors: readonly ErrorObject[] | null | undefined): ValidationIssue[] {
  return (errors ?? []).slice(0, MAX_ERRORS).map((e) => ({ instancePath: e.instancePath, keyword: e.keyword, message: e.message ?? e.keyword }));
}

/** Checks the options and compiles the schema. @throws SchemaOptionsError naming the path */
export function compileValidator(options: unknown): { readonly onInvalid: OnInvalid; readonly validate: Validator } {
  optionsValidator ??= new Ajv2020({ strict: true, allowUnionTypes: true }).compile(SCHEMA_VALIDATE_OPTIONS_SCHEMA);
  if (!optionsValidator(options)) {
    const e = optionsValidator.errors![0]!;
    const extra = (e.params as { additionalProperty?: string; missingProperty?: string });
    const name = extra.additionalProperty ?? extra.missingProperty;
    const path = `options${e.instancePath.replace(/\//gu, ".")}${name ? `.${name}` : ""}`;
    throw new SchemaOptionsError(path, `expected ${extra.additionalProperty ? "no such key" : e.message ?? "a valid value"}, got ${extra.additionalProperty || extra.missingProperty ? (extra.missingProperty ? "nothing" : "an unknown key") : JSON.stringify(e.instancePath === "" ? options : (options as Record<string, unknown>)[e.instancePath.slice(1)])}`);
  }
  const o = options as SchemaValidateOptions;
  let fn: ValidateFunction;
  try {
    fn = newAjv().compile(o.schema);
  } catch (err) {
    throw new SchemaOptionsError("options.schema", `expected a JSON Schema that compiles, got an error: ${(err as Error).message}`);
  }
  return { onInvalid: o.onInvalid ?? "dlq", validate: (data) => (fn(data) ? [] : issues(fn.errors)) };
}

/** One line for a dead letter: `/a/b must be number; /c must have required property 'd'`. */
export function describeIssues(list: readonly ValidationIssue[]): string {
  return list.map((i) => `${i.instancePath || "/"} ${i.message}`).join("; ");
}
