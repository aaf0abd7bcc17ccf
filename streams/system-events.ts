/**
 * Schemas of the system events: workflow runs, plugin lifecycle and runtime metrics. The
 * areas that emit them (workflows, plugins, processors) and the built-in read models that
 * fold them (`workflow_history`, `plugin_status`, `performance_metrics`, see
 * docs/projections.md) share this one vocabulary, which lives here because every area
 * depends on `streams/` and on nothing else in common. They are ordinary events: the
 * event type is `Flex-Type`, the interface is the JSON data; emitters may add fields.
 *
 * The subject decides the tenant and the aggregate: a tenant field inside the data never
 * overrides the subject's tenant token.
 */

/** Subject category of workflow runs: `evt.<tenant>.workflow.<runId>`. */
export const WORKFLOW_CATEGORY = "workflow";
/** Subject category of plugin lifecycle events: `evt._system.plugin.<name>` (or a tenant's own plugins). */
export const PLUGIN_CATEGORY = "plugin";
/** Subject category of metrics reports: `evt._system.metrics.<component>`. */
export const METRICS_CATEGORY = "metrics";
/**
 * Categories only FlexCore's own components append to: workflow runs, plugin lifecycle and
 * metrics reports. The gateway refuses writes to them (`FLEX_CATEGORY_RESERVED`), and the
 * components that read them never take a tenant or code from what such an event says.
 */
export const RESERVED_CATEGORIES: readonly string[] = Object.freeze([WORKFLOW_CATEGORY, PLUGIN_CATEGORY, METRICS_CATEGORY]);

/** Whether a category is one FlexCore writes itself ({@link RESERVED_CATEGORIES}). */
export function isReservedCategory(category: string): boolean {
  return RESERVED_CATEGORIES.includes(category);
}

/** Event types of a workflow run, on `evt.<tenant>.workflow.<runId>`. */
export const WORKFLOW_EVENT_TYPES = {
  runStarted: "RunStarted",
  stepStarted: "StepStarted",
  stepSucceeded: "StepSucceeded",
  stepFailed: "StepFailed",
  stepSkipped: "StepSkipped",
  runSucceeded: "RunSucceeded",
  runFailed: "RunFailed",
  runCancelled: "RunCancelled",
} as const;

/** Event types of a plugin's lifecycle, on `evt._system.plugin.<name>`. */
export const PLUGIN_EVENT_TYPES = {
  loaded: "PluginLoaded",
  started: "PluginStarted",
  failed: "PluginFailed",
  stopped: "PluginStopped",
  health: "PluginHealth",
} as const;

/** Event types of runtime metrics, on `evt._system.metrics.<component>`. */
export const METRICS_EVENT_TYPES = {
  reported: "MetricsReported",
} as const;

/** An error as carried by events: a message and, for FlexCore errors, the code. */
export interface ErrorInfo {
  readonly message: string;
  readonly code?: string;
}

/** Longest output summary / error message the read models keep, in characters. */
export const MAX_SUMMARY_CHARS = 1_024;

/** `RunStarted`: a workflow run began. Its time is the event's `Flex-Time`. */
export interface RunStarted {
  /** Same as the subject's last token. */
  readonly runId: string;
  /** Workflow (definition) name. */
  readonly workflow: string;
  /** Definition version that runs. */
  readonly version: number | string;
  /** The run's tenant; the subject's tenant token is authoritative. */
  readonly tenant: string;
  /** What started it: `manual`, `schedule`, `event:<type>`, ... */
  readonly trigger?: string;
}

/** `StepStarted`: one attempt of a step began. */
export interface StepStarted {
  readonly runId: string;
  readonly step: string;
  /** 1 for the first attempt. */
  readonly attempt: number;
}

/** `StepSucceeded`: the step's attempt finished. */
export interface StepSucceeded {
  readonly runId: string;
  readonly step: string;
  readonly attempt: number;
  /** A short description of the output (kept up to 1024 characters), not the output itself. */
  readonly output?: string;
  readonly durationMs?: number;
}

/** `StepFailed`: the step's attempt failed. */
export interface StepFailed {
  readonly runId: string;
  readonly step: string;
  readonly attempt: number;
  readonly error: ErrorInfo;
  /** Whether another attempt follows. */
  readonly willRetry: boolean;
  readonly durationMs?: number;
}

/** `StepSkipped`: the step did not run (its condition was false, or a step it needs failed). */
export interface StepSkipped {
  readonly runId: string;
  readonly step: string;
  readonly reason?: string;
}

/** `RunSucceeded`: the run finished. */
export interface RunSucceeded {
  readonly runId: string;
  /** A short description of the result. */
  readonly output?: string;
}

/** `RunFailed`: the run ended with an error. */
export interface RunFailed {
  readonly runId: string;
  readonly error: ErrorInfo;
  /** The step that failed it, if one did. */
  readonly step?: string;
}

/** `RunCancelled`: the run was cancelled. */
export interface RunCancelled {
  readonly runId: string;
  readonly reason?: string;
  /** Who cancelled (user id or `system`). */
  readonly by?: string;
}

/** `PluginLoaded`: the manifest was read and the code loaded. */
export interface PluginLoaded {
  /** Plugin name; the subject's last token when absent. */
  readonly plugin: string;
  readonly version: string;
}

/** `PluginStarted`: the plugin runs (again, after a failure or stop: counted as a restart). */
export interface PluginStarted {
  readonly plugin: string;
  readonly version?: string;
}

/** `PluginFailed`: the plugin crashed or failed to start. */
export interface PluginFailed {
  readonly plugin: string;
  readonly error: ErrorInfo;
  /** Whether the host restarts it. */
  readonly willRestart?: boolean;
}

/** `PluginStopped`: the plugin was stopped on purpose. */
export interface PluginStopped {
  readonly plugin: string;
  readonly reason?: string;
  /** The version stopped (an upgrade stops the old one after the new one started; `plugin_status` ignores a stop of a version it no longer shows). */
  readonly version?: string;
}

/** `PluginHealth`: the result of a health check. */
export interface PluginHealth {
  readonly plugin: string;
  readonly ok: boolean;
  readonly detail?: string;
  readonly latencyMs?: number;
}

/** What kind of component reports metrics. */
export type ComponentKind = "processor" | "projection" | "gateway_route" | "workflow" | "plugin";

/**
 * `MetricsReported`: one component's figures for one UTC minute. Several reports of the
 * same component and minute (several instances) are merged: counts and throughput add
 * up, latency percentiles are averaged weighted by count (an approximation).
 */
export interface MetricsReported {
  /** Free text, e.g. `anomaly`, `pipeline_summary`, `GET /v1/projections/:name`. */
  readonly component: string;
  readonly kind: ComponentKind;
  /** Start of the minute, RFC 3339 (`2026-01-01T10:04:00Z`). */
  readonly minute: string;
  /** Operations (events, requests) completed in the minute. */
  readonly count: number;
  /** Of which failed. */
  readonly errors: number;
  /** Latency percentiles in ms; null when nothing completed in the minute. */
  readonly p50Ms: number | null;
  readonly p95Ms: number | null;
  readonly p99Ms: number | null;
  /** Operations per second over the minute. */
  readonly throughput: number;
}
