import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { Piscina } from "piscina";
import type { TrustedReply, TrustedTask } from "./trusted-worker.js";
import type { ScriptLimits, ScriptResult } from "./types.js";

/** A Piscina pool running trusted JavaScript steps in worker threads. */
export class TrustedPool {
  readonly #pool: Piscina<TrustedTask, TrustedReply>;

  constructor(threads: number | undefined, memoryMb: number) {
    const here = import.meta.url;
    // From source (tests, tsx) the worker is TypeScript: load it through tsx.
    const ts = here.endsWith(".ts");
    const filename = fileURLToPath(new URL(ts ? "./trusted-worker.ts" : "./trusted-worker.js", here));
    const n = threads ?? availableParallelism();
    this.#pool = new Piscina<TrustedTask, TrustedReply>({
      filename,
      minThreads: 1,
      maxThreads: n,
      idleTimeout: 30_000,
      // Several tasks in flight per thread: async steps overlap, sync ones queue cheaply.
      concurrentTasksPerWorker: 4,
      resourceLimits: { maxOldGenerationSizeMb: memoryMb, maxYoungGenerationSizeMb: Math.max(16, Math.floor(memoryMb / 8)) },
      env: {},
      ...(ts ? { execArgv: ["--import", "tsx"] } : { execArgv: [] }),
    });
  }

  async run(source: string, input: unknown, env: Readonly<Record<string, string>>, limits: ScriptLimits, signal: AbortSignal | undefined): Promise<ScriptResult> {
    const started = performance.now();
    // One controller and one timer per task (AbortSignal.any/timeout cost more per call).
    const ctrl = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctrl.abort();
    }, limits.timeoutMs);
    const onAbort = (): void => ctrl.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) ctrl.abort();
    const both = ctrl.signal;
    const base = { exitCode: null, signal: null, isolation: "worker" as const };
    try {
      const reply = await this.#pool.run({ source, input, env, maxLogBytes: limits.maxLogBytes }, { signal: both }).finally(() => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      });
      const durationMs = performance.now() - started;
      const logs = { stdout: reply.stdout, stderr: reply.stderr, truncated: reply.truncated };
      if (!reply.ok) return { ...base, ...logs, exitCode: 1, durationMs, status: "failed", output: null, error: reply.error ?? "failed" };
      if ((reply.json?.length ?? 0) > limits.maxOutputBytes) {
        return { ...base, ...logs, durationMs, status: "killed", output: null, error: `the result is over maxOutputBytes (${limits.maxOutputBytes})` };
      }
      return { ...base, ...logs, exitCode: 0, durationMs, status: "succeeded", output: JSON.parse(reply.json ?? "null") as unknown };
    } catch (err) {
      const durationMs = performance.now() - started;
      const empty = { stdout: "", stderr: "", truncated: { stdout: false, stderr: false } };
      if (both.aborted) {
        const why = timedOut ? `timed out after ${limits.timeoutMs} ms; the worker thread was terminated` : "aborted; the worker thread was terminated";
        return { ...base, ...empty, durationMs, status: "timeout", output: null, error: why };
      }
      // A worker that hit its resourceLimits dies with ERR_WORKER_OUT_OF_MEMORY.
      return { ...base, ...empty, durationMs, status: "killed", output: null, error: `the worker thread died: ${(err as Error).message}` };
    }
  }

  async close(): Promise<void> {
    await this.#pool.destroy();
  }
}
