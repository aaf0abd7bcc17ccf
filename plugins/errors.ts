/**
 * Errors raised by the `plugins/` area. Each extends FlexError with a stable `code`
 * listed in docs/errors.md.
 */
import { FlexError } from "../streams/index.js";

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
