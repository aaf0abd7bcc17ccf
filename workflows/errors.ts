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
