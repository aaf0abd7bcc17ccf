/**
 * The processors area: the runtime (durable consumers → key partitions → Piscina pool →
 * derived events), the pipeline configuration, and the built-in processors.
 */
export type { ProcessorDefinition, ProcessorInput, ProcessorOutput, ProcessResult } from "./types.js";
export { ConfigError, PartitionFilterError, ProcessorCrashedError, ProcessorFailedError, RuntimeClosedError, UnknownProcessorError } from "./errors.js";
export type { ConfigIssue } from "./errors.js";
export {
  DEFAULT_ACK_WAIT_MS,
  DEFAULT_BACKOFF_MS,
  DEFAULT_PROCESSOR_BATCH_SIZE,
  DEFAULT_CONFIG_FILE,
  DEFAULT_LEASE_TTL_MS,
  DEFAULT_MAX_DELIVER,
  DEFAULT_MAX_IN_FLIGHT,
  DEFAULT_METRICS_INTERVAL_MS,
  DEFAULT_PARTITIONS,
  PROCESSOR_SCALES,
  loadConfig,
  parseConfig,
  pipelineSections,
  PROCESSOR_SCHEMA,
  PROCESSORS_SCHEMA,
  resolveConfigPath,
  RUNTIME_SCHEMA,
} from "./config.js";
export type { ConfigSections, ProcessorConfig, ProcessorScale, ResolvedProcessor, RuntimeConfig, SectionValidator } from "./config.js";
export { BUILTIN_PROCESSORS } from "./builtin/index.js";
// The ML building blocks, for benchmarks and plugins that compose them.
export { adjustedRandIndex, inertia, kmeans } from "./ml/kmeans.js";
export type { KMeansOptions, KMeansResult } from "./ml/kmeans.js";
export { createRandom, shuffle } from "./ml/random.js";
export type { Random } from "./ml/random.js";
export { anomaly, anomalyOptions } from "./builtin/anomaly.js";
export type { AnomalyMethod, AnomalyOptions } from "./builtin/anomaly.js";
export { createProcessorPool, DEFAULT_WORKER_MEMORY_MB } from "./pool.js";
export type { InvokeResult, ProcessorPool, ProcessorPoolOptions } from "./pool.js";
export { CONSUMER_PREFIX, DEFAULT_MAX_KEYS_IN_MEMORY, startProcessorRuntime, stateKvKey } from "./runtime.js";
export { Lease, processorLeaseKey } from "./lease.js";
// Scale-out (`scale: partitioned`): partition streams, members and partition leases.
export { ensurePartitionStream, PARTITION_STREAM_PREFIX, partitionOf, partitionRules, partitionStreamName } from "./partition-stream.js";
export type { PartitionRule } from "./partition-stream.js";
export { INSTANCE_HEADER } from "./runner.js";
export { assignPartitions, memberKey, memberKeyPrefix, partitionConsumerName, partitionLeaseKey } from "./partitioned.js";
export type { MemberBody } from "./partitioned.js";
export { processorsStatus } from "./status.js";
export type { InstanceStatus, PartitionStatus, ProcessorStatus } from "./status.js";
export type { LeaseBody } from "./lease.js";
export type { InvokeInput, ProcessorRuntime, ProcessorRuntimeOptions } from "./runtime.js";
// Remote kinds (`<plugin>/<kind>`): filled by plugins/ through `flexcore up`.
export { isRemoteKind, parseRemoteKind, REMOTE_KIND_PATTERN } from "./remote.js";
export type { RemoteBatch, RemoteBatchResult, RemoteInput, RemoteKinds } from "./remote.js";
export type { ProcessorMetrics } from "./metrics.js";
// Call latency percentiles of the plugin host, in the processors' own window.
export { LatencyWindow } from "./metrics.js";
export type { SeriesTask } from "./task.js";

// Script steps: JavaScript, Python and Bash run sandboxed (bubblewrap) or trusted (worker threads).
export { createScriptRunner, sweepStaleWorkDirs, WORK_PREFIX } from "./scripts/script-runner.js";
export { DEFAULT_SCRIPT_LIMITS, resolveLimits, SCRIPT_LANGUAGES, SCRIPT_SPEC_FIELDS, SCRIPT_SPEC_RULES, validateScriptSpec } from "./scripts/spec.js";
export { planCommand, SANDBOX_WORK_DIR, sandboxSupport, STEP_UID } from "./scripts/sandbox.js";
export type { CommandPlan, PlanInput, SandboxProbeOptions, SandboxSupport } from "./scripts/sandbox.js";
export { SandboxNetworkUnavailableError, SandboxUnavailableError } from "./scripts/errors.js";
export type { ScriptLanguage, ScriptLimits, ScriptResult, ScriptRunner, ScriptRunnerOptions, ScriptSpec, ScriptStatus } from "./scripts/types.js";
