import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { MessageChannel } from "node:worker_threads";
import type { MessagePort } from "node:worker_threads";
import { Piscina } from "piscina";
import { CANCEL } from "./child-worker.js";
import type { ChildTask } from "./child-worker.js";
import type { ChildRun } from "./child.js";
import type { ScriptResult } from "./types.js";

/** How long {@link ChildPool.close} waits for cancelled steps to report before it stops the threads, in ms. */
const CLOSE_GRACE_MS = 5_000;

/**
 * Threads for `concurrency` steps at once: the largest divisor of `concurrency` up to the
 * number of CPUs, so threads × tasks per thread is exactly `concurrency`. Supervising a child
 * is mostly waiting, so a thread takes several; more threads only spread the parsing of outputs.
 */
export function supervisorThreads(concurrency: number, cpus = availableParallelism()): number {
  for (let t = Math.max(1, Math.min(cpus, concurrency)); t > 1; t--) if (concurrency % t === 0) return t;
  return 1;
}

/**
 * A Piscina pool whose worker threads spawn and supervise child-process steps; Piscina's
 * queue is what holds steps beyond `concurrency`. A step is cancelled through a
 * `MessagePort` sent with it, never by Piscina's abort (which terminates the thread and
 * would leave the step's process group running).
 */
export class ChildPool {
  readonly #pool: Piscina<ChildTask, ScriptResult>;
  readonly #bash: string;
  readonly #inFlight = new Set<{ readonly port: MessagePort; readonly done: Promise<unknown> }>();

  constructor(concurrency: number, bash: string) {
    const here = import.meta.url;
    // From source (tests, tsx) the worker is TypeScript: load it through tsx.
    const ts = here.endsWith(".ts");
    const threads = supervisorThreads(concurrency);
    this.#bash = bash;
    this.#pool = new Piscina<ChildTask, ScriptResult>({
      filename: fileURLToPath(new URL(ts ? "./child-worker.ts" : "./child-worker.js", here)),
      minThreads: 1,
      maxThreads: threads,
      concurrentTasksPerWorker: concurrency / threads,
      idleTimeout: 30_000,
      // The thread's event loop must keep running between tasks (pipes to children, the watchdog).
      atomics: "disabled",
      env: {},
      ...(ts ? { execArgv: ["--import", "tsx"] } : { execArgv: [] }),
    });
  }

  /** Runs one step; resolves with its result whatever it did, also when `signal` cancels it. */
  async run(run: Omit<ChildRun, "signal" | "groups" | "markPrefix">, signal: AbortSignal | undefined): Promise<ScriptResult> {
    const { port1, port2 } = new MessageChannel();
    const cancel = (): void => port1.postMessage(CANCEL);
    if (signal?.aborted) cancel();
    else signal?.addEventListener("abort", cancel, { once: true });
    const done = this.#pool.run({ run, port: port2, bash: this.#bash }, { transferList: [port2] });
    const entry = { port: port1, done: done.catch(() => undefined) };
    this.#inFlight.add(entry);
    try {
      return await done;
    } finally {
      signal?.removeEventListener("abort", cancel);
      this.#inFlight.delete(entry);
      port1.close();
    }
  }

  /** Steps waiting in the queue plus running ones. */
  get pending(): number {
    return this.#inFlight.size;
  }

  /** Cancels every step (their groups are killed), waits for them to report, then stops the threads. */
  async close(): Promise<void> {
    const all = [...this.#inFlight];
    for (const e of all) e.port.postMessage(CANCEL);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(all.map((e) => e.done)), new Promise((r) => (timer = setTimeout(r, CLOSE_GRACE_MS)))]);
    clearTimeout(timer);
    await this.#pool.destroy();
  }
}
