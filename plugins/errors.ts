/**
 * Errors raised by the `plugins/` area. Every one extends {@link FlexError} and carries a
 * stable `code`; codes are listed in `docs/errors.md`.
 */
import { FlexError } from "../streams/index.js";

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
