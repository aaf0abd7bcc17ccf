// The system events the built-in read models fold are shared with the areas that emit
// them, so their vocabulary lives in streams/ (streams/system-events.ts).
export {
  MAX_SUMMARY_CHARS,
  METRICS_CATEGORY,
  METRICS_EVENT_TYPES,
  PLUGIN_CATEGORY,
  PLUGIN_EVENT_TYPES,
  WORKFLOW_CATEGORY,
  WORKFLOW_EVENT_TYPES,
} from "../streams/index.js";
export type {
  ComponentKind,
  ErrorInfo,
  MetricsReported,
  PluginFailed,
  PluginHealth,
  PluginLoaded,
  PluginStarted,
  PluginStopped,
  RunCancelled,
  RunFailed,
  RunStarted,
  RunSucceeded,
  StepFailed,
  StepSkipped,
  StepStarted,
  StepSucceeded,
} from "../streams/index.js";
