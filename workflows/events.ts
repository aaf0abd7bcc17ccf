/**
 * The events of a workflow run on `evt.<tenant>.workflow.<runId>`. Their types and the
 * fields the `workflow_history` read model reads are the shared schemas in `streams/`
 * (`WORKFLOW_EVENT_TYPES`, `RunStarted`, ...); each `...Data` here extends its schema with
 * what a runner needs to resume a run and what `flexcore workflows logs` prints
 * (`result`, `input`, logs), which the read model ignores.
 */
import { MAX_SUMMARY_CHARS, WORKFLOW_CATEGORY, WORKFLOW_EVENT_TYPES } from "../streams/index.js";
import type {
  ErrorInfo,
  RunCancelled,
  RunFailed,
  RunStarted,
  RunSucceeded,
  StepFailed,
  StepSkipped,
  StepStarted,
  StepSucceeded,
} from "../streams/index.js";

export { MAX_SUMMARY_CHARS, WORKFLOW_CATEGORY };
export type { ErrorInfo };

/** Run event types (`stepSkipped`: a step whose `when` was false). */
export const RUN_EVENTS = WORKFLOW_EVENT_TYPES;

/** stdout / stderr kept in a step's events, each. */
export const MAX_EVENT_LOG_CHARS = 16 * 1024;

/** What started a run. */
export type TriggerInfo =
  | { readonly kind: "manual"; readonly by?: string }
  | { readonly kind: "event"; readonly subject: string; readonly type: string; readonly id: string; readonly seq: number; readonly key: string; readonly time: string; readonly data: unknown }
  | { readonly kind: "cron"; readonly schedule: string; readonly time: string };

/**
 * RunStarted names the definition by reference: the runner loads `workflow` at `version`
 * from the definition store of the subject's tenant. Nothing else in it decides what runs:
 * a `definition` or `tenant` in the data is ignored (the tenant is the subject's), and a
 * RunStarted after the run's first event is ignored.
 */
export interface RunStartedData extends RunStarted {
  readonly runId: string;
  readonly workflow: string;
  readonly version: number;
  /** For people and the read model; the subject's tenant is the run's tenant. */
  readonly tenant: string;
  /** `manual`, `schedule`, `event:<type>` (read-model field). */
  readonly trigger: string;
  readonly triggerInfo: TriggerInfo;
  readonly input: unknown;
  /** Run of the same key that must end before this one starts a step (ordered event triggers). */
  readonly after?: string;
}

export interface StepStartedData extends StepStarted {
  readonly runId: string;
  readonly step: string;
  readonly attempt: number;
  /** The runner instance that claimed it. */
  readonly runner: string;
}

export interface StepSucceededData extends StepSucceeded {
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

export interface StepFailedData extends StepFailed {
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

export interface StepSkippedData extends StepSkipped {
  readonly runId: string;
  readonly step: string;
  readonly reason: string;
}

export interface RunSucceededData extends RunSucceeded {
  readonly runId: string;
  readonly output: string;
  readonly result: unknown;
}

export interface RunFailedData extends RunFailed {
  readonly runId: string;
  readonly error: ErrorInfo;
  readonly step?: string;
}

export interface RunCancelledData extends RunCancelled {
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
