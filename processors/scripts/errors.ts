import { FlexError } from "../../streams/index.js";

/** `sandbox: "bwrap"` was required but bubblewrap cannot run here (not installed, or no user namespaces). */
export class SandboxUnavailableError extends FlexError {
  constructor(reason: string, options?: { cause?: unknown }) {
    super("FLEX_SANDBOX_UNAVAILABLE", `The bubblewrap sandbox is not available: ${reason}. Install it (\`apt-get install -y bubblewrap\`) or allow plain child processes with \`sandbox: "plain"\``, options);
    this.name = "SandboxUnavailableError";
  }
}
