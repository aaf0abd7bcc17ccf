import { existsSync } from "node:fs";
import { chmod, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { availableParallelism, tmpdir } from "node:os";
import { InvalidOptionError, processAlive } from "../../streams/index.js";
import { ChildPool } from "./child-pool.js";
import { SandboxNetworkUnavailableError, SandboxUnavailableError } from "./errors.js";
import { sandboxSupport } from "./sandbox.js";
import { resolveLimits, validateScriptSpec } from "./spec.js";
import { TrustedPool } from "./trusted.js";
import type { ScriptLimits, ScriptResult, ScriptRunner, ScriptRunnerOptions, ScriptSpec } from "./types.js";

/** Prefix of the per-process folder of working directories: `flexcore-steps-<pid>-XXXXXX`. */
export const WORK_PREFIX = "flexcore-steps-";

/** Deletes the working-directory folders of processes that no longer exist. */
export async function sweepStaleWorkDirs(workRoot: string): Promise<string[]> {
  const swept: string[] = [];
  for (const name of await readdir(workRoot).catch(() => [] as string[])) {
    const m = /^flexcore-steps-(\d+)-/.exec(name);
    if (!m || processAlive(Number(m[1]))) continue;
    await rm(join(workRoot, name), { recursive: true, force: true }).catch(() => undefined);
    swept.push(name);
  }
  return swept;
}

function defaultPython(): string {
  return existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
}

/**
 * Creates a {@link ScriptRunner}. Untrusted steps run in bubblewrap (see {@link sandboxSupport});
 * where it cannot run they are refused, unless `sandbox: "plain"` was chosen explicitly.
 * @throws SandboxUnavailableError when `sandbox: "bwrap"` and bubblewrap cannot run
 */
export async function createScriptRunner(options: ScriptRunnerOptions = {}): Promise<ScriptRunner> {
  const sandbox = options.sandbox ?? "auto";
  if (sandbox !== "auto" && sandbox !== "bwrap" && sandbox !== "plain") throw new InvalidOptionError("sandbox", sandbox, '"auto", "bwrap" or "plain"');
  const limits = resolveLimits(options.limits);
  const positive = (field: string, v: number | undefined): number | undefined => {
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new InvalidOptionError(field, v, "an integer from 1 and up");
    return v;
  };
  const maxConcurrent = positive("maxConcurrent", options.maxConcurrent) ?? availableParallelism();
  const trustedThreads = positive("trustedThreads", options.trustedThreads);
  for (const field of ["bwrapPath", "pastaPath"] as const) {
    const v = options[field];
    if (v !== undefined && (typeof v !== "string" || !v.startsWith("/"))) throw new InvalidOptionError(field, v, "an absolute path");
  }
  const support = await sandboxSupport({ bwrapPath: options.bwrapPath, pastaPath: options.pastaPath });
  if (sandbox === "bwrap" && support.bwrapProblem) throw new SandboxUnavailableError(support.bwrapProblem);
  // Fail closed: without bubblewrap, `auto` refuses untrusted steps; only an explicit `plain` runs them bare.
  const mode = sandbox === "plain" ? "plain" : support.bwrapProblem ? "none" : "bwrap";
  const workRoot = options.workRoot ?? tmpdir();
  const info = await stat(workRoot).catch(() => undefined);
  if (!info?.isDirectory()) throw new InvalidOptionError("workRoot", workRoot, "an existing directory");
  // Steps run as uid 65534: it must be able to reach its working directory.
  if (support.dropsPrivileges && (info.mode & 0o001) === 0) throw new InvalidOptionError("workRoot", workRoot, "a directory others may traverse (mode o+x), since steps run as uid 65534");
  await sweepStaleWorkDirs(workRoot);
  // Working directories live in a folder named after this process: one left by a process
  // that was killed (kill -9 cannot clean up) is swept by the next runner on this machine.
  const base = await mkdtemp(join(workRoot, `${WORK_PREFIX}${process.pid}-`));
  await chmod(base, 0o711);
  return new ScriptStepRunner(mode, support, {
    workRoot: base,
    interpreters: { python: options.python ?? defaultPython(), node: options.node ?? process.execPath, bash: options.bash ?? "/bin/bash" },
    limits,
    maxConcurrent,
    trustedThreads,
  });
}

interface RunnerConfig {
  readonly workRoot: string;
  readonly interpreters: { readonly python: string; readonly node: string; readonly bash: string };
  readonly limits: ScriptLimits;
  readonly maxConcurrent: number;
  readonly trustedThreads: number | undefined;
}

class ScriptStepRunner implements ScriptRunner {
  readonly isolation: "bwrap" | "plain" | "none";
  readonly #support: Awaited<ReturnType<typeof sandboxSupport>>;
  readonly #config: RunnerConfig;
  #trusted: TrustedPool | undefined;
  #children: ChildPool | undefined;
  #closed = false;

  constructor(mode: "bwrap" | "plain" | "none", support: Awaited<ReturnType<typeof sandboxSupport>>, config: RunnerConfig) {
    this.isolation = mode;
    this.#support = support;
    this.#config = config;
  }

  async run(spec: ScriptSpec, input: unknown, options: { readonly signal?: AbortSignal } = {}): Promise<ScriptResult> {
    if (this.#closed) throw new InvalidOptionError("runner", "closed", "an open script runner");
    validateScriptSpec(spec);
    const limits = resolveLimits(spec.limits, this.#config.limits);
    const env: Record<string, string> = {};
    for (const name of spec.envAllow ?? []) {
      const v = process.env[name];
      if (v !== undefined) env[name] = v;
    }
    Object.assign(env, spec.env ?? {});
    if (spec.trusted === true) {
      this.#trusted ??= new TrustedPool(this.#config.trustedThreads, this.#config.limits.memoryMb);
      return this.#trusted.run(spec.source, input, env, limits, options.signal);
    }
    // Refused before anything is created: no working directory, no process.
    if (this.isolation === "none") throw new SandboxUnavailableError(this.#support.bwrapProblem ?? "bubblewrap cannot run here");
    if (this.isolation === "bwrap" && spec.network === true && !this.#support.pastaPath) {
      throw new SandboxNetworkUnavailableError(this.#support.pastaProblem ?? "pasta cannot run here");
    }
    const mode = this.isolation;
    this.#children ??= new ChildPool(this.#config.maxConcurrent, this.#config.interpreters.bash);
    return this.#children.run(
      {
        language: spec.language,
        source: spec.source,
        input,
        env,
        limits,
        network: spec.network === true,
        mode,
        support: this.#support,
        workRoot: this.#config.workRoot,
        interpreters: this.#config.interpreters,
      },
      options.signal,
    );
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all([this.#trusted?.close(), this.#children?.close()]);
    await rm(this.#config.workRoot, { recursive: true, force: true }).catch(() => undefined);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
