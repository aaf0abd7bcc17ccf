/**
 * Errors raised by the `plugins/` area. Each extends {@link FlexError} and carries a stable
 * `code` listed in `docs/errors.md`; callers branch on `code` or `instanceof`, never on the
 * message. Three parts of the plugin host add their own block here.
 */
import { describeValue, FlexError } from "../streams/index.js";

// ---------------------------------------------------------------------------------------
// Manifest, bundles and signatures (manifest.ts, bundle.ts)
// ---------------------------------------------------------------------------------------

/** One problem of a plugin manifest: where, what was found, what was expected. */
export interface ManifestIssue {
  /** Dotted path into the manifest, e.g. `capabilities.processors[0].options`; `""` for the whole document. */
  readonly path: string;
  /** The value found there (`undefined` when the key is missing). */
  readonly value: unknown;
  /** What was expected, in words. */
  readonly expected: string;
}

function issueLine(i: ManifestIssue): string {
  return `expected \`${i.path || "(manifest)"}\` to be ${i.expected}, got ${describeValue(i.value)}`;
}

/**
 * `flexcore-plugin.yaml` is not valid: YAML syntax, an unknown key, a wrong type, a bad
 * semver version or range, an embedded JSON Schema that does not compile. `issues` lists
 * every problem found; `path`, `value` and `expected` repeat the first one.
 */
export class ManifestError extends FlexError {
  readonly issues: readonly ManifestIssue[];
  readonly path: string;
  readonly value: unknown;
  readonly expected: string;
  /** The manifest file, when known. */
  readonly file: string | undefined;
  constructor(issues: readonly ManifestIssue[], file?: string, options?: { cause?: unknown }) {
    const first = issues[0] ?? { path: "", value: undefined, expected: "a plugin manifest" };
    const head = `Invalid plugin manifest${file ? ` ${file}` : ""}`;
    const message = issues.length <= 1 ? `${head}: ${issueLine(first)}` : `${head}:\n  ${issues.map(issueLine).join("\n  ")}`;
    super("FLEX_PLUGIN_MANIFEST", message, options);
    this.name = "ManifestError";
    this.issues = issues.length > 0 ? issues : [first];
    this.path = first.path;
    this.value = first.value;
    this.expected = first.expected;
    this.file = file;
  }
}

/**
 * The plugin cannot run on this FlexCore: its `flexcore` range excludes this version, or its
 * `protocols` share none with the host's. `field` is `flexcore` or `protocols`.
 */
export class PluginIncompatibleError extends FlexError {
  readonly plugin: string;
  readonly field: "flexcore" | "protocols";
  readonly value: unknown;
  readonly expected: string;
  constructor(plugin: string, field: "flexcore" | "protocols", value: unknown, expected: string) {
    super("FLEX_PLUGIN_INCOMPATIBLE", `Plugin \`${plugin}\` is incompatible: expected \`${field}\` to be ${expected}, got ${describeValue(typeof value === "object" && value !== null ? JSON.stringify(value) : value)}`);
    this.name = "PluginIncompatibleError";
    this.plugin = plugin;
    this.field = field;
    this.value = value;
    this.expected = expected;
  }
}

/**
 * A bundle's files do not match its `flexcore-plugin.sum`: a changed, extra or missing file,
 * a symlink or special file, a path escaping the bundle, a malformed or stale sum file.
 * `file` names the bundle-relative path concerned (`""` for the bundle as a whole).
 */
export class ChecksumError extends FlexError {
  readonly bundle: string;
  readonly file: string;
  readonly reason: string;
  constructor(bundle: string, file: string, reason: string, options?: { cause?: unknown }) {
    super("FLEX_PLUGIN_CHECKSUM", `Plugin bundle ${bundle} refused${file ? ` at \`${file}\`` : ""}: ${reason}`, options);
    this.name = "ChecksumError";
    this.bundle = bundle;
    this.file = file;
    this.reason = reason;
  }
}

/**
 * A bundle's `flexcore-plugin.sig` is missing, malformed, does not verify, or was made by a
 * key that is not among the operator's trusted keys (or the trusted keys cannot be read
 * safely), and the plugin's name is not in `allowUnsigned`.
 */
export class SignatureError extends FlexError {
  readonly bundle: string;
  /** The plugin's name when the manifest was read, else `undefined`. */
  readonly plugin: string | undefined;
  readonly reason: string;
  constructor(bundle: string, plugin: string | undefined, reason: string, options?: { cause?: unknown }) {
    super("FLEX_PLUGIN_SIGNATURE", `Plugin bundle ${bundle}${plugin ? ` (\`${plugin}\`)` : ""} refused: ${reason}`, options);
    this.name = "SignatureError";
    this.bundle = bundle;
    this.plugin = plugin;
    this.reason = reason;
  }
}

/** A bundle holds more files or bytes than the limits allow (`limit` names which). Nothing was installed. */
export class BundleTooLargeError extends FlexError {
  readonly bundle: string;
  readonly limit: "maxFiles" | "maxBytes" | "maxFileBytes";
  readonly max: number;
  constructor(bundle: string, limit: "maxFiles" | "maxBytes" | "maxFileBytes", max: number, what: string) {
    super("FLEX_PLUGIN_TOO_LARGE", `Plugin bundle ${bundle} refused: ${what}; the limit \`${limit}\` is ${max}`);
    this.name = "BundleTooLargeError";
    this.bundle = bundle;
    this.limit = limit;
    this.max = max;
  }
}

// --- Calls to a plugin (host side: plugins/client.ts) ---------------------------------

/** What every call error says about the call it came from. */
export interface PluginCallContext {
  /** The plugin's service name. */
  readonly service: string;
  /** The endpoint subject, `flexplugin.<service>.<kind>.<capability>`. */
  readonly subject: string;
}

/** Base of the call errors: carries the service and the subject. */
export abstract class PluginCallError extends FlexError {
  readonly service: string;
  readonly subject: string;
  /** Whether the host should try again (5xx, timeout, no responders) or give up (4xx, bad reply). */
  abstract readonly retryable: boolean;
  constructor(code: string, context: PluginCallContext, message: string, options?: { cause?: unknown }) {
    super(code, `Plugin ${context.service} (${context.subject}): ${message}`, options);
    this.service = context.service;
    this.subject = context.subject;
  }
}

/** The plugin did not answer within the call timeout (`FLEX_PLUGIN_TIMEOUT`). Retry. */
export class PluginTimeoutError extends PluginCallError {
  readonly retryable = true;
  readonly timeoutMs: number;
  constructor(context: PluginCallContext, timeoutMs: number, options?: { cause?: unknown }) {
    super("FLEX_PLUGIN_TIMEOUT", context, `no reply within ${timeoutMs} ms`, options);
    this.name = "PluginTimeoutError";
    this.timeoutMs = timeoutMs;
  }
}

/** No instance of the plugin listens on the endpoint (`FLEX_PLUGIN_UNAVAILABLE`). Retry. */
export class PluginUnavailableError extends PluginCallError {
  readonly retryable = true;
  constructor(context: PluginCallContext, options?: { cause?: unknown }) {
    super("FLEX_PLUGIN_UNAVAILABLE", context, "no instance is listening (no responders)", options);
    this.name = "PluginUnavailableError";
  }
}

/** The plugin refused the input with a 4xx error (`FLEX_PLUGIN_REJECTED`): dead-letter it. */
export class PluginRejectedError extends PluginCallError {
  readonly retryable = false;
  /** The `Nats-Service-Error-Code`, e.g. 400. */
  readonly status: number;
  /** The plugin's `Nats-Service-Error` message. */
  readonly reason: string;
  constructor(context: PluginCallContext, status: number, reason: string) {
    super("FLEX_PLUGIN_REJECTED", context, `rejected the input (${status}): ${reason}`);
    this.name = "PluginRejectedError";
    this.status = status;
    this.reason = reason;
  }
}

/** The plugin failed with a 5xx (or unparseable) error code (`FLEX_PLUGIN_FAILED`). Retry. */
export class PluginFailedError extends PluginCallError {
  readonly retryable = true;
  readonly status: number;
  readonly reason: string;
  constructor(context: PluginCallContext, status: number, reason: string) {
    super("FLEX_PLUGIN_FAILED", context, `failed (${status}): ${reason}`);
    this.name = "PluginFailedError";
    this.status = status;
    this.reason = reason;
  }
}

/**
 * The reply is not what protocol 1 allows (`FLEX_PLUGIN_BAD_REPLY`): not JSON, the wrong
 * shape or types, an output pointing at no input, or larger than the limit. `path` names
 * the offending place (`outputs[3].input`). Not retried as is: a plugin that answers
 * garbage once will answer it again; the host treats the message as failed.
 */
export class PluginBadReplyError extends PluginCallError {
  readonly retryable = false;
  /** Where in the reply the problem is (`""` for the whole reply). */
  readonly path: string;
  constructor(context: PluginCallContext, path: string, problem: string, options?: { cause?: unknown }) {
    super("FLEX_PLUGIN_BAD_REPLY", context, `bad reply${path ? ` at \`${path}\`` : ""}: ${problem}`, options);
    this.name = "PluginBadReplyError";
    this.path = path;
  }
}

// --- Inside a plugin (TypeScript SDK: plugins/sdk.ts) ----------------------------------

/**
 * Thrown by a plugin's handler when the input itself is bad (`FLEX_PLUGIN_INPUT`): the SDK
 * answers `400` with the message, and the host dead-letters the message
 * (`FLEX_PLUGIN_REJECTED`) instead of retrying it. Anything else a handler throws is a 500.
 */
export class PluginInputError extends FlexError {
  /** A 4xx status, `400` unless said otherwise. */
  readonly status: number;
  constructor(message: string, options?: { status?: number; cause?: unknown }) {
    super("FLEX_PLUGIN_INPUT", message, options);
    this.name = "PluginInputError";
    const status = options?.status ?? 400;
    this.status = Number.isInteger(status) && status >= 400 && status < 500 ? status : 400;
  }
}

// --- Supervisor of managed plugins (engineer D) ---

/**
 * A managed plugin exited with code 78 (EX_CONFIG) before it was ready: it speaks none of
 * the protocol versions the host offered. It is never restarted.
 */
export class PluginProtocolError extends FlexError {
  readonly plugin: string;
  constructor(plugin: string, detail: string) {
    super("FLEX_PLUGIN_PROTOCOL", `plugin ${plugin} speaks none of the host's protocol versions (it exited with 78 before it was ready): ${detail}`);
    this.name = "PluginProtocolError";
    this.plugin = plugin;
  }
}

/** A managed plugin did not answer `$SRV.INFO.<service>` with its launch's nonce within its start timeout; it was killed. */
export class PluginStartTimeoutError extends FlexError {
  readonly plugin: string;
  readonly timeoutMs: number;
  constructor(plugin: string, timeoutMs: number) {
    super("FLEX_PLUGIN_START_TIMEOUT", `plugin ${plugin} did not register with its launch's nonce within ${timeoutMs} ms (startTimeoutMs); it was killed`);
    this.name = "PluginStartTimeoutError";
    this.plugin = plugin;
    this.timeoutMs = timeoutMs;
  }
}

/** A managed plugin failed `failures` times within `windowMs`: no more restarts until the operator restarts it. */
export class PluginCrashLoopError extends FlexError {
  readonly plugin: string;
  readonly failures: number;
  readonly windowMs: number;
  constructor(plugin: string, failures: number, windowMs: number, last?: string) {
    super("FLEX_PLUGIN_CRASH_LOOP", `plugin ${plugin} failed ${failures} times within ${windowMs} ms; it is not restarted until \`flexcore plugins restart ${plugin}\`${last ? ` (last: ${last})` : ""}`);
    this.name = "PluginCrashLoopError";
    this.plugin = plugin;
    this.failures = failures;
    this.windowMs = windowMs;
  }
}

// --- upgrades (issue #15, upgrade without loss) ---

/**
 * An upgrade of a managed plugin did not happen: the new version was refused (bundle,
 * name, compatibility), did not become healthy within its start timeout, crash-looped, or
 * this instance does not run the plugin. The old version keeps serving and the chosen
 * version in `flex_state` is unchanged; `cause` says why.
 */
export class PluginUpgradeFailedError extends FlexError {
  readonly plugin: string;
  /** The version that was to replace the running one, when known. */
  readonly version: string | undefined;
  constructor(plugin: string, version: string | undefined, reason: string, options?: { cause?: unknown }) {
    super("FLEX_PLUGIN_UPGRADE_FAILED", `plugin ${plugin} was not upgraded${version ? ` to ${version}` : ""}: ${reason}; the running version keeps serving`, options);
    this.name = "PluginUpgradeFailedError";
    this.plugin = plugin;
    this.version = version;
  }
}
