import { FlexError } from "../../streams/index.js";

/** `sandbox: "bwrap"` was required but bubblewrap cannot run here (not installed, or no user namespaces). */
export class SandboxUnavailableError extends FlexError {
  constructor(reason: string, options?: { cause?: unknown }) {
    super("FLEX_SANDBOX_UNAVAILABLE", `The bubblewrap sandbox is not available: ${reason}. Install it (\`apt-get install -y bubblewrap\`) or allow plain child processes with \`sandbox: "plain"\``, options);
    this.name = "SandboxUnavailableError";
  }
}

/** A script step did not succeed: it failed, timed out, hit a limit or returned no JSON. Carries the result. */
export class ScriptFailedError extends FlexError {
  /** `failed`, `timeout`, `killed` or `limit` (see {@link ScriptResult.status}). */
  readonly status: string;
  readonly exitCode: number | null;
  constructor(status: string, exitCode: number | null, message: string) {
    super("FLEX_SCRIPT_FAILED", message);
    this.name = "ScriptFailedError";
    this.status = status;
    this.exitCode = exitCode;
  }
}
