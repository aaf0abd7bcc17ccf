import { FlexError } from "../streams/index.js";

/** A workflow definition does not match the schema. Nothing was stored. */
export class WorkflowDefinitionError extends FlexError {
  /** Where in the definition: `steps[2].needs[0]`, `triggers[0].cron`, ... */
  readonly path: string;
  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super("FLEX_WORKFLOW_INVALID", `Invalid workflow definition at \`${path}\`: ${message}`, options);
    this.name = "WorkflowDefinitionError";
    this.path = path;
  }

  /** The path, under the name the gateway reports a bad field by (`details.field`). */
  get field(): string {
    return this.path;
  }
}

/** A step kind FlexCore knows but cannot run yet (`plugin` until the plugin host lands). */
export class StepKindUnavailableError extends FlexError {
  readonly path: string;
  readonly kind: string;
  constructor(path: string, kind: string, why: string) {
    super("FLEX_STEP_KIND_UNAVAILABLE", `Step kind \`${kind}\` at \`${path}\` is not available yet: ${why}. Nothing was stored`);
    this.name = "StepKindUnavailableError";
    this.path = path;
    this.kind = kind;
  }
}

/** No workflow of that name (or version) is stored for the tenant. */
export class WorkflowNotFoundError extends FlexError {
  constructor(tenant: string, name: string, version?: number) {
    super("FLEX_WORKFLOW_NOT_FOUND", `Workflow \`${name}\`${version === undefined ? "" : ` version ${version}`} is not stored for tenant \`${tenant}\``);
    this.name = "WorkflowNotFoundError";
  }
}

/** No run with that id exists for the tenant. */
export class RunNotFoundError extends FlexError {
  readonly runId: string;
  constructor(tenant: string, runId: string) {
    super("FLEX_RUN_NOT_FOUND", `Workflow run \`${runId}\` does not exist for tenant \`${tenant}\``);
    this.name = "RunNotFoundError";
    this.runId = runId;
  }
}

/** The run already ended (succeeded, failed or cancelled), so it cannot be cancelled. */
export class RunFinishedError extends FlexError {
  readonly status: string;
  constructor(runId: string, status: string) {
    super("FLEX_RUN_FINISHED", `Workflow run \`${runId}\` already ended with status \`${status}\``);
    this.name = "RunFinishedError";
    this.status = status;
  }
}

/**
 * A run's definition could not be loaded from the definition store (by the tenant of the
 * run's subject, and the name and version its RunStarted names) or did not validate. The
 * run fails once with this code in its RunFailed event.
 */
export class DefinitionUnavailableError extends FlexError {
  constructor(tenant: string, name: string, version: number | undefined, why: string, options?: { cause?: unknown }) {
    super("FLEX_WORKFLOW_DEFINITION_UNAVAILABLE", `The definition of workflow \`${name}\`${version === undefined ? "" : ` version ${version}`} of tenant \`${tenant}\` is not available to run: ${why}`, options);
    this.name = "DefinitionUnavailableError";
  }
}

/**
 * A stored definition has `trusted: true` steps but is not one the operator installed in this
 * instance (a definition file of `flexcore.yaml`). It never runs trusted: the run fails once.
 */
export class UntrustedDefinitionError extends FlexError {
  readonly steps: readonly string[];
  constructor(tenant: string, name: string, steps: readonly string[]) {
    super("FLEX_WORKFLOW_UNTRUSTED", `Workflow \`${name}\` of tenant \`${tenant}\` has trusted step(s) ${steps.map((s) => `\`${s}\``).join(", ")} but is not an operator-installed definition; it is not run`);
    this.name = "UntrustedDefinitionError";
    this.steps = steps;
  }
}

/** A step attempt ran past its `timeout_ms` and was stopped (a processor step's worker thread is terminated). Reported in `StepFailed.error`. */
export class StepTimeoutError extends FlexError {
  readonly step: string;
  readonly timeoutMs: number;
  constructor(step: string, timeoutMs: number) {
    super("FLEX_STEP_TIMEOUT", `Step \`${step}\` timed out after ${timeoutMs} ms and was stopped`);
    this.name = "StepTimeoutError";
    this.step = step;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * A redriven trigger dead letter that can start no run: its event is no longer in
 * `FLEX_EVENTS` at its sequence (aged out or purged), or no event trigger of the installed
 * version takes its subject. It returns to the DLQ with this reason.
 */
export class TriggerEventGoneError extends FlexError {
  readonly subject: string;
  readonly seq: number;
  constructor(subject: string, seq: number, why: string) {
    super("FLEX_WORKFLOW_TRIGGER_EVENT_GONE", `The redriven trigger event ${seq} (\`${subject}\`) cannot start a run: ${why}`);
    this.name = "TriggerEventGoneError";
    this.subject = subject;
    this.seq = seq;
  }
}

/** The code and message of an error for a log line or an event: `FLEX_...: message`. */
export function describeError(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const message = typeof e?.message === "string" ? e.message : String(err);
  return err instanceof FlexError || typeof e?.code === "string" ? `${String(e.code)}: ${message}` : message;
}
