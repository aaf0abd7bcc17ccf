/**
 * What a script step is: the JSON Schema of a script spec (language, source, trust, network,
 * environment, limits), checked with the shared validator of `streams/schema.ts`. The same
 * field schemas describe the script steps of workflow definitions (`workflows/definition.ts`
 * and the published `schemas/workflow.schema.json`), so a step that a definition accepts is
 * one the runner accepts.
 */
import { compileSchema, InvalidOptionError } from "../../streams/index.js";
import type { JsonSchema } from "../../streams/index.js";
import type { ScriptLimits, ScriptSpec } from "./types.js";

/** Limits of a step that sets none. */
export const DEFAULT_SCRIPT_LIMITS: Readonly<ScriptLimits> = Object.freeze({
  timeoutMs: 10_000,
  memoryMb: 256,
  cpuSeconds: 10,
  maxProcesses: 64,
  maxOutputBytes: 1024 * 1024,
  maxLogBytes: 256 * 1024,
  maxFileBytes: 64 * 1024 * 1024,
});

/** Languages accepted in {@link ScriptSpec.language}. */
export const SCRIPT_LANGUAGES = ["javascript", "python", "bash"] as const;

const MIB = 1024 * 1024;
const limit = (minimum: number, maximum: number, description: string): JsonSchema => ({ type: "integer", minimum, maximum, description });

/** The schema of {@link ScriptLimits} (any subset; unknown keys are errors naming the key). */
export const SCRIPT_LIMITS_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  expected: "an object of limits",
  properties: {
    timeoutMs: limit(1, 24 * 3_600_000, "Wall-clock time before the step's processes are killed, in ms."),
    memoryMb: limit(16, 64 * 1024, "Memory of the step, in MiB."),
    cpuSeconds: limit(1, 24 * 3_600, "CPU time, in seconds."),
    maxProcesses: limit(1, 4_096, "Processes and threads the step may have."),
    maxOutputBytes: limit(1, 64 * MIB, "Largest JSON result, in bytes."),
    maxLogBytes: limit(0, 64 * MIB, "stdout and stderr kept each, in bytes."),
    maxFileBytes: limit(1, 64 * 1024 * MIB, "Largest file the step may write, and size of its /tmp, in bytes."),
  } satisfies Record<keyof ScriptLimits, JsonSchema>,
};

const ENV_NAME: JsonSchema = { type: "string", pattern: "^[A-Za-z_][A-Za-z0-9_]*$", expected: "a variable name of letters, digits and _" };

/** The schema of each field of a {@link ScriptSpec}. */
export const SCRIPT_SPEC_FIELDS = {
  language: { type: "string", enum: [...SCRIPT_LANGUAGES] },
  source: { type: "string", minLength: 1, expected: "the script's code, a non-empty string" },
  trusted: { type: "boolean", description: "Operator-installed JavaScript that runs in a worker thread of FlexCore (no sandbox)." },
  network: { type: "boolean", description: "Let the step reach the network (in a namespace of its own)." },
  env: { type: "object", propertyNames: ENV_NAME, additionalProperties: { type: "string" }, expected: "an object of NAME: string" },
  envAllow: { type: "array", items: ENV_NAME, expected: "an array of variable names" },
  limits: SCRIPT_LIMITS_SCHEMA,
} as const satisfies Record<keyof ScriptSpec, JsonSchema>;

/** What a spec must hold across its fields: only JavaScript runs trusted (in a worker thread). */
export const SCRIPT_SPEC_RULES: JsonSchema = {
  if: { properties: { language: { not: { const: "javascript" } }, trusted: { const: true } }, required: ["language", "trusted"] },
  then: { properties: { trusted: { const: false, expected: "false for Python and Bash (only JavaScript runs trusted in worker threads)" } } },
};

/** The JSON Schema of a {@link ScriptSpec}. */
export const SCRIPT_SPEC_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  required: ["language", "source"],
  expected: "an object { language, source }",
  properties: SCRIPT_SPEC_FIELDS,
  allOf: [SCRIPT_SPEC_RULES],
};

const specValidator = compileSchema<ScriptSpec>(SCRIPT_SPEC_SCHEMA);
const limitsValidator = compileSchema<Partial<ScriptLimits>>(SCRIPT_LIMITS_SCHEMA);

/**
 * Checks limits and returns them merged over `base`.
 * @param path prefix of field names in errors (`steps[1].limits`)
 * @throws InvalidOptionError naming the first bad limit
 */
export function resolveLimits(raw: unknown, base: Readonly<ScriptLimits> = DEFAULT_SCRIPT_LIMITS, path = "limits"): ScriptLimits {
  if (raw === undefined) return { ...base };
  const { value, issues } = limitsValidator.check(raw, path);
  if (value === undefined || issues.length > 0) throw new InvalidOptionError(issues);
  return { ...base, ...value };
}

/**
 * Checks a script spec (as a workflow step or an API call gives it) and returns it.
 * @throws InvalidOptionError naming the first bad field (the others in its message)
 */
export function validateScriptSpec(raw: unknown, path = "script"): ScriptSpec {
  const { value, issues } = specValidator.check(raw, path);
  if (value === undefined || issues.length > 0) throw new InvalidOptionError(issues);
  return raw as ScriptSpec;
}
