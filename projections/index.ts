export {
  InvalidQueryError,
  ProjectionApplyError,
  ProjectionEngineClosedError,
  ProjectionLockedError,
  ProjectionNotFoundError,
  ProjectionStoppedError,
  ProjectionStorageError,
  InstanceRebuildError,
  RebuildEngineSilentError,
  RebuildEngineUnansweredError,
  RebuildInProgressError,
  TenantRequiredError,
  WaitTimeoutError,
} from "./errors.js";
export { createProjectionEngine, DEFAULT_WAIT_TIMEOUT_MS, describeProjection } from "./engine.js";
export { ANSWER_TIMEOUT_MS, ENGINE_KEY_PREFIX, ENGINE_TTL_MS, engineKey, HEARTBEAT_MS, listRebuildEngines, REBUILD_SUBJECT, requestRebuild, serveProjectionControl, SILENCE_TIMEOUT_MS, startRebuild } from "./control.js";
export type {
  AcceptedRebuild,
  DeploymentRebuildProgress,
  DeploymentRebuildResult,
  EngineMember,
  InstanceRebuildOutcome,
  InstanceRebuildProgress,
  ProjectionControl,
  ProjectionControlOptions,
  RebuildMessage,
  RebuildRequestOptions,
} from "./control.js";
export type {
  ChangeEvent,
  ChangeListener,
  ProjectionEngine,
  ProjectionEngineOptions,
  ProjectionInfo,
  ProjectionStatus,
  ReaderInfo,
  StreamStatus,
  WaitOptions,
} from "./engine.js";
export type { RebuildOptions, RebuildProgress, RebuildResult } from "./rebuild.js";
export type { ApplyContext, ColumnType, FailurePolicy, Projection, ProjectionFold, ProjectionSource, ReaderSpec, SourceStream } from "./projection.js";
export { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE } from "./query.js";
export type { FilterOps, FilterValue, QueryOptions, QueryPage, Scalar } from "./query.js";
export { DEFAULT_SYNC } from "./database.js";
export type { StoredFailure, SyncMode } from "./database.js";
export { DEFAULT_PROJECTION_BATCH_SIZE, DEFAULT_FOLD_WINDOW } from "./runner.js";
export { PROJECTIONS_DIR, projectionsDir } from "./catalog.js";
export { DLQ_HEADERS, dlqSource } from "./dead-letter.js";
export {
  builtinProjections,
  genericProjection,
  mergePatch,
  performanceMetricsProjection,
  pipelineSummaryProjection,
  pluginStatusProjection,
  SUMMARY_RATE_WINDOW_MINUTES,
  workflowHistoryProjection,
} from "./builtin/index.js";
export type { BuiltinOptions, DocumentReducer, GenericIndex, GenericProjectionOptions } from "./builtin/index.js";
