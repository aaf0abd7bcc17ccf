/**
 * The messages between the runtime and its pool workers. A batch travels in columns:
 * event bodies concatenated in one transferred buffer, sequences in a typed array, and
 * per-key states as JSON text, so neither side builds or clones an object per event
 * it does not need.
 */

/** One batch of one processor: several keys, each with its events in order. */
export interface BatchTask {
  readonly op: "batch";
  readonly kind: string;
  /** The processor's validated options (structured-cloned). */
  readonly options: unknown;
  /** Per key: tenant, key, and the state as JSON (`null`: a key never seen). */
  readonly tenants: readonly string[];
  readonly keys: readonly string[];
  readonly states: ReadonlyArray<string | null>;
  /**
   * Per event: index into `keys`, sequence, and the message as received: its NATS header
   * block in `body[offsets[i]..headerEnds[i]]` (the worker reads `Flex-Type` and `Flex-Time`
   * from it, so the runtime's thread does not decode headers), its body in
   * `body[headerEnds[i]..offsets[i+1]]`; `storedAt` (ms) stands in for a missing `Flex-Time`.
   */
  readonly keyIndex: Uint32Array;
  readonly seqs: Float64Array;
  readonly storedAt: Float64Array;
  /** Subjects joined with `\n` (subjects hold none): one string clones far cheaper than an array of a thousand. */
  readonly subjects: string;
  readonly body: Uint8Array;
  readonly offsets: Uint32Array;
  readonly headerEnds: Uint32Array;
}

/** A key whose events failed: its state and outputs are left out of the result. */
export interface KeyFailure {
  readonly keyIndex: number;
  readonly name: string;
  readonly code: string | undefined;
  readonly message: string;
}

/** The result of a {@link BatchTask}. */
export interface BatchResult {
  /** New state JSON per key (`null` for a failed key). */
  readonly states: ReadonlyArray<string | null>;
  /** Outputs in columns: source event index, output index within it, type, key override, JSON body. */
  readonly outEvent: Uint32Array;
  readonly outIndex: Uint32Array;
  readonly outTypes: readonly string[];
  readonly outKeys: ReadonlyArray<string | null>;
  readonly outBody: Uint8Array;
  readonly outOffsets: Uint32Array;
  readonly failures: readonly KeyFailure[];
}

/** A typed-array scoring task (the `anomaly` kernel): the pool's fast path for numeric series. */
export interface SeriesTask {
  readonly op: "series";
  readonly kind: string;
  readonly options: unknown;
  readonly key: string;
  /** State JSON (`null`: new key). */
  readonly state: string | null;
  readonly values: Float64Array;
}

export interface SeriesResult {
  readonly state: string;
  readonly scores: Float64Array;
  readonly flags: Uint8Array;
  readonly flagged: number;
}

/** Runs a processor on plain inputs (workflows, tools): state and outputs as values. */
export interface InvokeTask {
  readonly op: "invoke";
  readonly kind: string;
  readonly options: unknown;
  readonly state: unknown;
  readonly inputs: readonly unknown[];
}

/** Test hooks: a task that throws or exhausts the worker's heap. */
export interface FaultTask {
  readonly op: "fault";
  readonly fault: "throw" | "oom" | "exit";
}

/** Loads the worker's modules (start-up warm-up); answers the kinds it knows. */
export interface PingTask {
  readonly op: "ping";
}

export type WorkerTask = BatchTask | SeriesTask | InvokeTask | FaultTask | PingTask;
