import { parse as parseYaml } from "yaml";
import { BUILTIN_PROCESSORS, ConfigError, SCRIPT_SPEC_FIELDS, SCRIPT_SPEC_RULES } from "../processors/index.js";
import type { ScriptLanguage, ScriptLimits } from "../processors/index.js";
import { checkSubjectFilter, checkToken, compileSchema, SCHEMA_DIALECT, shown } from "../streams/index.js";
import type { JsonSchema } from "../streams/index.js";
import { CronSyntaxError, parseCron } from "./cron.js";
import { WorkflowDefinitionError } from "./errors.js";
import { ExpressionError, parseCondition, scanTemplate, stepRefs } from "./template.js";

/** Step kinds of the schema. */
export const STEP_KINDS = ["script", "processor", "plugin"] as const;
/** Ids of steps: letters, digits, `_` and `-`, up to 64 (workflow names: {@link checkWorkflowName}). */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({ maxAttempts: 1, backoffMs: 1_000, factor: 2, maxBackoffMs: 60_000 });
/** Longest workflow name, in UTF-8 bytes (a run id `<name>-e<seq>` must stay a subject token). */
export const MAX_WORKFLOW_NAME_BYTES = 64;
/** Largest definition source accepted, in bytes. */
export const MAX_DEFINITION_BYTES = 256 * 1024;

/** How a failed step is retried: attempt n+1 starts `min(backoffMs · factor^(n-1), maxBackoffMs)` after attempt n failed. */
export interface RetryPolicy {
  /** Attempts in all, the first included. @default 1 */
  readonly maxAttempts: number;
  /** @default 1000 */
  readonly backoffMs: number;
  /** @default 2 */
  readonly factor: number;
  /** @default 60000 */
  readonly maxBackoffMs: number;
}

interface StepCommon {
  readonly id: string;
  /** Steps that must end first (fan-in); defaults to the previous step, `[]` for none. */
  readonly needs: readonly string[];
  /** Condition; a false one records the step as skipped. */
  readonly when?: string;
  /** Input template (defaults to the run's input). */
  readonly input?: unknown;
  readonly retry: RetryPolicy;
  /** Per-attempt timeout, in ms. */
  readonly timeoutMs?: number;
  /** A step that still fails after its retries does not fail the run; its output is `null`. */
  readonly continueOnError: boolean;
}

export interface ScriptStepDefinition extends StepCommon {
  readonly kind: "script";
  readonly language: ScriptLanguage;
  readonly source: string;
  readonly trusted: boolean;
  readonly network: boolean;
  readonly env: Readonly<Record<string, string>>;
  readonly limits?: Partial<ScriptLimits>;
}

export interface ProcessorStepDefinition extends StepCommon {
  readonly kind: "processor";
  /** A built-in processor kind (`anomaly`, ...). */
  readonly processor: string;
  readonly options: unknown;
  /** Template of the key whose state the processor keeps (default: the trigger's key, else the workflow name). */
  readonly key?: string;
}

/** A step served by a plugin (`flexplugin.<plugin>.step.<step>`), called with the run's tenant. */
export interface PluginStepDefinition extends StepCommon {
  readonly kind: "plugin";
  /** The plugin's name in flexcore.yaml `plugins:`. */
  readonly plugin: string;
  /** One of its steps (its manifest's `capabilities.steps[].name`). */
  readonly step: string;
}

export type StepDefinition = ScriptStepDefinition | ProcessorStepDefinition | PluginStepDefinition;

/** The plugins a runner can call, for checking `plugin` steps when a definition is stored or run. */
export interface PluginStepCatalog {
  /** Whether `tenant` may use plugin `plugin` (a system plugin, or the tenant's own). */
  hasPlugin(plugin: string, tenant: string): boolean;
  /** Whether `plugin` serves step `step`. */
  hasStep(plugin: string, step: string): boolean;
}

export type TriggerDefinition =
  /** `ordered`: runs of one key (the subject's last token) run one after another, in event order. */
  | { readonly kind: "event"; readonly subject: string; readonly types: readonly string[]; readonly ordered: boolean }
  /** Fires at the schedule's times read in `timezone` (IANA, default UTC). */
  | { readonly kind: "cron"; readonly schedule: string; readonly timezone: string };

/** A validated, frozen workflow definition. */
export interface WorkflowDefinition {
  readonly name: string;
  readonly description?: string;
  readonly triggers: readonly TriggerDefinition[];
  readonly steps: readonly StepDefinition[];
}

const STEP_ID: JsonSchema = { type: "string", pattern: NAME_PATTERN.source, expected: "letters, digits, _ or - (at most 64)" };
const COMMON_KEYS = ["id", "kind", "needs", "when", "input", "retry", "timeout_ms", "continue_on_error"] as const;
const SCRIPT_KEYS = [...COMMON_KEYS, "language", "source", "trusted", "network", "env", "limits"] as const;
const PROCESSOR_KEYS = [...COMMON_KEYS, "processor", "options", "key"] as const;
const PLUGIN_KEYS = [...COMMON_KEYS, "plugin", "step"] as const;
const MAX_STEPS = 200;
const DAY_MS = 24 * 3_600_000;

const RETRY_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  default: {},
  properties: {
    max_attempts: { type: "integer", minimum: 1, maximum: 100, default: DEFAULT_RETRY.maxAttempts },
    backoff_ms: { type: "integer", minimum: 0, maximum: 3_600_000, default: DEFAULT_RETRY.backoffMs },
    factor: { type: "number", minimum: 1, maximum: 10, default: DEFAULT_RETRY.factor },
    max_backoff_ms: { type: "integer", minimum: 0, maximum: DAY_MS, default: DEFAULT_RETRY.maxBackoffMs },
  },
};

/**
 * Keys a step of `kind` may have (any other is an error naming the key), the ones it must
 * have, and the rules across its fields.
 */
const onlyFor = (kind: string, keys: readonly string[], required: Readonly<Record<string, JsonSchema>>, rules: readonly JsonSchema[] = []): JsonSchema => ({
  if: { properties: { kind: { const: kind } }, required: ["kind"] },
  then: { required: Object.keys(required), properties: required, propertyNames: { enum: [...keys] }, ...(rules.length ? { allOf: [...rules] } : {}) },
});
// A script step's fields are the script spec's (processors/), so what a definition accepts the runner runs;
// `envAllow` is not among them: which host variables pass through is the operator's to say, not a tenant's.
const { language: LANGUAGE, source: SOURCE, trusted: TRUSTED, network: NETWORK, env: ENV, limits: LIMITS } = SCRIPT_SPEC_FIELDS;
const PROCESSOR: JsonSchema = { type: "string", enum: [...BUILTIN_PROCESSORS.keys()], expected: `a built-in processor kind: ${[...BUILTIN_PROCESSORS.keys()].join(", ")}` };

const PLUGIN_NAME: JsonSchema = { type: "string", pattern: "^[a-z][a-z0-9-]{1,39}$", expected: "a plugin name of flexcore.yaml `plugins:` (a-z, 0-9, -)" };
const PLUGIN_STEP: JsonSchema = { type: "string", pattern: "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", expected: "one of the plugin's steps" };

const STEP_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  required: ["id", "kind"],
  expected: "a step object with `id` and `kind`",
  properties: {
    id: STEP_ID,
    kind: { type: "string", enum: [...STEP_KINDS], expected: `a step kind: ${STEP_KINDS.join(", ")}` },
    needs: { type: "array", items: { type: "string", minLength: 1, expected: "a step id" }, expected: "an array of step ids" },
    when: { type: "string", minLength: 1, expected: "a condition" },
    input: { description: "Input template (default: the run's input)." },
    retry: RETRY_SCHEMA,
    timeout_ms: { type: "integer", minimum: 1, maximum: DAY_MS },
    continue_on_error: { type: "boolean", default: false },
    language: LANGUAGE,
    source: SOURCE,
    trusted: TRUSTED,
    network: NETWORK,
    env: ENV,
    limits: LIMITS,
    processor: PROCESSOR,
    options: { type: "object" },
    key: { type: "string", minLength: 1, expected: "a key template" },
    plugin: PLUGIN_NAME,
    step: PLUGIN_STEP,
  },
  allOf: [onlyFor("script", SCRIPT_KEYS, { language: LANGUAGE, source: SOURCE }, [SCRIPT_SPEC_RULES]), onlyFor("processor", PROCESSOR_KEYS, { processor: PROCESSOR }), onlyFor("plugin", PLUGIN_KEYS, { plugin: PLUGIN_NAME, step: PLUGIN_STEP })],
};

const EVENT_TYPE: JsonSchema = { type: "string", minLength: 1, expected: "an event type" };
const EVENT_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  required: ["subject"],
  expected: "an event filter { subject, type } (or a `cron` schedule)",
  properties: {
    subject: { type: "string", minLength: 1, expected: "a subject filter such as evt.<tenant>.sensor.*" },
    type: EVENT_TYPE,
    types: { type: "array", minItems: 1, items: EVENT_TYPE, expected: "a non-empty array of event types" },
    ordered: { type: "boolean" },
  },
};

const TRIGGER_SCHEMA: JsonSchema = {
  type: "object",
  expected: '{ event: { subject, type } } or { cron: "* * * * *" }',
  if: { required: ["cron"] },
  then: {
    additionalProperties: false,
    properties: {
      cron: { type: "string", minLength: 1, expected: "a cron schedule" },
      timezone: { type: "string", minLength: 1, expected: 'an IANA time zone such as "Europe/Berlin"' },
    },
  },
  else: { additionalProperties: false, required: ["event"], properties: { event: EVENT_SCHEMA } },
};

/** The JSON Schema of a workflow definition (published as `schemas/workflow.schema.json`). */
export const WORKFLOW_SCHEMA: JsonSchema = {
  $schema: SCHEMA_DIALECT,
  title: "FlexCore workflow definition",
  type: "object",
  additionalProperties: false,
  required: ["name", "steps"],
  expected: "a workflow object { name, steps }",
  properties: {
    name: { type: "string", minLength: 1, expected: "a workflow name (a subject token of at most 64 bytes)" },
    description: { type: "string", minLength: 1 },
    triggers: { type: "array", items: TRIGGER_SCHEMA },
    steps: { type: "array", minItems: 1, maxItems: MAX_STEPS, items: STEP_SCHEMA, expected: `a non-empty array of steps (at most ${MAX_STEPS})` },
  },
};

interface RawStep {
  id: string;
  kind: "script" | "processor" | "plugin";
  needs?: string[];
  when?: string;
  input?: unknown;
  retry: { max_attempts: number; backoff_ms: number; factor: number; max_backoff_ms: number };
  timeout_ms?: number;
  continue_on_error: boolean;
  language: ScriptLanguage;
  source: string;
  trusted?: boolean;
  network?: boolean;
  env?: Record<string, string>;
  limits?: Partial<ScriptLimits>;
  processor: string;
  options?: unknown;
  key?: string;
  plugin: string;
  step: string;
}

type RawTrigger = { cron: string; timezone?: string } | { event: { subject: string; type?: string; types?: string[]; ordered?: boolean } };

interface RawDefinition {
  name: string;
  description?: string;
  triggers?: RawTrigger[];
  steps: RawStep[];
}

const validator = compileSchema<RawDefinition>(WORKFLOW_SCHEMA, "$");

function fail(path: string, message: string): never {
  throw new WorkflowDefinitionError(path || "$", message);
}

/** Parses YAML or JSON text (JSON is YAML) into a plain value. */
export function parseDefinitionText(text: string): unknown {
  if (typeof text !== "string") fail("$", `expected YAML or JSON text, got ${shown(text)}`);
  if (Buffer.byteLength(text) > MAX_DEFINITION_BYTES) fail("$", `the definition is over ${MAX_DEFINITION_BYTES} bytes`);
  try {
    return parseYaml(text, { maxAliasCount: 100 }) as unknown;
  } catch (err) {
    fail("$", `not valid YAML or JSON: ${(err as Error).message.split("\n")[0]}`);
  }
}

/** Options of {@link validateDefinition}. */
export interface ValidateOptions {
  /**
   * Accept `trusted: true` script steps. Only the operator's path sets it (the definition
   * files of `flexcore.yaml`, see `startWorkflows`); tenants' definitions never do.
   * @default false
   */
  readonly allowTrusted?: boolean;
  /**
   * The plugins of the runner: `plugin` steps must name one the tenant may use and one of
   * its steps. @default none: `plugin` steps are checked for their shape only (the CLI and
   * API clients that know no plugins; the runner checks again before it runs one)
   */
  readonly plugins?: PluginStepCatalog;
}

/**
 * Checks a workflow name: any subject token (letters of any script, digits, `+`, `:`, `/`,
 * `-`, `_`, ... but no `.`, `*`, `>`, whitespace or control characters), at most
 * {@link MAX_WORKFLOW_NAME_BYTES} bytes.
 * @throws WorkflowDefinitionError at `path`
 */
export function checkWorkflowName(name: unknown, path = "name"): string {
  if (typeof name !== "string" || name.length === 0) fail(path, `expected a non-empty string, got ${shown(name)}`);
  const n = name;
  try {
    checkToken(path, n);
  } catch (err) {
    fail(path, (err as Error).message);
  }
  if (Buffer.byteLength(n) > MAX_WORKFLOW_NAME_BYTES) fail(path, `expected at most ${MAX_WORKFLOW_NAME_BYTES} bytes, got ${shown(n)} (${Buffer.byteLength(n)} bytes)`);
  return n;
}

/** What the schema cannot check of a step: who may install trusted code, the processor's options. */
function step(o: RawStep, i: number, prev: string | undefined, options: ValidateOptions, tenant: string): StepDefinition {
  const path = `steps[${i}]`;
  const r = o.retry;
  const common = {
    id: o.id,
    needs: o.needs ?? (prev === undefined ? [] : [prev]),
    ...(o.when === undefined ? {} : { when: o.when }),
    ...(o.input === undefined ? {} : { input: o.input }),
    retry: { maxAttempts: r.max_attempts, backoffMs: r.backoff_ms, factor: r.factor, maxBackoffMs: r.max_backoff_ms },
    ...(o.timeout_ms === undefined ? {} : { timeoutMs: o.timeout_ms }),
    continueOnError: o.continue_on_error,
  };
  if (o.kind === "script") {
    const spec = { language: o.language, source: o.source, trusted: o.trusted ?? false, network: o.network ?? false, env: o.env ?? {}, ...(o.limits === undefined ? {} : { limits: o.limits }) };
    if (spec.trusted && !options.allowTrusted) {
      fail(`${path}.trusted`, "trusted steps run inside FlexCore with its rights, so only the operator installs them (a definition file listed in flexcore.yaml `workflows.definitions`); leave `trusted` out and the step runs in the sandbox");
    }
    return { kind: "script", ...common, ...spec };
  }
  if (o.kind === "plugin") {
    if (options.plugins) {
      if (!options.plugins.hasPlugin(o.plugin, tenant)) fail(`${path}.plugin`, `no plugin ${shown(o.plugin)} is available to this tenant (flexcore.yaml \`plugins:\` lists the system plugins and each tenant's own)`);
      if (!options.plugins.hasStep(o.plugin, o.step)) fail(`${path}.step`, `plugin ${shown(o.plugin)} has no step ${shown(o.step)}`);
    }
    return { kind: "plugin", ...common, plugin: o.plugin, step: o.step };
  }
  const def = BUILTIN_PROCESSORS.get(o.processor)!;
  try {
    def.validateOptions(o.options ?? {}, `${path}.options`);
  } catch (err) {
    const first = err instanceof ConfigError ? err.issues[0] : undefined;
    if (first) fail(first.path, first.message);
    fail(`${path}.options`, (err as Error).message);
  }
  return { kind: "processor", ...common, processor: o.processor, options: o.options ?? {}, ...(o.key === undefined ? {} : { key: o.key }) };
}

/** What the schema cannot check of a trigger: the cron syntax and time zone, the subject's tenant. */
function trigger(o: RawTrigger, i: number, tenant: string): TriggerDefinition {
  const path = `triggers[${i}]`;
  if ("cron" in o) {
    const timezone = o.timezone ?? "UTC";
    try {
      parseCron(o.cron, timezone);
    } catch (err) {
      if (!(err instanceof CronSyntaxError)) throw err;
      if (err.message.startsWith("timezone:")) fail(`${path}.timezone`, `${shown(timezone)} is not an IANA time zone (e.g. "UTC", "Europe/Berlin")`);
      fail(`${path}.cron`, `bad cron schedule ${shown(o.cron)}: ${err.message}`);
    }
    return { kind: "cron", schedule: o.cron, timezone };
  }
  const e = o.event;
  try {
    checkSubjectFilter(e.subject);
  } catch (err) {
    fail(`${path}.event.subject`, (err as Error).message);
  }
  const parts = e.subject.split(".");
  if (parts[0] !== "evt" || parts[1] !== tenant || parts.length < 3) fail(`${path}.event.subject`, `expected a filter inside the tenant's events, evt.${tenant}.<category>.<id> (wildcards allowed), got ${shown(e.subject)}`);
  if (parts[2] === "workflow") fail(`${path}.event.subject`, "workflow run events cannot trigger workflows (a run would trigger itself)");
  return { kind: "event", subject: e.subject, types: [...(e.type === undefined ? [] : [e.type]), ...(e.types ?? [])], ordered: e.ordered ?? false };
}

/**
 * Validates a definition (parsed YAML/JSON) for a tenant and returns it normalised and frozen.
 * @throws WorkflowDefinitionError naming the path
 */
export function validateDefinition(raw: unknown, tenant: string, options: ValidateOptions = {}): WorkflowDefinition {
  const { value: o, issues } = validator.check(raw, "");
  if (o === undefined || issues.length > 0) {
    const [first, ...more] = issues;
    fail(first!.path, `${first!.message}${more.length ? ` (and ${more.map((m) => `${m.path}: ${m.message}`).join("; ")})` : ""}`);
  }
  const name = checkWorkflowName(o.name);
  const description = o.description;
  const triggers = (o.triggers ?? []).map((t, i) => trigger(t, i, tenant));
  const steps: StepDefinition[] = [];
  const index = new Map<string, number>();
  o.steps.forEach((raw, i) => {
    const s = step(raw, i, steps[i - 1]?.id, options, tenant);
    if (index.has(s.id)) fail(`steps[${i}].id`, `duplicate step id \`${s.id}\` (also steps[${index.get(s.id)}])`);
    index.set(s.id, i);
    steps.push(s);
  });
  // Every need exists, and the needs form no cycle.
  steps.forEach((s, i) => s.needs.forEach((n, j) => {
    if (!index.has(n)) fail(`steps[${i}].needs[${j}]`, `names a missing step \`${n}\``);
    if (n === s.id) fail(`steps[${i}].needs[${j}]`, "a step cannot need itself");
  }));
  const state = new Map<string, 1 | 2>();
  const visit = (id: string, trail: string[]): void => {
    if (state.get(id) === 2) return;
    if (state.get(id) === 1) {
      const cycle = [...trail.slice(trail.indexOf(id)), id];
      fail(`steps[${index.get(id)}].needs`, `the needs form a cycle: ${cycle.join(" -> ")}`);
    }
    state.set(id, 1);
    for (const n of steps[index.get(id)!]!.needs) visit(n, [...trail, id]);
    state.set(id, 2);
  };
  for (const s of steps) visit(s.id, []);
  // Templates read only steps that end before this one.
  const ancestors = (id: string, acc = new Set<string>()): Set<string> => {
    for (const n of steps[index.get(id)!]!.needs) if (!acc.has(n)) ancestors(n, acc.add(n));
    return acc;
  };
  steps.forEach((s, i) => {
    const before = ancestors(s.id);
    const check = (refs: Set<string>, where: string): void => {
      for (const r of refs) {
        if (!index.has(r)) fail(where, `the template names a missing step \`${r}\``);
        if (!before.has(r)) fail(where, `the template reads step \`${r}\`, which is not among this step's needs (directly or through them)`);
      }
    };
    const scan = (value: unknown, where: string): void => {
      try {
        scanTemplate(value, (node, sub) => check(stepRefs(node), `${where}${sub}`));
      } catch (err) {
        if (err instanceof ExpressionError) fail(where, err.message);
        throw err;
      }
    };
    if (s.input !== undefined) scan(s.input, `steps[${i}].input`);
    if (s.kind === "script") scan(s.env, `steps[${i}].env`);
    if (s.kind === "processor" && s.key !== undefined) scan(s.key, `steps[${i}].key`);
    if (s.when !== undefined) {
      try {
        check(stepRefs(parseCondition(s.when)), `steps[${i}].when`);
      } catch (err) {
        if (err instanceof ExpressionError) fail(`steps[${i}].when`, err.message);
        throw err;
      }
    }
  });
  return deepFreeze({ name, ...(description ? { description } : {}), triggers, steps });
}

function deepFreeze<T>(v: T): T {
  if (v && typeof v === "object") {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}

/** Delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed. */
export function backoffDelay(policy: RetryPolicy, attempt: number): number {
  return Math.min(policy.maxBackoffMs, Math.round(policy.backoffMs * policy.factor ** (attempt - 1)));
}
