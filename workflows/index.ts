// Workflows: definitions (YAML/JSON, versioned in flex_workflows), the durable runner, triggers.
export { createWorkflowClient, DEFAULT_WAIT_POLL_MS } from "./client.js";
export type { WorkflowClient } from "./client.js";
export { DEFAULT_MAX_RUNS, DEFAULT_POLL_MS, DEFAULT_RUN_LEASE_MS, startWorkflowRunner } from "./runner.js";
export type { WorkflowRunner, WorkflowRunnerOptions } from "./runner.js";
export type { StartOptions, StartResult } from "./start.js";
export { backoffDelay, DEFAULT_RETRY, MAX_DEFINITION_BYTES, NAME_PATTERN, parseDefinitionText, STEP_KINDS, validateDefinition } from "./definition.js";
export type { ProcessorStepDefinition, RetryPolicy, ScriptStepDefinition, StepDefinition, TriggerDefinition, WorkflowDefinition } from "./definition.js";
export { DEFINITION_PREFIX, RUN_INDEX_PREFIX } from "./definitions.js";
export type { StoredWorkflow } from "./definitions.js";
export { cronMatches, CronSyntaxError, nextCronTime, parseCron } from "./cron.js";
export type { CronSchedule } from "./cron.js";
export { condition, ExpressionError, parseExpression, render, TEMPLATE_ROOTS } from "./template.js";
export { RUN_EVENTS, WORKFLOW_CATEGORY } from "./events.js";
export type { ErrorInfo, RunCancelledData, RunFailedData, RunStartedData, RunSucceededData, StepFailedData, StepSkippedData, StepStartedData, StepSucceededData, TriggerInfo } from "./events.js";
export type { RunState, RunStatus, StepState, StepStatus } from "./state.js";
export { RunFinishedError, RunNotFoundError, StepKindUnavailableError, WorkflowDefinitionError, WorkflowNotFoundError } from "./errors.js";
export { startWorkflows, workflowsSection } from "./config.js";
export type { WorkflowsConfig } from "./config.js";
