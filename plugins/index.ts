/**
 * The plugin host's public face. Three parts add to it; each keeps its own block.
 */

// Manifest, bundles, signatures and the content-addressed install.
export {
  checkCompatible,
  compileEmbeddedSchema,
  DEFAULT_PLUGIN_LIMITS,
  flexcoreVersion,
  HOST_PROTOCOLS,
  MANIFEST_FILE,
  MANIFEST_SCHEMA_FILE,
  MANIFEST_SCHEMA_ID,
  manifestSchema,
  MAX_MANIFEST_BYTES,
  parseManifest,
  readManifestDocument,
  RESERVED_ENV_PREFIX,
  validateManifest,
} from "./manifest.js";
export type { EndpointCapability, ManifestOptions, PluginLimits, PluginManifest, ProcessorCapability, StepCapability } from "./manifest.js";
export { BundleTooLargeError, ChecksumError, ManifestError, PluginIncompatibleError, SignatureError } from "./errors.js";
export type { ManifestIssue } from "./errors.js";
export {
  commandFile,
  DEFAULT_BUNDLE_LIMITS,
  install,
  keygen,
  keyId,
  loadTrustedKeys,
  pack,
  PRIVATE_KEY_SUFFIX,
  PUBLIC_KEY_SUFFIX,
  sign,
  SIG_FILE,
  SUM_FILE,
  uninstall,
  verify,
  writeKeyPair,
} from "./bundle.js";
export type { BundleLimits, BundleOptions, InstalledBundle, KeyPair, PackResult, VerifiedBundle, VerifyOptions } from "./bundle.js";
export { BUNDLE_DIGEST_METADATA, BUNDLE_PLUGIN_METADATA, fetchStoredBundle, hasStoredBundle, installStoredBundle, pruneStoredBundles, storeBundle } from "./bundle-store.js";
export type { StoredBundle } from "./bundle-store.js";

// --- Protocol, services subset, host client, TypeScript SDK, echo (h-plugproto) ---------
export {
  CAPABILITY_PATTERN,
  DEFAULT_MAX_REPLY_BYTES,
  ENDPOINT_SUBJECT_ROOT,
  ENV as PLUGIN_ENV,
  EXIT_PROTOCOL_MISMATCH,
  HEADERS as PLUGIN_HEADERS,
  METADATA as PLUGIN_METADATA,
  PLUGIN_KINDS,
  PLUGIN_NAME_PATTERN,
  PROTOCOL_VERSION,
  QUEUE_GROUP,
  RESPONSE_TYPES,
  SUPPORTED_PROTOCOLS,
  checkControlResponse,
  controlSubjects,
  endpointName,
  endpointSubject,
  parseReply,
} from "./protocol.js";
export type {
  CallTypes,
  Checked,
  EndpointInfo,
  EndpointStats,
  InfoResponse,
  PingResponse,
  PluginKind,
  ProcessorInput,
  ProcessorOutput,
  ProcessorRejection,
  ProcessorReply,
  ProcessorRequest,
  ProtocolIssue,
  SinkEvent,
  SinkReply,
  SinkRequest,
  SourceRecord,
  SourceReply,
  SourceRequest,
  StatsResponse,
  StepReply,
  StepRequest,
} from "./protocol.js";
export { DEFAULT_MAX_IN_FLIGHT, ServiceError, createService } from "./service.js";
export type { EndpointHandler, EndpointOptions, Service, ServiceOptions, ServiceRequest } from "./service.js";
export { DEFAULT_CALL_TIMEOUT_MS, DEFAULT_DISCOVERY_TIMEOUT_MS, STATUS_TOO_LARGE, createPluginClient, discoverPlugins, pingPlugin, pluginStats } from "./client.js";
export type { DiscoverOptions, HealthOptions, PluginClient, PluginClientOptions } from "./client.js";
export { DEFAULT_PLUGIN_CONCURRENCY, definePlugin, readHandshake, serve } from "./sdk.js";
export type { HandlerContext, Plugin, PluginDefinition, ProcessorDefinition, RawReply, ServeOptions, ServedPlugin, SinkDefinition, SourceDefinition, StepDefinition } from "./sdk.js";
export { echoPluginCommand } from "./echo/launch.js";
export {
  PluginBadReplyError,
  PluginCallError,
  PluginFailedError,
  PluginInputError,
  PluginRejectedError,
  PluginTimeoutError,
  PluginUnavailableError,
} from "./errors.js";
export type { PluginCallContext } from "./errors.js";

// --- Managed plugins: NATS users, supervisor, lifecycle (engineer D) ---
export { PluginCrashLoopError, PluginProtocolError, PluginStartTimeoutError } from "./errors.js";
export { checkPluginName, generatePluginUsers, PLUGIN_USER_PREFIX, pluginCredentials, pluginPermissions, pluginUserEntry, pluginUserName } from "./nats-users.js";
export type { PluginCredentials, PluginPermissions, PluginUsers } from "./nats-users.js";
export { PLUGIN_UID_BASE, PLUGIN_UID_RANGE, pluginUid, startPluginSupervisor } from "./supervisor.js";
export type { PluginInstanceStatus, PluginLaunchSpec, PluginState, PluginStatus, PluginSupervisor, PluginSupervisorOptions } from "./supervisor.js";
export { createPluginLifecycle, DEFAULT_HEALTH_INTERVAL_MS, validatePluginEvent } from "./lifecycle.js";
export type { PluginFailedEvent, PluginLifecycle, PluginLifecycleOptions, PluginStartedEvent } from "./lifecycle.js";

// --- Shipped plugins and the host drivers of sinks and sources (h-plugsix) ---------------
export { createSinkDriver, DEFAULT_SINK_ACK_WAIT_MS, DEFAULT_SINK_BACKOFF_MS, DEFAULT_SINK_BATCH, DEFAULT_SINK_FETCH_MS } from "./sink-driver.js";
export type { SinkDriver, SinkDriverMetrics, SinkDriverOptions } from "./sink-driver.js";
export { createSourceDriver, DEFAULT_SOURCE_INTERVAL_MS, DEFAULT_SOURCE_MAX, DEFAULT_SOURCE_RETRY_MS, sourceCursorKey, sourceEventId } from "./source-driver.js";
export type { SourceDriver, SourceDriverMetrics, SourceDriverOptions, SourceIdParts } from "./source-driver.js";
export { compileTransform, DEFAULT_OUTPUT_TYPE as JSON_TRANSFORM_OUTPUT_TYPE, TRANSFORM_OPTIONS_SCHEMA } from "./json-transform/transform.js";
export type { CastType, FilterCondition, FilterOp, Transform, TransformOptions, TransformResult } from "./json-transform/transform.js";
export { jsonTransformPluginCommand } from "./json-transform/launch.js";
export { schemaValidatePluginCommand } from "./schema-validate/launch.js";
export { httpSinkPluginCommand } from "./http-sink/launch.js";
export { sqliteSourcePluginCommand } from "./sqlite-source/launch.js";

// --- The host of flexcore up: the plugins: section, bundles to launch specs, remote kinds, steps (h-plughost) ---
export { checkPluginProcessors, launchSpec, PLUGIN_ENTRY_SCHEMA, PLUGINS_SCHEMA, pluginsSection, resolvePlugins } from "./host-config.js";
export type { ExternalPluginEntry, ManagedPluginEntry, PluginEntry, ResolvedManagedPlugin, ResolvedPlugins, ResolvePluginsOptions } from "./host-config.js";
export { createPluginHost } from "./host.js";
export type { HostedPlugin, PluginCallMetrics, PluginHost, PluginHostOptions } from "./host.js";
export {
  collectPluginViews,
  DEFAULT_PLUGIN_LOG_LINES,
  followPluginSwitches,
  PLUGIN_CONTROL_SUBJECT,
  PLUGIN_SWITCH_PREFIX,
  PluginLogBuffer,
  pluginViews,
  readPluginSwitches,
  requestPluginLogs,
  requestPluginRestart,
  servePluginControl,
  setPluginEnabled,
} from "./control.js";
export type { PluginControlOptions, PluginInstanceView, PluginSwitch } from "./control.js";
export { checkPluginEndpoints, SINK_SCHEMA, sinksSection, SOURCE_SCHEMA, sourcesSection, startPluginEndpoints } from "./endpoints.js";
export type { EndpointMetrics, PluginEndpoints, PluginEndpointsOptions, SinkEntry, SourceEntry } from "./endpoints.js";

// --- Upgrades without loss and per-plugin stop (h-plugupgrade) ---
export { PluginUpgradeFailedError } from "./errors.js";
export { pluginServiceNames, tenantSlotServiceNames, UPGRADE_SLOT_SUFFIX, upgradeServiceName } from "./supervisor.js";
export type { PluginUpgradeOptions, PluginUpgradeResult } from "./supervisor.js";
export { requestPluginUpgrade } from "./control.js";
export { adoptPluginVersion, applyPluginVersions, DEFAULT_SWITCH_SETTLE_MS, followPluginVersions, PLUGIN_VERSION_PREFIX, readPluginVersions, upgradePlugin, writePluginVersion } from "./upgrade.js";
export type { ApplyPluginVersionsOptions, CrossInstanceUpgradePlan, PluginVersionRecord, UpgradeJoiners, UpgradePluginOptions } from "./upgrade.js";
export { DEFAULT_JOIN_WAIT_MS, serveUpgradeJoin, UPGRADE_DECISION_SUBJECT, UPGRADE_JOIN_SUBJECT, upgradeJoinCoordinator } from "./upgrade-join.js";
export type { UpgradeJoinCoordinatorOptions, UpgradeJoinServiceOptions } from "./upgrade-join.js";

// --- The Python SDK the host provides (`sdk: python`), the first quick restart (h-plugfig) ---
export { PYTHON_SDK_FILE, PYTHON_SDK_MOUNT, pythonPathWithSdk, pythonSdkDir } from "./python-sdk.js";
export { DEFAULT_FIRST_RESTART_MS } from "./supervisor.js";

// --- Tenant instances of `tenancy: tenant` plugins, `<name>_<tenant>` (h-plugtenant) ---
export { checkPluginTenant, checkServiceName, parseServiceName, PLUGIN_SERVICE_PATTERN, PLUGIN_TENANT_ENV, PLUGIN_TENANT_PATTERN, TENANT_SERVICE_SEPARATOR, tenantServiceName } from "./tenancy.js";
export { supervisedSpecs } from "./host-config.js";
export { pluginInstanceKey } from "./supervisor.js";
export type { PluginTenantInstance } from "./host.js";
