import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { Piscina } from "piscina";
import { InvalidOptionError } from "../streams/index.js";
import { RuntimeClosedError } from "./errors.js";
import type { BatchResult, BatchTask, FaultTask, SeriesResult, SeriesTask } from "./task.js";
import type { ProcessorOutput } from "./types.js";

/** Heap limit of a worker, in MiB. */
export const DEFAULT_WORKER_MEMORY_MB = 512;

/** Options of {@link createProcessorPool}. */
export interface ProcessorPoolOptions {
  /** Worker threads. @default availableParallelism() */
  readonly threads?: number;
  /** Per-worker old-generation heap limit in MiB; 0 keeps Node's default. @default 512 */
  readonly workerMemoryMb?: number;
  /** URLs of extra modules exporting `definitions: ProcessorDefinition[]`, loaded by each worker. */
  readonly modules?: readonly string[];
}

/** The result of {@link ProcessorPool.invoke}. */
export interface InvokeResult {
  readonly state: unknown;
  readonly outputs: ReadonlyArray<readonly ProcessorOutput[]>;
}

/**
 * A Piscina pool running processor tasks. A task that throws rejects; a worker that dies
 * (out of memory, `process.exit`) rejects its task and is replaced by a fresh one.
 */
export interface ProcessorPool extends AsyncDisposable {
  runBatch(task: BatchTask, signal?: AbortSignal): Promise<BatchResult>;
  runSeries(task: SeriesTask, signal?: AbortSignal): Promise<SeriesResult>;
  /** Runs `kind` on plain inputs with validated options (see `ProcessorRuntime.invoke`). */
  invoke(kind: string, options: unknown, inputs: readonly unknown[], state?: unknown, signal?: AbortSignal): Promise<InvokeResult>;
  /** Loads the worker code in every thread (so the first batch does not pay for it); resolves with the kinds the workers know. */
  warmUp(): Promise<readonly string[]>;
  /** Test hook: a task that throws, exits its worker or exhausts its heap. */
  fault(fault: FaultTask["fault"]): Promise<unknown>;
  /** Tasks waiting for a free worker. */
  readonly queueSize: number;
  readonly threads: number;
  /** Share of time workers were busy since start, in [0, 1]. */
  readonly utilization: number;
  close(): Promise<void>;
}

/** V8 heap flags apply to the whole process; a worker thread given one fails to start. */
const PROCESS_WIDE_FLAG = /^--max-(semi|old)-space-size(=|$)/u;

/**
 * The worker file and the Node flags it needs: the compiled `worker.js` next to this
 * file, or, when FlexCore runs from its TypeScript sources, `worker-source.mjs`, which
 * registers tsx in the worker thread and loads `worker.ts`.
 */
export function workerEntry(): { filename: string; execArgv: string[] } {
  const fromSource = import.meta.url.endsWith(".ts");
  const filename = fileURLToPath(new URL(fromSource ? "./worker-source.mjs" : "./worker.js", import.meta.url));
  return { filename, execArgv: process.execArgv.filter((a) => !PROCESS_WIDE_FLAG.test(a)) };
}

/** Creates the worker pool. */
export function createProcessorPool(options: ProcessorPoolOptions = {}): ProcessorPool {
  const threads = options.threads ?? availableParallelism();
  if (!Number.isInteger(threads) || threads < 1) throw new InvalidOptionError("threads", threads, "an integer from 1 and up");
  const memory = options.workerMemoryMb ?? DEFAULT_WORKER_MEMORY_MB;
  if (!Number.isInteger(memory) || memory < 0) throw new InvalidOptionError("workerMemoryMb", memory, "an integer from 0 and up");
  const { filename, execArgv } = workerEntry();
  const piscina = new Piscina({
    filename,
    execArgv,
    minThreads: threads,
    maxThreads: threads,
    // Unbounded here on purpose: the runtime bounds what it submits (one task per partition,
    // fetching only while the queue is short), and a queue-full rejection would look like a
    // processing failure and dead-letter healthy events.
    maxQueue: Number.POSITIVE_INFINITY,
    idleTimeout: 60_000,
    workerData: { modules: [...(options.modules ?? [])] },
    ...(memory > 0 ? { resourceLimits: { maxOldGenerationSizeMb: memory, maxYoungGenerationSizeMb: Math.min(64, Math.max(8, memory >> 3)) } } : {}),
  });
  // A worker that dies is replaced by Piscina; its task rejects. Nothing else to do here.
  piscina.on("error", () => undefined);
  let closed = false;
  const run = async <R>(task: unknown, transferList: ArrayBuffer[], signal?: AbortSignal): Promise<R> => {
    if (closed) throw new RuntimeClosedError("a pool task");
    return (await piscina.run(task, { transferList, ...(signal ? { signal } : {}) })) as R;
  };
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await piscina.close();
  };
  return {
    runBatch: (task, signal) =>
      run<BatchResult>(
        task,
        [task.body.buffer as ArrayBuffer, task.offsets.buffer as ArrayBuffer, task.headerEnds.buffer as ArrayBuffer, task.keyIndex.buffer as ArrayBuffer, task.seqs.buffer as ArrayBuffer, task.storedAt.buffer as ArrayBuffer],
        signal,
      ),
    runSeries: (task, signal) => run<SeriesResult>(task, [task.values.buffer as ArrayBuffer], signal),
    invoke: (kind, opts, inputs, state, signal) => run<InvokeResult>({ op: "invoke", kind, options: opts, inputs, state }, [], signal),
    fault: (fault) => run<unknown>({ op: "fault", fault }, []),
    warmUp: async () => {
      // One task per thread: with every worker busy, each one loads the code.
      const answers = await Promise.all(Array.from({ length: threads }, () => run<string[]>({ op: "ping" }, [])));
      return answers[0] ?? [];
    },
    get queueSize() {
      return piscina.queueSize;
    },
    threads,
    get utilization() {
      return piscina.utilization;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
