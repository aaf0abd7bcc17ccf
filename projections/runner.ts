import type { NatsConnection } from "@nats-io/transport-node";
import { openStreamReader } from "../streams/index.js";
import type { StoredEvent, StreamReader } from "../streams/index.js";
import type { BatchOutcome, DeadLetterFn, Member, WindowLimits } from "./member.js";
import type { SourceStream } from "./projection.js";

/** Most events of a projection without `fold` in one transaction. */
export const DEFAULT_PROJECTION_BATCH_SIZE = 16_384;
/**
 * Most events of a projection with `fold` in one transaction. Folding holds one entry per
 * key (aggregate, summary row), not the events, so a catch-up can write each key once per
 * large window: with synchronous=FULL each window is one fsync per projection.
 */
export const DEFAULT_FOLD_WINDOW = 262_144;
/**
 * Longest a window stays open while the server says many events are pending (a
 * catch-up). A live stream is committed at once (latency; see {@link LIVE_PENDING}).
 * Long enough for a full fold window at the engine's catch-up rate (~190k events/s):
 * each window writes every key it touched, so fewer windows write less.
 */
export const MAX_WINDOW_MS = 2_000;
/**
 * With fewer events than this pending on the server, a stream counts as live and its
 * windows are committed at once (latency). Under a steady flow the server rarely reports
 * exactly 0 pending, so waiting for 0 would hold live events for {@link MAX_WINDOW_MS}.
 */
export const LIVE_PENDING = 1_024;
/**
 * A live stream that fell behind by less than this (the process paused for a GC or a
 * slow fsync) is not a catch-up: its windows close after {@link NEAR_LIVE_WINDOW_MS}, so
 * a 100 ms pause does not turn into a 2 s wait for the window to fill.
 */
export const NEAR_LIVE_PENDING = 16_384;
export const NEAR_LIVE_WINDOW_MS = 50;
/** Messages a stream's reader keeps in flight. */
export const READ_WINDOW = 16_384;
/** Events buffered for the members past which the reader stops asking for more. */
export const BUFFER_HIGH_WATER = 4 * READ_WINDOW;
/** Wait before retrying a commit that failed for a reason other than `apply` (e.g. the DLQ was unreachable). */
const RETRY_DELAY_MS = 1_000;

/** Told after each member's batch, for waiters, change listeners and progress. */
export type BatchListener = (member: Member, stream: SourceStream, outcome: BatchOutcome | undefined) => void;

interface SourceReader {
  readonly stream: SourceStream;
  buffer: StoredEvent[];
  reader: StreamReader | undefined;
  /** Last sequence handed to the members. */
  applied: number;
  /** `num_pending` of the last message received: 0 means the stream's end was reached. */
  pending: number;
  /** Last sequence received from the server. */
  received: number;
}

/**
 * Reads each source stream with one ordered reader (`openStreamReader`: no acks; the
 * checkpoint is the position) and hands the same decoded events to every member as they arrive, each of
 * which takes only what it has not been handed yet: a projection with `fold` folds them
 * into memory at once. A member's window is committed (rows + checkpoint, one
 * transaction) when its stream is live (fewer than {@link LIVE_PENDING} events pending),
 * when it holds `foldWindow` (`batchSize` without `fold`) events, or after
 * {@link MAX_WINDOW_MS}: during a catch-up, windows are large; when live, each arrival
 * is committed at once.
 */
export class ProjectionRunner {
  readonly #nc: NatsConnection;
  readonly #members = new Set<Member>();
  readonly #readers = new Map<SourceStream, SourceReader>();
  readonly #deadLetter: DeadLetterFn;
  readonly #onBatch: BatchListener;
  readonly #log: (line: string, level?: "warn" | "error") => void;
  readonly #limits: WindowLimits;
  #busy: Promise<void> | undefined;
  #scheduled = false;
  #paused = false;
  #closed = false;
  #retry: NodeJS.Timeout | undefined;
  #wake: NodeJS.Timeout | undefined;
  /** Events read from the streams by this runner. */
  received = 0;

  constructor(nc: NatsConnection, deadLetter: DeadLetterFn, onBatch: BatchListener, log: (line: string, level?: "warn" | "error") => void, limits: Partial<WindowLimits> = {}) {
    this.#nc = nc;
    this.#deadLetter = deadLetter;
    this.#onBatch = onBatch;
    this.#log = log;
    this.#limits = {
      batchSize: limits.batchSize ?? DEFAULT_PROJECTION_BATCH_SIZE,
      foldWindow: limits.foldWindow ?? DEFAULT_FOLD_WINDOW,
      windowMs: limits.windowMs ?? MAX_WINDOW_MS,
      nearLivePending: limits.nearLivePending ?? NEAR_LIVE_PENDING,
      nearLiveWindowMs: limits.nearLiveWindowMs ?? NEAR_LIVE_WINDOW_MS,
    };
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
      const start = Math.min(...members.filter((m) => m.streams.has(stream)).map((m) => m.handed(stream)));
      const reader = this.#readers.get(stream);
      if (reader && start >= reader.applied) continue;
      if (reader) {
        await this.#busy;
        await reader.reader?.close().catch(() => undefined);
        reader.buffer = [];
      }
      await this.#open(stream, reader ? Math.min(start, reader.applied) : start);
    }
  }

  remove(member: Member): void {
    this.#members.delete(member);
  }

  async #open(stream: SourceStream, position: number): Promise<void> {
    const reader: SourceReader = { stream, buffer: [], reader: undefined, applied: position, pending: 0, received: position };
    this.#readers.set(stream, reader);
    reader.reader = await openStreamReader(this.#nc, {
      stream,
      startSeq: position + 1,
      window: READ_WINDOW,
      onEvent: (e, pending) => {
        if (this.#readers.get(stream) !== reader) return;
        reader.received = e.seq;
        reader.pending = pending;
        this.received += 1;
        // Handed over (folded) at once: an event held until the next turn outlives a
        // young-generation GC and costs far more to collect.
        if (reader.buffer.length === 0 && !this.#busy && !this.#paused && !this.#closed) this.#handOne(reader, e);
        else if (reader.buffer.push(e) >= BUFFER_HIGH_WATER) reader.reader?.pause();
        this.#schedule();
      },
      onRecreate: (fromSeq, reason) => this.#log(`flexcore: projections: reading ${stream} again from ${fromSeq}: ${reason}`, "warn"),
    });
    this.#schedule();
  }

  /**
   * Stops handing events out after the current turn and commits every open window:
   * then each member's position is what the runner handed it. Messages keep arriving
   * into the buffer.
   */
  async pause(): Promise<void> {
    this.#paused = true;
    await this.#busy;
    for (const m of [...this.#members]) {
      for (const stream of m.streams.keys()) {
        const outcome = await m.commit(stream, true, this.#deadLetter);
        this.#onBatch(m, stream, outcome);
      }
    }
  }

  /**
   * Runs `fn` between two turns: no event is handed out and no window committed meanwhile
   * (events that arrive are buffered), then the runner goes on.
   */
  async exclusive<T>(fn: () => Promise<T> | T): Promise<T> {
    while (this.#busy) await this.#busy;
    let release!: () => void;
    this.#busy = new Promise<void>((r) => (release = r));
    try {
      return await fn();
    } finally {
      this.#busy = undefined;
      release();
      this.#schedule();
    }
  }

  /** Commits every open window of `member` now (before a reapply writes beside them). */
  async commitAll(member: Member): Promise<void> {
    for (const stream of member.streams.keys()) {
      const outcome = await member.commit(stream, true, this.#deadLetter);
      this.#onBatch(member, stream, outcome);
    }
  }

  resume(): void {
    this.#paused = false;
    this.#schedule();
  }

  /**
   * Waits for the current turn, stops the consumers and drops what is buffered; the
   * members' uncommitted windows are dropped too (their positions are what is committed).
   */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#retry);
    clearTimeout(this.#wake);
    await this.#busy;
    for (const r of this.#readers.values()) {
      r.buffer = [];
      await r.reader?.close().catch(() => undefined);
    }
    this.#readers.clear();
    for (const m of this.#members) m.dropWindows();
  }

  #schedule(): void {
    if (this.#scheduled || this.#busy || this.#paused || this.#closed) return;
    this.#scheduled = true;
    // After the I/O callbacks of this turn: everything that arrived together is handed out together.
    setImmediate(() => {
      this.#scheduled = false;
      if (this.#busy || this.#paused || this.#closed) return;
      this.#busy = this.#drain().finally(() => {
        this.#busy = undefined;
        if ([...this.#readers.values()].some((r) => r.buffer.length > 0)) this.#schedule();
        else this.#wakeLater();
      });
    });
  }

  // An open window is committed when its time is up, even if nothing else arrives.
  #wakeLater(): void {
    if (this.#wake || this.#closed || this.#paused) return;
    let oldest = Number.POSITIVE_INFINITY;
    for (const m of this.#members) oldest = Math.min(oldest, m.oldestWindow() ?? Number.POSITIVE_INFINITY);
    if (!Number.isFinite(oldest)) return;
    const nearLive = [...this.#readers.values()].every((r) => r.buffer.length + r.pending < this.#limits.nearLivePending);
    const windowMs = nearLive ? this.#limits.nearLiveWindowMs : this.#limits.windowMs;
    this.#wake = setTimeout(() => {
      this.#wake = undefined;
      if (this.#busy || this.#paused || this.#closed) return;
      this.#busy = this.#drain().finally(() => {
        this.#busy = undefined;
        if ([...this.#readers.values()].some((r) => r.buffer.length > 0)) this.#schedule();
        else this.#wakeLater();
      });
    }, Math.max(1, Math.ceil(oldest + windowMs - performance.now())));
  }

  // Per stream: hand out what arrived (at most batchSize), then commit the windows that
  // are due; then back to the event loop (the caller schedules the next turn): timers,
  // queries and I/O keep running during a long catch-up.
  async #drain(): Promise<void> {
    for (const reader of [...this.#readers.values()]) {
      if (this.#paused || this.#closed) return;
      const stream = reader.stream;
      if (await this.#rewind(reader)) continue;
      if (reader.buffer.length > 0) {
        const msgs = reader.buffer.length <= this.#limits.batchSize ? reader.buffer : reader.buffer.slice(0, this.#limits.batchSize);
        reader.buffer = msgs === reader.buffer ? [] : reader.buffer.slice(this.#limits.batchSize);
        this.#hand(reader, msgs);
        if (reader.buffer.length < BUFFER_HIGH_WATER / 2) reader.reader?.resume();
      }
      const caughtUp = reader.buffer.length === 0 && reader.pending < LIVE_PENDING;
      const backlog = reader.buffer.length + reader.pending;
      const now = performance.now();
      for (const member of [...this.#members]) {
        if (!member.streams.has(stream) || !member.due(stream, caughtUp, backlog, now, this.#limits)) continue;
        let outcome;
        try {
          outcome = await member.commit(stream, caughtUp, this.#deadLetter);
        } catch (err) {
          this.#log(`flexcore: projections: a commit of ${member.name} on ${stream} failed, retrying in ${RETRY_DELAY_MS} ms: ${(err as Error).message}`, "warn");
          this.#paused = true;
          this.#retry = setTimeout(() => this.resume(), RETRY_DELAY_MS);
          return;
        }
        if (outcome?.rewound) this.#log(`flexcore: projections: writing a window of ${member.name} failed (${outcome.rewound}); reading it again event by event to find the failing one`, "warn");
        this.#onBatch(member, stream, outcome);
      }
      await this.#rewind(reader);
    }
  }

  // A member must be handed events again (its window was dropped): read from there.
  async #rewind(reader: SourceReader): Promise<boolean> {
    let behind = reader.applied;
    for (const m of this.#members) if (!m.stopped && m.streams.has(reader.stream)) behind = Math.min(behind, m.handed(reader.stream));
    if (behind >= reader.applied) return false;
    await reader.reader?.close().catch(() => undefined);
    await this.#open(reader.stream, behind);
    return true;
  }

  #handOne(reader: SourceReader, e: StoredEvent): void {
    const stream = reader.stream;
    reader.applied = e.seq;
    // takeOne skips members that are stopped, do not read the stream or have the event.
    for (const member of this.#members) member.takeOne(stream, e);
  }

  #hand(reader: SourceReader, msgs: readonly StoredEvent[]): void {
    const stream = reader.stream;
    let floor = Number.POSITIVE_INFINITY;
    for (const m of this.#members) if (!m.stopped && m.streams.has(stream)) floor = Math.min(floor, m.handed(stream));
    // Events every member was already handed (a replay) are skipped.
    const events = msgs[0]!.seq > floor ? msgs : msgs.filter((e) => e.seq > floor);
    const last = msgs[msgs.length - 1]!.seq;
    for (const member of this.#members) if (member.streams.has(stream)) member.take(stream, events, last);
    reader.applied = last;
  }
}
