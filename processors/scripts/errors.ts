import { FlexError } from "../../streams/index.js";

/**
 * bubblewrap cannot run here (not installed, or no user namespaces), so an untrusted script
 * step is refused: with `sandbox: "bwrap"` when the runner is created, with `sandbox: "auto"`
 * when such a step is run. Only an explicit `sandbox: "plain"` runs them unsandboxed.
 */
export class SandboxUnavailableError extends FlexError {
  /** What the probe found, for people. */
  readonly reason: string;

  constructor(reason: string, options?: { cause?: unknown }) {
    super("FLEX_SANDBOX_UNAVAILABLE", `The bubblewrap sandbox is not available, so untrusted script steps are refused: ${reason}. Fix: install bubblewrap (\`apt-get install -y bubblewrap\`) and allow unprivileged user namespaces; or, accepting unsandboxed child processes that can read what their user may read and reach the network, set \`workflows.sandbox: plain\` (\`sandbox: "plain"\`) explicitly. \`flexcore doctor\` shows what is missing`, options);
    this.name = "SandboxUnavailableError";
    this.reason = reason;
  }
}

/**
 * A sandboxed step asked for `network: true`, and pasta (package `passt`), which gives it a
 * network namespace of its own with no way to the host's loopback services (NATS, the
 * gateway), cannot run here. The step is refused rather than given the host's network.
 */
export class SandboxNetworkUnavailableError extends FlexError {
  /** What the probe found, for people. */
  readonly reason: string;

  constructor(reason: string, options?: { cause?: unknown }) {
    super("FLEX_SANDBOX_NETWORK_UNAVAILABLE", `A script step with \`network: true\` is refused: it must get a network namespace of its own from pasta, so that it cannot reach NATS or the gateway on the host's loopback, and ${reason}. Fix: install passt (\`apt-get install -y passt\`) and let the step's user open /dev/net/tun (\`chmod 0666 /dev/net/tun\`, the usual udev default); or drop \`network: true\` from the step. \`flexcore doctor\` shows what is missing`, options);
    this.name = "SandboxNetworkUnavailableError";
    this.reason = reason;
  }
}
