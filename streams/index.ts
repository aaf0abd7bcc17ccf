export {
  AbortedError,
  BatchTooLargeError,
  ConcurrencyError,
  DeadLetterNotFoundError,
  describeValue,
  DuplicateEventIdError,
  FlexError,
  InvalidEventError,
  InvalidOptionError,
  NatsServerError,
  PayloadTooLargeError,
  PublisherClosedError,
  PublishRejectedError,
  PublishTimeoutError,
  PurgeNotConfirmedError,
  RedriveUnsupportedError,
  StreamUnavailableError,
  SubjectTokenError,
  TenantReservedError,
  TopologyError,
} from "./errors.js";
export {
  checkSubjectFilter,
  checkTenantName,
  checkToken,
  derivedSubject,
  dlqSubject,
  eventSubject,
  MAX_TOKEN_BYTES,
  parseSubject,
  reapplySubject,
  redriveSubject,
  RESERVED_TENANT_PREFIX,
  SUBJECT_ROOTS,
  SYSTEM_TENANT,
} from "./subjects.js";
export type { ParsedSubject } from "./subjects.js";
export { compileSchema, durationExpected, durationMs, durationSchema, expectedOf, hasIssueAt, issue, pathAt, SCHEMA_DIALECT, shown } from "./schema.js";
export type { JsonSchema, SchemaIssue, SchemaValidator } from "./schema.js";
export { checkDeadLetterFilter, createDeadLetters, deadLetterHeaders, DEFAULT_DLQ_PAGE, DLQ_HEADERS, MAX_DLQ_BATCH, MAX_REASON_FILTER, readDeadLetter, readRedriveHeaders, REDRIVE_HEADERS, redriveMessage } from "./dead-letters.js";
export type { DeadLetterHeaderInput, DeadLetterFilter, DeadLetters } from "./dead-letters.js";
export type { DeadLetter, DeadLetterCount, DeadLetterPage, PurgeReport, RedriveReport } from "./api-types.js";
export { decodeData, decodeEvent, DEFAULT_SCHEMA, encodeData, encodeEvent, HEADERS, headerFields, headerFieldsFromBlock } from "./event.js";
export { EventHeaders } from "./event-headers.js";
export type { EncodedEvent, EventInput, RawMessage, StoredEvent } from "./event.js";
export {
  createPublisher,
  DEFAULT_ACK_TIMEOUT_MS,
  DEFAULT_DEADLINE_MS,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_MAX_IN_FLIGHT,
} from "./publisher.js";
export type { OutgoingMessage, PublishAck, Publisher, PublisherOptions, PublisherStats, PublishOptions } from "./publisher.js";
export { BUCKETS, DEFAULT_DUPLICATE_WINDOW_MS, ensureTopology, OBJECT_STORES, STREAMS, streamConfigs } from "./topology.js";
export type { Drift, TopologyOptions, TopologyReport } from "./topology.js";
export { CREDENTIAL_ENV, credentialsFromEnv, credentialsToEnv, hasCredentials, natsConnectOptions, parseServers } from "./credentials.js";
export type { NatsCredentials } from "./credentials.js";
export { openSnapshotStore, snapshotKey } from "./snapshots.js";
export { fromKvKeyToken, kvKeyToken } from "./kv-keys.js";
export { MIN_MESSAGE_TTL_MS, openTtlKv, ttlHeaderValue } from "./kv-ttl.js";
export type { TtlKv } from "./kv-ttl.js";
export type { Snapshot, SnapshotStore } from "./snapshots.js";
export { createEventStore, DEFAULT_COMMIT_TIMEOUT_MS, DEFAULT_SNAPSHOT_EVERY, eventFromJsMsg, MAX_APPEND_EVENTS } from "./event-store.js";
export { DEFAULT_READ_HEARTBEAT_MS, DEFAULT_READ_WINDOW, openStreamReader, parseAckReply } from "./stream-reader.js";
export type { AckReplyInfo, StreamReader, StreamReaderOptions } from "./stream-reader.js";
export type {
  AggregateOptions,
  AggregateRef,
  AggregateState,
  AppendOptions,
  AppendResult,
  EventStore,
  EventStoreOptions,
  ExpectedRevision,
  ReadAllOptions,
  ReadOptions,
  Reducer,
} from "./event-store.js";
export {
  checkNatsServerVersion,
  compareVersions,
  DEFAULT_NATS_SERVER_BIN,
  missingFeatures,
  natsServerPin,
  natsServerVersion,
  processAlive,
  resolveNatsServerBinary,
  serverFeatures,
  startNatsServer,
} from "./server.js";
export type { NatsServer, NatsServerOptions, NatsServerSource, ResolvedNatsServer, ServerFeatures } from "./server.js";
export {
  MAX_SUMMARY_CHARS,
  METRICS_CATEGORY,
  METRICS_EVENT_TYPES,
  PLUGIN_CATEGORY,
  PLUGIN_EVENT_TYPES,
  isReservedCategory,
  RESERVED_CATEGORIES,
  WORKFLOW_CATEGORY,
  WORKFLOW_EVENT_TYPES,
} from "./system-events.js";
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
} from "./system-events.js";
