import { DeliverPolicy } from "@nats-io/jetstream";
import type { ConsumerMessages, JetStreamClient, JsMsg } from "@nats-io/jetstream";
import { eventFromJsMsg } from "../streams/index.js";
import type { StoredEvent } from "../streams/index.js";
import type { BatchOutcome, DeadLetterFn, Member } from "./member.js";
import type { SourceStream } from "./projection.js";

/** Most events applied in one transaction. */
export const DEFAULT_BATCH_SIZE = 16_384;
/** Messages an ordered consumer keeps in flight. */
const CONSUMER_WINDOW = 16_384;
/**
 * While the server says more messages are pending (a catch-up), a batch waits until it
 * holds this many events or {@link MAX_BATCH_WAIT_MS} passed: each batch is one fsync per
 * projection with synchronous=FULL, and what one socket read brings (~300 events) is far
 * too little to pay for it. A caught-up stream is applied at once (latency).
 */
const MIN_CATCHUP_BATCH = 4_096;
const MAX_BATCH_WAIT_MS = 25;
/** Wait before retrying a batch that failed for a reason other than `apply` (e.g. the DLQ was unreachable). */
const RETRY_DELAY_MS = 1_000;

/** Told after each member's batch, for waiters, change listeners and progress. */
export type BatchListener = (member: Member, stream: SourceStream, outcome: BatchOutcome | undefined) => void;

interface StreamReader {
  readonly stream: SourceStream;
  buffer: JsMsg[];
  messages: ConsumerMessages | undefined;
  /** Last sequence handed to the members. */
  applied: number;
  /** `num_pending` of the last message received: 0 means the stream's end was reached. */
  pending: number;
  /** Last sequence received from the server. */
  received: number;
  /** When the oldest buffered message arrived (performance.now()). */
  since: number;
}

/**
 * Reads each source stream with one ordered consumer (no acks; the checkpoint is the
 * position) and hands the same decoded batches to every member, each of which applies
 * only what it has not applied yet. Messages that arrive while a batch is applied wait in
 * a buffer, so batches grow with the load: a group commit.
 */
export class Runner {
  readonly #js: JetStreamClient;
  readonly #members = new Set<Member>();
  readonly #readers = new Map<SourceStream, StreamReader>();
  readonly #deadLetter: DeadLetterFn;
  readonly #onBatch: BatchListener;
  readonly #log: (line: string) => void;
  readonly #batchSize: number;
  #busy: Promise<void> | undefined;
  #scheduled = false;
  #paused = false;
  #closed = false;
  #retry: NodeJS.Timeout | undefined;
  #wake: NodeJS.Timeout | undefined;
  /** Events read from the streams by this runner. */
  received = 0;

  constructor(js: JetStreamClient, deadLetter: DeadLetterFn, onBatch: BatchListener, log: (line: string) => void, batchSize = DEFAULT_BATCH_SIZE) {
    this.#js = js;
    this.#deadLetter = deadLetter;
    this.#onBatch = onBatch;
    this.#log = log;
    this.#batchSize = batchSize;
  }

  get members(): ReadonlySet<Member> {
    return this.#members;
  }

  /** Sequence the runner has handed to its members for `stream` (0 if it does not read it). */
  applied(stream: SourceStream): number {
    return this.#readers.get(stream)?.applied ?? 0;
  }

  /** Last sequence received per stream and what the server said was left after it. */
  readerState(stream: SourceStream): { received: number; pending: number } | undefined {
    const r = this.#readers.get(stream);
    return r ? { received: r.received, pending: r.pending + r.buffer.length } : undefined;
  }

  /**
   * Adds members. A stream no member read yet gets a consumer from the lowest position
   * among them; a stream read already is read again from there when a new member is
   * behind it (the others skip what they have).
   */
  async add(...members: Member[]): Promise<void> {
    for (const m of members) this.#members.add(m);
    const streams = new Set(members.flatMap((m) => [...m.streams.keys()]));
    for (const stream of streams) {
      const start = Math.min(...members.filter((m) => m.streams.has(stream)).map((m) => m.position(stream)));
      const reader = this.#readers.get(stream);
      if (reader && start >= reader.applied) continue;
      if (reader) {
        await this.#busy;
        await reader.messages?.close().catch(() => undefined);
        reader.buffer = [];
      }
      await this.#open(stream, reader ? Math.min(start, reader.applied) : start);
    }
  }

  remove(member: Member): void {
    this.#members.delete(member);
  }

  async #open(stream: SourceStream, position: number): Promise<void> {
    const reader: StreamReader = { stream, buffer: [], messages: undefined, applied: position, pending: 0, received: position, since: 0 };
    this.#readers.set(stream, reader);
    const consumer = await this.#js.consumers.get(stream, position > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: position + 1 } : { deliver_policy: DeliverPolicy.All });
    reader.messages = await consumer.consume({
      max_messages: CONSUMER_WINDOW,
      callback: (m) => {
        if (reader.buffer.length === 0) reader.since = performance.now();
        reader.buffer.push(m);
        reader.received = m.seq;
        reader.pending = m.info.pending;
        this.received += 1;
        this.#schedule();
      },
    });
    this.#schedule();
  }

  /** Stops applying after the current batch; messages keep arriving into the buffer. */
  async pause(): Promise<void> {
    this.#paused = true;
    await this.#busy;
  }

  resume(): void {
    this.#paused = false;
    this.#schedule();
  }

  /** Waits for the current batch, stops the consumers and drops what is buffered. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#retry);
    clearTimeout(this.#wake);
    await this.#busy;
    for (const r of this.#readers.values()) {
      r.buffer = [];
      await r.messages?.close().catch(() => undefined);
    }
    this.#readers.clear();
  }

  // Whether a reader's buffer should be applied now (see MIN_CATCHUP_BATCH).
  #ready(r: StreamReader, now: number): boolean {
    if (r.buffer.length === 0) return false;
    return r.pending === 0 || r.buffer.length >= Math.min(MIN_CATCHUP_BATCH, this.#batchSize) || now - r.since >= MAX_BATCH_WAIT_MS;
  }

  #schedule(): void {
    if (this.#scheduled || this.#busy || this.#paused || this.#closed) return;
    this.#scheduled = true;
    // After the I/O callbacks of this turn: everything that arrived together is one batch.
    setImmediate(() => {
      this.#scheduled = false;
      if (this.#busy || this.#paused || this.#closed) return;
      this.#busy = this.#drain().finally(() => {
        this.#busy = undefined;
        const now = performance.now();
        const readers = [...this.#readers.values()];
        if (readers.some((r) => this.#ready(r, now))) this.#schedule();
        else if (readers.some((r) => r.buffer.length > 0)) this.#wakeLater(now);
      });
    });
  }

  // A partial catch-up batch is applied when its wait is over, even if nothing else arrives.
  #wakeLater(now: number): void {
    if (this.#wake || this.#closed) return;
    const due = Math.min(...[...this.#readers.values()].filter((r) => r.buffer.length > 0).map((r) => r.since + MAX_BATCH_WAIT_MS));
    this.#wake = setTimeout(() => {
      this.#wake = undefined;
      this.#schedule();
    }, Math.max(1, Math.ceil(due - now)));
  }

  // One batch per stream, then back to the event loop (the caller schedules the next
  // turn): timers, queries and I/O keep running during a long catch-up.
  async #drain(): Promise<void> {
    const now = performance.now();
    for (const reader of this.#readers.values()) {
      if (this.#paused || this.#closed) return;
      if (!this.#ready(reader, now)) continue;
      const msgs = reader.buffer.length <= this.#batchSize ? reader.buffer : reader.buffer.slice(0, this.#batchSize);
      reader.buffer = msgs === reader.buffer ? [] : reader.buffer.slice(this.#batchSize);
      reader.since = performance.now();
      try {
        await this.#apply(reader, msgs);
      } catch (err) {
        reader.buffer = msgs.concat(reader.buffer);
        this.#log(`flexcore: projections: a batch of ${reader.stream} failed, retrying in ${RETRY_DELAY_MS} ms: ${(err as Error).message}`);
        this.#paused = true;
        this.#retry = setTimeout(() => this.resume(), RETRY_DELAY_MS);
        return;
      }
    }
  }

  async #apply(reader: StreamReader, msgs: readonly JsMsg[]): Promise<void> {
    const stream = reader.stream;
    let floor = Number.POSITIVE_INFINITY;
    for (const m of this.#members) if (!m.stopped && m.streams.has(stream)) floor = Math.min(floor, m.position(stream));
    const events: StoredEvent[] = [];
    // Events every member has already applied (a replay) are not even decoded.
    for (const m of msgs) {
      if (m.seq <= floor) continue;
      events.push(eventFromJsMsg(m, { lazyData: true }));
    }
    const last = msgs[msgs.length - 1]!;
    const caughtUp = reader.buffer.length === 0 && last.info.pending === 0;
    for (const member of [...this.#members]) {
      if (!member.streams.has(stream)) continue;
      const outcome = await member.applyBatch(stream, events, last.seq, caughtUp, this.#deadLetter);
      this.#onBatch(member, stream, outcome);
    }
    reader.applied = last.seq;
  }
}
