/**
 * The plugins area: out-of-process extensions as NATS services (docs/plugins.md).
 * Each engineer's part is a block of its own; keep them apart when merging.
 */

// --- Managed plugins: NATS users, supervisor, lifecycle (engineer D) ---
export { PluginCrashLoopError, PluginProtocolError, PluginStartTimeoutError } from "./errors.js";
export { checkPluginName, generatePluginUsers, PLUGIN_NAME_PATTERN, PLUGIN_SUBJECT_ROOT, PLUGIN_USER_PREFIX, pluginCredentials, pluginPermissions, pluginUserEntry, pluginUserName } from "./nats-users.js";
export type { PluginCredentials, PluginPermissions, PluginUsers } from "./nats-users.js";
export { DEFAULT_PLUGIN_LIMITS, EXIT_PROTOCOL, HOST_PROTOCOLS, startPluginSupervisor } from "./supervisor.js";
export type { PluginInstanceStatus, PluginLaunchSpec, PluginLimits, PluginState, PluginStatus, PluginSupervisor, PluginSupervisorOptions } from "./supervisor.js";
export { createPluginLifecycle, DEFAULT_HEALTH_INTERVAL_MS, validatePluginEvent } from "./lifecycle.js";
export type { PluginFailedEvent, PluginLifecycle, PluginLifecycleOptions, PluginStartedEvent } from "./lifecycle.js";
