import { parse as parseYaml } from "yaml";
import { BUILTIN_PROCESSORS, SCRIPT_LANGUAGES, validateScriptSpec } from "../processors/index.js";
import type { ScriptLanguage, ScriptLimits } from "../processors/index.js";
import { checkSubjectFilter, checkToken, describeValue } from "../streams/index.js";
import { CronSyntaxError, parseCron } from "./cron.js";
import { StepKindUnavailableError, WorkflowDefinitionError } from "./errors.js";
import { ExpressionError, parseCondition, scanTemplate, stepRefs } from "./template.js";

/** Step kinds of the schema; `plugin` is recognised but not available until the plugin host lands. */
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

export type StepDefinition = ScriptStepDefinition | ProcessorStepDefinition;

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

type Obj = Record<string, unknown>;

function fail(path: string, message: string): never {
  throw new WorkflowDefinitionError(path, message);
}

function obj(v: unknown, path: string, what: string): Obj {
  if (v === null || typeof v !== "object" || Array.isArray(v)) fail(path, `expected ${what}, got ${describeValue(v)}`);
  return v as Obj;
}

function onlyKeys(o: Obj, path: string, allowed: readonly string[]): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) fail(`${path}.${k}`, `unknown key \`${k}\`; expected one of ${allowed.join(", ")}`);
}

function str(v: unknown, path: string, what = "a non-empty string"): string {
  if (typeof v !== "string" || v.length === 0) fail(path, `expected ${what}, got ${describeValue(v)}`);
  return v;
}

function int(v: unknown, path: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) fail(path, `expected an integer from ${min} to ${max}, got ${describeValue(v)}`);
  return v;
}

function bool(v: unknown, path: string): boolean {
  if (typeof v !== "boolean") fail(path, `expected true or false, got ${describeValue(v)}`);
  return v;
}

/** Parses YAML or JSON text (JSON is YAML) into a plain value. */
export function parseDefinitionText(text: string): unknown {
  if (typeof text !== "string") fail("$", `expected YAML or JSON text, got ${describeValue(text)}`);
  if (Buffer.byteLength(text) > MAX_DEFINITION_BYTES) fail("$", `the definition is over ${MAX_DEFINITION_BYTES} bytes`);
  try {
    return parseYaml(text, { maxAliasCount: 100 }) as unknown;
  } catch (err) {
    fail("$", `not valid YAML or JSON: ${(err as Error).message.split("\n")[0]}`);
  }
}

function retry(v: unknown, path: string): RetryPolicy {
  if (v === undefined) return DEFAULT_RETRY;
  const o = obj(v, path, "an object { max_attempts, backoff_ms, factor, max_backoff_ms }");
  onlyKeys(o, path, ["max_attempts", "backoff_ms", "factor", "max_backoff_ms"]);
  const factor = o.factor === undefined ? DEFAULT_RETRY.factor : o.factor;
  if (typeof factor !== "number" || !(factor >= 1 && factor <= 10)) fail(`${path}.factor`, `expected a number from 1 to 10, got ${describeValue(factor)}`);
  return {
    maxAttempts: o.max_attempts === undefined ? DEFAULT_RETRY.maxAttempts : int(o.max_attempts, `${path}.max_attempts`, 1, 100),
    backoffMs: o.backoff_ms === undefined ? DEFAULT_RETRY.backoffMs : int(o.backoff_ms, `${path}.backoff_ms`, 0, 3_600_000),
    factor,
    maxBackoffMs: o.max_backoff_ms === undefined ? DEFAULT_RETRY.maxBackoffMs : int(o.max_backoff_ms, `${path}.max_backoff_ms`, 0, 24 * 3_600_000),
  };
}

const COMMON_KEYS = ["id", "kind", "needs", "when", "input", "retry", "timeout_ms", "continue_on_error"] as const;

/** Options of {@link validateDefinition}. */
export interface ValidateOptions {
  /**
   * Accept `trusted: true` script steps. Only the operator's path sets it (the definition
   * files of `flexcore.yaml`, see `startWorkflows`); tenants' definitions never do.
   * @default false
   */
  readonly allowTrusted?: boolean;
}

/**
 * Checks a workflow name: any subject token (letters of any script, digits, `+`, `:`, `/`,
 * `-`, `_`, ... but no `.`, `*`, `>`, whitespace or control characters), at most
 * {@link MAX_WORKFLOW_NAME_BYTES} bytes.
 * @throws WorkflowDefinitionError at `path`
 */
export function checkWorkflowName(name: unknown, path = "name"): string {
  const n = str(name, path);
  try {
    checkToken(path, n);
  } catch (err) {
    fail(path, (err as Error).message);
  }
  if (Buffer.byteLength(n) > MAX_WORKFLOW_NAME_BYTES) fail(path, `expected at most ${MAX_WORKFLOW_NAME_BYTES} bytes, got ${describeValue(n)}`);
  return n;
}

function step(raw: unknown, i: number, prev: string | undefined, options: ValidateOptions): StepDefinition {
  const path = `steps[${i}]`;
  const o = obj(raw, path, "a step object with `id` and `kind`");
  const id = str(o.id, `${path}.id`);
  if (!NAME_PATTERN.test(id)) fail(`${path}.id`, `expected letters, digits, _ or - (at most 64), got ${describeValue(id)}`);
  const kind = o.kind;
  if (!(STEP_KINDS as readonly unknown[]).includes(kind)) fail(`${path}.kind`, `unknown step kind ${describeValue(kind)}; expected one of ${STEP_KINDS.join(", ")}`);
  if (kind === "plugin") throw new StepKindUnavailableError(`${path}.kind`, "plugin", "plugin steps arrive with the plugin host; use a script or processor step");
  let needs: string[];
  if (o.needs === undefined) needs = prev === undefined ? [] : [prev];
  else {
    if (!Array.isArray(o.needs)) fail(`${path}.needs`, `expected an array of step ids, got ${describeValue(o.needs)}`);
    needs = o.needs.map((n, j) => str(n, `${path}.needs[${j}]`, "a step id"));
  }
  const common = {
    id,
    needs,
    ...(o.when === undefined ? {} : { when: str(o.when, `${path}.when`, "a condition") }),
    ...(o.input === undefined ? {} : { input: o.input }),
    retry: retry(o.retry, `${path}.retry`),
    ...(o.timeout_ms === undefined ? {} : { timeoutMs: int(o.timeout_ms, `${path}.timeout_ms`, 1, 24 * 3_600_000) }),
    continueOnError: o.continue_on_error === undefined ? false : bool(o.continue_on_error, `${path}.continue_on_error`),
  };
  if (kind === "script") {
    onlyKeys(o, path, [...COMMON_KEYS, "language", "source", "trusted", "network", "env", "limits"]);
    if (!(SCRIPT_LANGUAGES as readonly unknown[]).includes(o.language)) fail(`${path}.language`, `expected one of ${SCRIPT_LANGUAGES.join(", ")}, got ${describeValue(o.language)}`);
    const spec = {
      language: o.language as ScriptLanguage,
      source: str(o.source, `${path}.source`, "the script's code"),
      trusted: o.trusted === undefined ? false : bool(o.trusted, `${path}.trusted`),
      network: o.network === undefined ? false : bool(o.network, `${path}.network`),
      env: (o.env ?? {}) as Record<string, string>,
      ...(o.limits === undefined ? {} : { limits: o.limits as Partial<ScriptLimits> }),
    };
    if (spec.trusted && !options.allowTrusted) {
      fail(`${path}.trusted`, "trusted steps run inside FlexCore with its rights, so only the operator installs them (a definition file listed in flexcore.yaml `workflows.definitions`); leave `trusted` out and the step runs in the sandbox");
    }
    try {
      validateScriptSpec(spec, path);
    } catch (err) {
      const field = (err as { field?: string }).field ?? path;
      fail(field, (err as Error).message);
    }
    return { kind: "script", ...common, ...spec };
  }
  onlyKeys(o, path, [...COMMON_KEYS, "processor", "options", "key"]);
  const name = str(o.processor, `${path}.processor`, "a built-in processor kind");
  const def = BUILTIN_PROCESSORS.get(name);
  if (!def) fail(`${path}.processor`, `unknown processor ${describeValue(name)}; built-in kinds: ${[...BUILTIN_PROCESSORS.keys()].join(", ")}`);
  try {
    def.validateOptions(o.options ?? {}, `${path}.options`);
  } catch (err) {
    fail(`${path}.options`, (err as Error).message);
  }
  return { kind: "processor", ...common, processor: name, options: o.options ?? {}, ...(o.key === undefined ? {} : { key: str(o.key, `${path}.key`, "a key template") }) };
}

function trigger(raw: unknown, i: number, tenant: string): TriggerDefinition {
  const path = `triggers[${i}]`;
  const o = obj(raw, path, "{ event: { subject, type } } or { cron: \"* * * * *\" }");
  if ("cron" in o) {
    onlyKeys(o, path, ["cron", "timezone"]);
    const schedule = str(o.cron, `${path}.cron`, "a cron schedule");
    const timezone = o.timezone === undefined ? "UTC" : str(o.timezone, `${path}.timezone`, "an IANA time zone such as \"Europe/Berlin\"");
    try {
      parseCron(schedule, timezone);
    } catch (err) {
      if (!(err instanceof CronSyntaxError)) throw err;
      if (err.message.startsWith("timezone:")) fail(`${path}.timezone`, `${describeValue(timezone)} is not an IANA time zone (e.g. "UTC", "Europe/Berlin")`);
      fail(`${path}.cron`, `bad cron schedule ${describeValue(schedule)}: ${err.message}`);
    }
    return { kind: "cron", schedule, timezone };
  }
  if ("event" in o) {
    onlyKeys(o, path, ["event"]);
    const e = obj(o.event, `${path}.event`, "{ subject, type }");
    onlyKeys(e, `${path}.event`, ["subject", "type", "types", "ordered"]);
    const subject = str(e.subject, `${path}.event.subject`, "a subject filter such as evt.<tenant>.sensor.*");
    try {
      checkSubjectFilter(subject);
    } catch (err) {
      fail(`${path}.event.subject`, (err as Error).message);
    }
    const parts = subject.split(".");
    if (parts[0] !== "evt" || parts[1] !== tenant || parts.length < 3) fail(`${path}.event.subject`, `expected a filter inside the tenant's events, evt.${tenant}.<category>.<id> (wildcards allowed), got ${describeValue(subject)}`);
    if (parts[2] === "workflow") fail(`${path}.event.subject`, "workflow run events cannot trigger workflows (a run would trigger itself)");
    let types: string[] = [];
    if (e.type !== undefined) types = [str(e.type, `${path}.event.type`, "an event type")];
    if (e.types !== undefined) {
      if (!Array.isArray(e.types) || e.types.length === 0) fail(`${path}.event.types`, "expected a non-empty array of event types");
      types = [...types, ...e.types.map((t, j) => str(t, `${path}.event.types[${j}]`, "an event type"))];
    }
    return { kind: "event", subject, types, ordered: e.ordered === undefined ? false : bool(e.ordered, `${path}.event.ordered`) };
  }
  fail(path, "expected `event` or `cron`");
}

/**
 * Validates a definition (parsed YAML/JSON) for a tenant and returns it normalised and frozen.
 * @throws WorkflowDefinitionError naming the path; StepKindUnavailableError for `plugin` steps
 */
export function validateDefinition(raw: unknown, tenant: string, options: ValidateOptions = {}): WorkflowDefinition {
  const o = obj(raw, "$", "a workflow object { name, steps }");
  onlyKeys(o, "$", ["name", "description", "triggers", "steps"]);
  const name = checkWorkflowName(o.name);
  const description = o.description === undefined ? undefined : str(o.description, "description");
  if (o.triggers !== undefined && !Array.isArray(o.triggers)) fail("triggers", `expected an array, got ${describeValue(o.triggers)}`);
  const triggers = ((o.triggers as unknown[] | undefined) ?? []).map((t, i) => trigger(t, i, tenant));
  if (!Array.isArray(o.steps) || o.steps.length === 0) fail("steps", `expected a non-empty array of steps, got ${describeValue(o.steps)}`);
  if (o.steps.length > 200) fail("steps", "at most 200 steps");
  const steps: StepDefinition[] = [];
  const index = new Map<string, number>();
  o.steps.forEach((raw, i) => {
    const s = step(raw, i, steps[i - 1]?.id, options);
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
