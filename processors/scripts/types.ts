/** Languages a script step can be written in. */
export type ScriptLanguage = "javascript" | "python" | "bash";

/** Per-step resource limits. Every field has a default; see the `DEFAULT_*` constants. */
export interface ScriptLimits {
  /** Wall-clock time before the whole process tree is killed, in ms. @default 10000 */
  readonly timeoutMs: number;
  /** Address space (Python, Bash) or data segment + V8 heap (JavaScript), in MiB. @default 256 */
  readonly memoryMb: number;
  /** CPU time, in seconds (`RLIMIT_CPU`). @default 10 */
  readonly cpuSeconds: number;
  /** Processes and threads the step's user may have (`RLIMIT_NPROC`). @default 64 */
  readonly maxProcesses: number;
  /** Largest JSON result, in bytes; a bigger one fails the step. @default 1048576 (1 MiB) */
  readonly maxOutputBytes: number;
  /** stdout and stderr kept each, in bytes; the rest is dropped and `truncated` set. @default 262144 (256 KiB) */
  readonly maxLogBytes: number;
  /** Largest file the step may write, and size of its private `/tmp`, in bytes. @default 67108864 (64 MiB) */
  readonly maxFileBytes: number;
}

/** A script to run. */
export interface ScriptSpec {
  readonly language: ScriptLanguage;
  /**
   * The code. JavaScript (CommonJS, `require` available) and Python define `main(args)` and
   * return JSON-serialisable data (JavaScript may return a promise). Bash reads the input JSON
   * on stdin (and in `$FLEX_INPUT`) and prints its JSON result as the last line of stdout.
   */
  readonly source: string;
  /**
   * Operator-installed JavaScript that may run in a worker thread of this process (fast, no
   * process isolation, V8 `resourceLimits` only). Never set it for tenant code. @default false
   */
  readonly trusted?: boolean;
  /**
   * Let the step reach the network: outbound connections, in a network namespace of its own
   * (pasta) from which the host's loopback services (NATS, the gateway) are out of reach.
   * Refused with `SandboxNetworkUnavailableError` where pasta cannot run. @default false
   */
  readonly network?: boolean;
  /** Environment variables given to the step (nothing of the host's environment is passed otherwise). */
  readonly env?: Readonly<Record<string, string>>;
  /** Names of host environment variables the operator allows through (explicit allowlist). @default [] */
  readonly envAllow?: readonly string[];
  readonly limits?: Partial<ScriptLimits>;
}

/** How a step ended. */
export type ScriptStatus =
  /** Exit 0 and a JSON result. */
  | "succeeded"
  /** Non-zero exit, an exception, or no/invalid JSON result. */
  | "failed"
  /** Killed at `timeoutMs` (or aborted). */
  | "timeout"
  /** Killed by a signal or a resource limit (CPU, memory, output size). */
  | "killed";

/** What running a script produced. */
export interface ScriptResult {
  readonly status: ScriptStatus;
  /** The JSON result (`null` when there is none). */
  readonly output: unknown;
  readonly exitCode: number | null;
  readonly signal: string | null;
  /** Wall-clock duration, in ms. */
  readonly durationMs: number;
  readonly stdout: string;
  readonly stderr: string;
  /** Whether stdout / stderr were cut at `maxLogBytes`. */
  readonly truncated: { readonly stdout: boolean; readonly stderr: boolean };
  /** Why the step did not succeed, for people. */
  readonly error?: string;
  /** Where it ran: `bwrap` sandbox, `plain` child process with rlimits, or a trusted `worker` thread. */
  readonly isolation: "bwrap" | "plain" | "worker";
}

/** Options of {@link createScriptRunner}. */
export interface ScriptRunnerOptions {
  /**
   * `auto`: bubblewrap when it works here; when it does not, untrusted steps are refused with
   * `SandboxUnavailableError` (trusted JavaScript still runs). `bwrap`: creating the runner
   * fails with `SandboxUnavailableError` when it does not. `plain`: never sandbox (child
   * processes with rlimits that can read what their user may read and reach the network):
   * only an operator's explicit choice.
   * @default "auto"
   */
  readonly sandbox?: "auto" | "bwrap" | "plain";
  /** bubblewrap binary, for tests and unusual installs. @default "/usr/bin/bwrap" */
  readonly bwrapPath?: string;
  /** pasta binary (package `passt`) that networks `network: true` steps, for tests and unusual installs. @default "/usr/bin/pasta" */
  readonly pastaPath?: string;
  /** Parent of the per-run working directories. @default os.tmpdir() */
  readonly workRoot?: string;
  /**
   * Child-process (untrusted) steps running at once: the size of the Piscina pool whose worker
   * threads spawn and supervise them; more wait in its queue. @default the number of CPUs
   */
  readonly maxConcurrent?: number;
  /** Worker threads for trusted JavaScript. @default the number of CPUs */
  readonly trustedThreads?: number;
  /** Interpreters. @default /usr/bin/python3 (else python3 on PATH), this Node binary, /bin/bash */
  readonly python?: string;
  readonly node?: string;
  readonly bash?: string;
  /** Defaults for limits a step does not set. */
  readonly limits?: Partial<ScriptLimits>;
}

/** Runs script steps. */
export interface ScriptRunner extends AsyncDisposable {
  /**
   * Runs one script with a JSON input. Resolves with the result whatever the script did;
   * rejects only for bad arguments or when the runner cannot start the script at all
   * (`SandboxUnavailableError`, `SandboxNetworkUnavailableError`: then nothing ran).
   */
  run(spec: ScriptSpec, input: unknown, options?: { readonly signal?: AbortSignal }): Promise<ScriptResult>;
  /** How untrusted steps run: `bwrap`, `plain`, or `none` (refused: bubblewrap cannot run here and `plain` was not chosen). */
  readonly isolation: "bwrap" | "plain" | "none";
  close(): Promise<void>;
}
