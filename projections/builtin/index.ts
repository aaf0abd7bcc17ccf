import type { Projection } from "../projection.js";
import { genericProjection } from "./generic.js";
import type { GenericProjectionOptions } from "./generic.js";
import { performanceMetricsProjection } from "./performance-metrics.js";
import { pipelineSummaryProjection } from "./pipeline-summary.js";
import { pluginStatusProjection } from "./plugin-status.js";
import { workflowHistoryProjection } from "./workflow-history.js";

/** Options of {@link builtinProjections}. */
export interface BuiltinOptions {
  /** Reducers and indexes of the `generic` read model. */
  readonly generic?: GenericProjectionOptions;
}

/** The read models FlexCore ships: pipeline_summary, plugin_status, workflow_history, performance_metrics, generic. */
export function builtinProjections(options: BuiltinOptions = {}): Projection[] {
  return [
    pipelineSummaryProjection(),
    pluginStatusProjection(),
    workflowHistoryProjection(),
    performanceMetricsProjection(),
    genericProjection(options.generic),
  ];
}

export { genericProjection, mergePatch } from "./generic.js";
export type { DocumentReducer, GenericIndex, GenericProjectionOptions } from "./generic.js";
export { performanceMetricsProjection } from "./performance-metrics.js";
export { pipelineSummaryProjection, SUMMARY_RATE_WINDOW_MINUTES } from "./pipeline-summary.js";
export { pluginStatusProjection } from "./plugin-status.js";
export { workflowHistoryProjection } from "./workflow-history.js";
