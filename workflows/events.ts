/**
 * The events of a workflow run on `evt.<tenant>.workflow.<runId>`. Types and the fields read
 * by the `workflow_history` read model follow `projections/events.ts` (same names, same
 * meaning); workflows may not import projections (DESIGN.md arrows), so the constants are
 * repeated here. Extra fields (`result`, `input`, logs) are what a runner needs to resume a
 * run and what `flexcore workflows logs` prints; the read model ignores them.
 */

/** Subject category of runs. */
export const WORKFLOW_CATEGORY = "workflow";

export const RUN_EVENTS = {
  runStarted: "RunStarted",
  stepStarted: "StepStarted",
  stepSucceeded: "StepSucceeded",
  stepFailed: "StepFailed",
  /** A step whose `when` was false. Not read by `workflow_history`. */
  stepSkipped: "StepSkipped",
  runSucceeded: "RunSucceeded",
  runFailed: "RunFailed",
  runCancelled: "RunCancelled",
} as const;

/** Longest summary written to `output` / error messages, as in the read model. */
export const MAX_SUMMARY_CHARS = 1_024;
/** stdout / stderr kept in a step's events, each. */
export const MAX_EVENT_LOG_CHARS = 16 * 1024;

export interface ErrorInfo {
  readonly message: string;
  readonly code?: string;
}

/** What started a run. */
export type TriggerInfo =
  | { readonly kind: "manual"; readonly by?: string }
  | { readonly kind: "event"; readonly subject: string; readonly type: string; readonly id: string; readonly seq: number; readonly key: string; readonly time: string; readonly data: unknown }
  | { readonly kind: "cron"; readonly schedule: string; readonly time: string };

export interface RunStartedData {
  readonly runId: string;
  readonly workflow: string;
  readonly version: number;
  readonly tenant: string;
  /** `manual`, `schedule`, `event:<type>` (read-model field). */
  readonly trigger: string;
  readonly triggerInfo: TriggerInfo;
  readonly input: unknown;
  /** The definition that runs, so a later version does not change a started run. */
  readonly definition: unknown;
  /** Run of the same key that must end before this one starts a step (ordered event triggers). */
  readonly after?: string;
}

export interface StepStartedData {
  readonly runId: string;
  readonly step: string;
  readonly attempt: number;
  /** The runner instance that claimed it. */
  readonly runner: string;
}

export interface StepSucceededData {
  readonly runId: string;
  readonly step: string;
  readonly attempt: number;
  /** Summary for people (≤ 1024 characters). */
  readonly output: string;
  /** The step's JSON output, used by later steps' templates. */
  readonly result: unknown;
  readonly durationMs: number;
  readonly stdout?: string;
  readonly stderr?: string;
  readonly exitCode?: number | null;
}

export interface StepFailedData {
  readonly runId: string;
  readonly step: string;
  readonly attempt: number;
  readonly error: ErrorInfo;
  readonly willRetry: boolean;
  /** When the next attempt may start (ms since the epoch), with `willRetry`. */
  readonly retryAt?: number;
  /** The attempt was cut off by a lost runner; it does not count against `retry.max_attempts`. */
  readonly interrupted?: boolean;
  readonly durationMs?: number;
  readonly stdout?: string;
  readonly stderr?: string;
  readonly exitCode?: number | null;
}

export interface StepSkippedData {
  readonly runId: string;
  readonly step: string;
  readonly reason: string;
}

export interface RunSucceededData {
  readonly runId: string;
  readonly output: string;
  readonly result: unknown;
}

export interface RunFailedData {
  readonly runId: string;
  readonly error: ErrorInfo;
  readonly step?: string;
}

export interface RunCancelledData {
  readonly runId: string;
  readonly reason?: string;
  readonly by?: string;
}

/** A short text of a JSON value for summaries. */
export function summarize(value: unknown, max = MAX_SUMMARY_CHARS): string {
  let text: string;
  try {
    text = typeof value === "string" ? value : (JSON.stringify(value) ?? "null");
  } catch {
    text = String(value);
  }
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}

export function clipLog(text: string): string {
  return text.length > MAX_EVENT_LOG_CHARS ? `${text.slice(0, MAX_EVENT_LOG_CHARS)}\n[... ${text.length - MAX_EVENT_LOG_CHARS} more characters]` : text;
}
