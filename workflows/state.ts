import type { StoredEvent } from "../streams/index.js";
import type { WorkflowDefinition } from "./definition.js";
import { RUN_EVENTS } from "./events.js";
import type { ErrorInfo, RunStartedData, StepFailedData, StepStartedData, StepSucceededData, TriggerInfo } from "./events.js";

export type StepStatus = "pending" | "running" | "retrying" | "succeeded" | "failed" | "skipped";
export type RunStatus = "running" | "succeeded" | "failed" | "cancelled";

/** One step of a run, as folded from its events. */
export interface StepState {
  readonly id: string;
  status: StepStatus;
  /** Attempts started so far. */
  attempt: number;
  /** Attempts that failed (interrupted ones excluded): what `retry.max_attempts` counts. */
  failures: number;
  output: unknown;
  error: ErrorInfo | undefined;
  /** With `retrying`: when the next attempt may start (ms since the epoch). */
  retryAt: number | undefined;
  runner: string | undefined;
  durationMs: number | undefined;
  /** How many StepSucceeded events the step has: more than 1 would be a bug. */
  successes: number;
}

/** A run, as folded from `evt.<tenant>.workflow.<runId>`. */
export interface RunState {
  readonly runId: string;
  tenant: string;
  workflow: string;
  version: number;
  definition: WorkflowDefinition | undefined;
  input: unknown;
  trigger: TriggerInfo | undefined;
  status: RunStatus;
  steps: Record<string, StepState>;
  startedAt: string | undefined;
  endedAt: string | undefined;
  error: ErrorInfo | undefined;
  output: unknown;
  /** Events folded: the revision to expect on the next append. */
  revision: number;
  /** Run that must end before this one starts a step. */
  after: string | undefined;
}

/** The state before any event; `tenant` is the tenant of the run's subject. */
export function initialRunState(runId: string, tenant = ""): RunState {
  return { runId, tenant, workflow: "", version: 0, definition: undefined, input: null, trigger: undefined, status: "running", steps: {}, startedAt: undefined, endedAt: undefined, error: undefined, output: null, revision: 0, after: undefined };
}

function stepOf(s: RunState, id: string): StepState {
  let st = s.steps[id];
  if (!st) {
    st = { id, status: "pending", attempt: 0, failures: 0, output: null, error: undefined, retryAt: undefined, runner: undefined, durationMs: undefined, successes: 0 };
    s.steps[id] = st;
  }
  return st;
}

/** Folds one event into the state (mutating it) and returns it. */
export function applyRunEvent(s: RunState, e: Pick<StoredEvent, "type" | "data" | "time" | "revision">): RunState {
  s.revision = e.revision ?? s.revision + 1;
  const d = (e.data ?? {}) as Record<string, unknown>;
  switch (e.type) {
    case RUN_EVENTS.runStarted: {
      // Only the run's first event starts it: a RunStarted appended later changes nothing.
      // The tenant is the subject's and the definition is loaded by name and version
      // (attachDefinition): neither comes from the data.
      if (s.revision !== 1) break;
      const r = d as unknown as RunStartedData;
      s.workflow = typeof r.workflow === "string" ? r.workflow : "";
      s.version = typeof r.version === "number" && Number.isInteger(r.version) ? r.version : 0;
      s.input = r.input ?? null;
      s.trigger = r.triggerInfo;
      s.startedAt = e.time;
      s.after = typeof r.after === "string" ? r.after : undefined;
      break;
    }
    case RUN_EVENTS.stepStarted: {
      const r = d as unknown as StepStartedData;
      const st = stepOf(s, r.step);
      st.status = "running";
      st.attempt = r.attempt;
      st.runner = r.runner;
      st.retryAt = undefined;
      break;
    }
    case RUN_EVENTS.stepSucceeded: {
      const r = d as unknown as StepSucceededData;
      const st = stepOf(s, r.step);
      st.status = "succeeded";
      st.output = r.result ?? null;
      st.durationMs = r.durationMs;
      st.error = undefined;
      st.successes += 1;
      break;
    }
    case RUN_EVENTS.stepFailed: {
      const r = d as unknown as StepFailedData;
      const st = stepOf(s, r.step);
      if (!r.interrupted) st.failures += 1;
      st.error = r.error;
      st.durationMs = r.durationMs;
      st.status = r.willRetry ? "retrying" : "failed";
      st.retryAt = r.willRetry ? (r.retryAt ?? 0) : undefined;
      st.output = null;
      break;
    }
    case RUN_EVENTS.stepSkipped:
      stepOf(s, String(d.step)).status = "skipped";
      break;
    case RUN_EVENTS.runSucceeded:
      s.status = "succeeded";
      s.output = d.result ?? null;
      s.endedAt = e.time;
      break;
    case RUN_EVENTS.runFailed:
      s.status = "failed";
      s.error = d.error as ErrorInfo;
      s.endedAt = e.time;
      break;
    case RUN_EVENTS.runCancelled:
      if (s.status === "running") {
        s.status = "cancelled";
        s.error = { message: typeof d.reason === "string" ? d.reason : "cancelled" };
        s.endedAt = e.time;
      }
      break;
    default:
      break;
  }
  return s;
}

/** Sets the run's definition (loaded by the runner) and lists its steps not yet started as pending. */
export function attachDefinition(s: RunState, definition: WorkflowDefinition): RunState {
  s.definition = definition;
  for (const step of definition.steps) stepOf(s, step.id);
  return s;
}

/** Whether a run status is final. */
export function isTerminal(status: RunStatus): boolean {
  return status !== "running";
}

/** Template context of a step: trigger, input, earlier steps' outputs and statuses, run facts. */
export function templateContext(s: RunState): Record<string, unknown> {
  const steps: Record<string, unknown> = {};
  for (const [id, st] of Object.entries(s.steps)) steps[id] = { output: st.output, status: st.status, attempts: st.attempt, error: st.error?.message ?? null };
  const trigger = s.trigger ?? { kind: "manual" };
  return {
    trigger: trigger.kind === "event" ? trigger : { ...trigger, data: s.input },
    input: s.input,
    steps,
    run: { id: s.runId, workflow: s.workflow, version: s.version, tenant: s.tenant },
  };
}
