import type { Database, Statement } from "better-sqlite3";
import type { StoredEvent } from "../streams/index.js";
import { ENGINE_TABLES, openWriter, readCheckpoints, readMeta, REAPPLY_POSITION_KEY, writeMeta } from "./database.js";
import type { SyncMode } from "./database.js";
import { ProjectionApplyError } from "./errors.js";
import { subjectMatcher } from "./projection.js";
import type { FailurePolicy, Projection, ProjectionFold, SourceStream, SubjectMatcher } from "./projection.js";

/** How often a checkpoint is written when a stream only brings events the projection ignores. */
export const CHECKPOINT_INTERVAL_MS = 1_000;

/** Publishes a failed event to the DLQ; resolves once it is stored. */
export type DeadLetterFn = (projection: string, stream: string, event: StoredEvent, error: unknown, policy: FailurePolicy) => Promise<void>;

/** Where a stopped projection halted. */
export interface StopPoint {
  readonly stream: string;
  /** Sequence of the event it could not apply. */
  readonly seq: number;
  readonly error: string;
}

/** What one commit did to a member. */
export interface BatchOutcome {
  /** Events whose effects were committed. */
  readonly applied: number;
  /** Events dead-lettered (or stopped at) in this commit. */
  readonly failed: number;
  /** Tenants of the applied events. */
  readonly tenants: ReadonlySet<string>;
  /**
   * Set when a fold's `write` threw: the window was dropped and the member must be fed
   * again from its position, through `apply`, so the failing event can be isolated.
   */
  readonly rewound?: string;
}

/** When a member commits what it was handed (see {@link Member.due}). */
export interface WindowLimits {
  /** Most events of a projection with `fold` in one transaction. */
  readonly foldWindow: number;
  /** Most events of a projection without `fold` in one transaction. */
  readonly batchSize: number;
  /** Longest time a window stays open while more events are pending, ms. */
  readonly windowMs: number;
  /**
   * Below this many pending events a stream is only briefly behind (a pause of the
   * process while it was live, not a catch-up): its windows close after
   * `nearLiveWindowMs` instead of `windowMs`.
   */
  readonly nearLivePending: number;
  readonly nearLiveWindowMs: number;
}

/** Events handed to a member since its last commit on one stream. */
interface Window {
  /** The projection's fold, or undefined: the events are kept for `apply`. */
  readonly fold: ProjectionFold | undefined;
  readonly events: StoredEvent[];
  /** Events folded (or kept). */
  count: number;
  last: StoredEvent | undefined;
  /** Events whose `add` threw, by sequence. */
  readonly failures: Map<number, { readonly event: StoredEvent; readonly error: unknown }>;
  /** Sequences already dead-lettered (a commit retried after the DLQ failed does not send twice). */
  readonly sent: Set<number>;
  /** With the `stop` policy: the first failed event; nothing after it is taken. */
  stopAt: number | undefined;
  readonly tenants: Set<string>;
  /** performance.now() when the first event was taken. */
  readonly opened: number;
}

interface StreamState {
  readonly matcher: SubjectMatcher;
  /** Every event up to here is reflected in the committed rows (or was not for this projection). */
  position: number;
  /** The checkpoint stored in the database. */
  durable: number;
  /** Events up to here were handed to the member (at or after `position`). */
  handed: number;
  window: Window | undefined;
  /** After a fold's `write` threw: events up to here go through `apply` instead. */
  applyUntil: number;
  /**
   * The projection's fold for this stream, kept from one committed window to the next
   * (its state matches the committed rows); dropped with any window that is not committed
   * and whenever `apply` writes instead.
   */
  fold: ProjectionFold | undefined;
  lastEventTime: string | null;
  lastStoredAt: number | null;
}

/** A projection's dead letter sent back (`FLEX_REAPPLY`), as {@link Member.reapply} takes it. */
export interface Reapply {
  /** `projection_<name>`. */
  readonly source: string;
  /** The dead letter's `FLEX_DLQ` sequence. */
  readonly dlqSeq: number;
  /** Its sequence in `FLEX_REAPPLY`: the member's reapply position once taken. */
  readonly position: number;
  /** The stream the event was read from; `event.seq` is its sequence there. */
  readonly stream: SourceStream;
  readonly event: StoredEvent;
}

/**
 * What {@link Member.reapply} did: `applied`; `duplicate` (this dead letter, or another of the
 * same event, was already applied here); `not-failed-here` (this copy did not fail the event:
 * it applied it in order, e.g. another instance's copy or a rebuilt one).
 */
export type ReapplyOutcome = "applied" | "duplicate" | "not-failed-here";

/** `apply` threw on a redriven event: nothing was written. */
export interface ReapplyFailure {
  readonly failed: unknown;
}

const ROLLBACK = Symbol("rollback");
const NO_TENANTS: ReadonlySet<string> = new Set();

function tenantOf(subject: string): string {
  const a = subject.indexOf(".");
  const b = subject.indexOf(".", a + 1);
  return a < 0 ? "" : subject.slice(a + 1, b < 0 ? subject.length : b);
}

/**
 * One generation of one projection: its database file, the position per stream, and
 * the exactly-once apply (rows and checkpoint in one transaction; events at or below the
 * position are skipped, so redelivery and replay change nothing).
 *
 * Events are first handed to the member ({@link take}): a projection with `fold` folds
 * them into memory at once, others keep them. {@link commit} then writes the window and
 * the checkpoint in one transaction.
 */
export class Member {
  readonly projection: Projection;
  readonly db: Database;
  readonly file: string;
  readonly generation: number;
  readonly policy: FailurePolicy;
  readonly streams = new Map<SourceStream, StreamState>();
  stopped: StopPoint | undefined;
  /** Events applied since this process opened the member. */
  applied = 0;
  /** Wall-clock ms of the last committed batch with events. */
  lastAppliedAt = 0;
  #lastWrite = 0;
  /** Last `FLEX_REAPPLY` sequence taken (stored in `_flex_meta` with what it did). */
  reapplied: number;
  readonly #checkpointStmt: Statement;
  readonly #failureStmt: Statement;

  constructor(projection: Projection, file: string, generation: number, sync: SyncMode) {
    this.projection = projection;
    this.file = file;
    this.generation = generation;
    this.policy = projection.onError ?? "dlq";
    this.db = openWriter(file, sync);
    if (readMeta(this.db, "version") === undefined) {
      this.db.transaction(() => {
        projection.init(this.db);
        writeMeta(this.db, "projection", projection.name);
        writeMeta(this.db, "version", String(projection.version));
        writeMeta(this.db, "generation", String(generation));
      })();
    }
    const stored = new Map(readCheckpoints(this.db).map((c) => [c.stream, c]));
    for (const source of projection.sources) {
      const c = stored.get(source.stream);
      const seq = c?.seq ?? 0;
      this.streams.set(source.stream, {
        matcher: subjectMatcher(source.subjects),
        position: seq,
        durable: seq,
        handed: seq,
        window: undefined,
        applyUntil: 0,
        fold: undefined,
        lastEventTime: c?.lastEventTime ?? null,
        lastStoredAt: c?.lastStoredAt ?? null,
      });
    }
    this.#checkpointStmt = this.db.prepare(`INSERT INTO ${ENGINE_TABLES.checkpoint} (stream, seq, last_event_time, last_stored_at) VALUES (?, ?, ?, ?)
      ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq, last_event_time = excluded.last_event_time, last_stored_at = excluded.last_stored_at`);
    this.#failureStmt = this.db.prepare(`INSERT OR IGNORE INTO ${ENGINE_TABLES.failures} (stream, seq, subject, type, error, policy) VALUES (?, ?, ?, ?, ?, ?)`);
    this.reapplied = Number(readMeta(this.db, REAPPLY_POSITION_KEY) ?? 0);
  }

  /**
   * Applies a redriven dead letter as a late event, in one transaction with the record of
   * its id (`_flex_redriven`) and the reapply position, so a redelivery or a second redrive
   * changes nothing. Only an event this copy failed (`_flex_failures`) and did not apply
   * since is applied. Needs no open window (the runner commits them first: see
   * `ProjectionRunner.exclusive`). When `apply` throws, nothing is written and its error is
   * returned; any other error (the database) is thrown.
   */
  reapply(r: Reapply): ReapplyOutcome | ReapplyFailure {
    for (const state of this.streams.values()) if (state.window) throw new Error(`projection ${this.name} has an open window; commit it before a reapply`);
    let failure: ReapplyFailure | undefined;
    const run = this.db.transaction((): ReapplyOutcome => {
      let outcome: ReapplyOutcome;
      const seen = this.db.prepare(`SELECT 1 FROM ${ENGINE_TABLES.redriven} WHERE (source = ? AND dlq_seq = ?) OR (stream = ? AND seq = ? AND outcome = 'applied')`).get(r.source, r.dlqSeq, r.stream, r.event.seq);
      if (seen) outcome = "duplicate";
      else if (!this.db.prepare(`SELECT 1 FROM ${ENGINE_TABLES.failures} WHERE stream = ? AND seq = ?`).get(r.stream, r.event.seq)) outcome = "not-failed-here";
      else {
        try {
          this.projection.apply(this.db, [r.event], { projection: this.name, stream: r.stream });
        } catch (err) {
          failure = { failed: err };
          throw err;
        }
        outcome = "applied";
      }
      this.#recordReapply(r, outcome);
      return outcome;
    });
    let outcome: ReapplyOutcome;
    try {
      outcome = run();
    } catch (err) {
      if (failure) return failure;
      throw err;
    }
    this.reapplied = Math.max(this.reapplied, r.position);
    if (outcome === "applied") {
      // `apply` wrote rows a kept fold does not know about.
      for (const state of this.streams.values()) state.fold = undefined;
      this.applied += 1;
      this.lastAppliedAt = Date.now();
    }
    return outcome;
  }

  /** Records a reapply that failed again (its new dead letter is stored): it is not tried again here. */
  reapplyFailed(r: Reapply): void {
    this.db.transaction(() => this.#recordReapply(r, "failed"))();
    this.reapplied = Math.max(this.reapplied, r.position);
  }

  /** Moves the reapply position past a message that is not a redrive of this projection. */
  skipReapply(position: number): void {
    this.reapplied = Math.max(this.reapplied, position);
    writeMeta(this.db, REAPPLY_POSITION_KEY, String(this.reapplied));
  }

  #recordReapply(r: Reapply, outcome: string): void {
    this.db.prepare(`INSERT OR IGNORE INTO ${ENGINE_TABLES.redriven} (source, dlq_seq, stream, seq, outcome, at) VALUES (?, ?, ?, ?, ?, ?)`).run(r.source, r.dlqSeq, r.stream, r.event.seq, outcome, Date.now());
    writeMeta(this.db, REAPPLY_POSITION_KEY, String(Math.max(this.reapplied, r.position)));
  }

  get name(): string {
    return this.projection.name;
  }

  /** Committed position in `stream`. */
  position(stream: string): number {
    return this.streams.get(stream as SourceStream)?.position ?? 0;
  }

  /** Sequence up to which events of `stream` were handed to the member (committed or not). */
  handed(stream: SourceStream): number {
    return this.streams.get(stream)?.handed ?? 0;
  }

  /**
   * Hands the member the events of one batch (ascending sequences, all from `stream`,
   * ending at `lastSeq`). Those it has not been handed yet and that match its filters
   * are folded into (or kept in) the stream's open window; nothing is written.
   */
  take(stream: SourceStream, events: readonly StoredEvent[], lastSeq: number): void {
    const state = this.streams.get(stream);
    if (!state || this.stopped || lastSeq <= state.handed) return;
    for (const e of events) this.#take(stream, state, e);
    state.handed = lastSeq;
  }

  /** {@link take} for one event (the engine hands events as they arrive). */
  takeOne(stream: SourceStream, event: StoredEvent): void {
    const state = this.streams.get(stream);
    if (!state || this.stopped || event.seq <= state.handed) return;
    this.#take(stream, state, event);
    state.handed = event.seq;
  }

  #take(stream: SourceStream, state: StreamState, e: StoredEvent): void {
    let w = state.window;
    // Halting at stopAt: the rest is not taken, but counts as seen (no re-read).
    if (w?.stopAt !== undefined || e.seq <= state.handed || !state.matcher(e.subject)) return;
    if (!w) {
      const fold = this.projection.fold && e.seq > state.applyUntil ? (state.fold ??= this.projection.fold(this.db, { projection: this.name, stream })) : undefined;
      w = state.window = { fold, events: [], count: 0, last: undefined, failures: new Map(), sent: new Set(), stopAt: undefined, tenants: new Set(), opened: performance.now() };
    }
    if (w.fold) {
      try {
        w.fold.add(e);
      } catch (error) {
        w.failures.set(e.seq, { event: e, error });
        if (this.policy === "stop") w.stopAt = e.seq;
        return;
      }
    } else {
      w.events.push(e);
    }
    w.count += 1;
    w.last = e;
    w.tenants.add(tenantOf(e.subject));
  }

  /**
   * Whether `stream`'s window should be committed now: the stream is caught up, or
   * `backlog` events are still to come and the window is full or old enough.
   */
  due(stream: SourceStream, caughtUp: boolean, backlog: number, now: number, limits: WindowLimits): boolean {
    const state = this.streams.get(stream);
    if (!state || this.stopped || state.handed <= state.position) return false;
    const w = state.window;
    // Only ignored events: moving the position is free (the checkpoint is written lazily).
    if (!w) return true;
    const age = now - w.opened;
    return caughtUp || w.stopAt !== undefined || w.count >= (w.fold ? limits.foldWindow : limits.batchSize) || age >= limits.windowMs ||
      (backlog < limits.nearLivePending && age >= limits.nearLiveWindowMs);
  }

  /** performance.now() when the oldest open window was opened, if one is. */
  oldestWindow(): number | undefined {
    let oldest: number | undefined;
    for (const s of this.streams.values()) if (s.window && (oldest === undefined || s.window.opened < oldest)) oldest = s.window.opened;
    return oldest;
  }

  /**
   * Commits `stream`'s window: dead-letters its failed events, then writes its rows and
   * the checkpoint in one transaction. `force` writes the checkpoint even when no event
   * matched (the stream is caught up). Throws only when the DLQ cannot be reached (the
   * window is kept for a retry).
   */
  async commit(stream: SourceStream, force: boolean, deadLetter: DeadLetterFn): Promise<BatchOutcome | undefined> {
    const state = this.streams.get(stream);
    if (!state || this.stopped) return undefined;
    const w = state.window;
    if (!w) {
      if (state.handed > state.position) state.position = state.handed;
      if (state.durable < state.position && (force || Date.now() - this.#lastWrite >= CHECKPOINT_INTERVAL_MS)) this.#commit(stream, state, () => undefined, 0, undefined, state.position, []);
      return { applied: 0, failed: 0, tenants: NO_TENANTS };
    }
    if (!w.fold) {
      state.window = undefined;
      state.fold = undefined;
      return this.#applyEvents(stream, state, w.events, state.handed, deadLetter);
    }
    // Events may be taken while a dead letter is sent: loop until none is left unsent.
    while (w.sent.size < w.failures.size) {
      for (const [seq, f] of w.failures) {
        if (w.sent.has(seq)) continue;
        await deadLetter(this.name, stream, f.event, f.error, this.policy);
        w.sent.add(seq);
      }
    }
    if (this.stopped || state.window !== w) return undefined;
    const checkpoint = w.stopAt !== undefined ? w.stopAt - 1 : state.handed;
    const fold = w.fold;
    try {
      this.#commit(stream, state, () => fold.write(), w.count, w.last, checkpoint, [...w.failures.values()]);
    } catch (err) {
      // Which event made the write fail is unknown: drop the window and have the events
      // handed again, through `apply`, which isolates it.
      state.window = undefined;
      state.fold = undefined;
      state.applyUntil = state.handed;
      state.handed = state.position;
      return { applied: 0, failed: 0, tenants: NO_TENANTS, rewound: errorText(err) };
    }
    state.window = undefined;
    if (w.stopAt !== undefined) {
      state.handed = checkpoint;
      this.stopped = { stream, seq: w.stopAt, error: errorText(w.failures.get(w.stopAt)!.error) };
    }
    return { applied: w.count, failed: w.failures.size, tenants: w.tenants };
  }

  /** Forgets what was handed and not committed (its runner stopped): it will be handed again. */
  dropWindows(): void {
    for (const state of this.streams.values()) {
      state.window = undefined;
      state.fold = undefined;
      state.handed = state.position;
    }
  }

  /** Writes the checkpoint of every stream whose position is ahead of it. */
  flushCheckpoints(): void {
    for (const [stream, state] of this.streams) if (state.durable < state.position) this.#commit(stream, state, () => undefined, 0, undefined, state.position, []);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  // Runs `write` (the rows of `count` events, the last being `last`), the failure records
  // and the checkpoint in one transaction.
  #commit(stream: SourceStream, state: StreamState, write: () => void, count: number, last: StoredEvent | undefined, checkpoint: number, failures: ReadonlyArray<{ event: StoredEvent; error: unknown }>): void {
    const lastEventTime = last?.time ?? state.lastEventTime;
    const lastStoredAt = last?.storedAt ?? state.lastStoredAt;
    this.db.transaction(() => {
      write();
      for (const f of failures) {
        this.#failureStmt.run(stream, f.event.seq, f.event.subject, f.event.type, errorText(f.error), this.policy);
      }
      this.#checkpointStmt.run(stream, checkpoint, lastEventTime, lastStoredAt);
    })();
    state.position = checkpoint;
    state.durable = checkpoint;
    if (state.handed < checkpoint) state.handed = checkpoint;
    state.lastEventTime = lastEventTime;
    state.lastStoredAt = lastStoredAt;
    this.#lastWrite = Date.now();
    if (count > 0) {
      this.applied += count;
      this.lastAppliedAt = this.#lastWrite;
    }
  }

  // A window of kept events: one `apply` for all, or, if it throws, the isolation below.
  async #applyEvents(stream: SourceStream, state: StreamState, events: readonly StoredEvent[], lastSeq: number, deadLetter: DeadLetterFn): Promise<BatchOutcome> {
    const ctx = { projection: this.name, stream };
    try {
      this.#commit(stream, state, () => this.projection.apply(this.db, events, ctx), events.length, events[events.length - 1], lastSeq, []);
      return { applied: events.length, failed: 0, tenants: tenantsOf(events) };
    } catch {
      // Some event of the batch fails: find which, one by one.
      return this.#isolate(stream, state, events, lastSeq, deadLetter);
    }
  }

  // The batch threw: find the failing events with one savepoint each (rolled back), send
  // them to the DLQ, then commit the others with the checkpoint and the failure records.
  async #isolate(stream: SourceStream, state: StreamState, events: readonly StoredEvent[], lastSeq: number, deadLetter: DeadLetterFn): Promise<BatchOutcome> {
    const failed = new Map<number, { event: StoredEvent; error: unknown }>();
    const ctx = { projection: this.name, stream };
    try {
      this.db.transaction(() => {
        for (const e of events) {
          try {
            this.db.transaction(() => this.projection.apply(this.db, [e], ctx))();
          } catch (err) {
            failed.set(e.seq, { event: e, error: err });
            if (this.policy === "stop") break;
          }
        }
        throw ROLLBACK;
      })();
    } catch (err) {
      if (err !== ROLLBACK) throw err;
    }
    const sent = new Set<number>();
    for (let attempt = 0; ; attempt++) {
      for (const [seq, f] of failed) {
        if (sent.has(seq)) continue;
        try {
          await deadLetter(this.name, stream, f.event, f.error, this.policy);
        } catch (err) {
          // Nothing was committed: have the window handed again for the retry.
          state.handed = state.position;
          throw err;
        }
        sent.add(seq);
      }
      const firstFailed = Math.min(...failed.keys());
      const cut = this.policy === "stop" && failed.size > 0 ? firstFailed : Number.POSITIVE_INFINITY;
      const ok = events.filter((e) => e.seq < cut && !failed.has(e.seq));
      const checkpoint = Number.isFinite(cut) ? cut - 1 : lastSeq;
      const records = [...failed.values()].filter((f) => f.event.seq <= (Number.isFinite(cut) ? cut : lastSeq));
      let culprit: { event: StoredEvent; error: unknown } | undefined;
      // One apply per event, so a failure names its event.
      const write = (): void => {
        for (const e of ok) {
          try {
            this.projection.apply(this.db, [e], ctx);
          } catch (err) {
            culprit = { event: e, error: err };
            throw err;
          }
        }
      };
      try {
        this.#commit(stream, state, write, ok.length, ok[ok.length - 1], checkpoint, records);
      } catch (err) {
        // Each event applied alone before, yet one fails now: `apply` depends on more
        // than its input. Dead-letter that one too and commit again.
        if (!culprit || attempt >= events.length) {
          state.handed = state.position;
          throw new ProjectionApplyError(this.name, stream, ok[0]?.seq ?? lastSeq, { cause: err });
        }
        failed.set(culprit.event.seq, culprit);
        continue;
      }
      if (Number.isFinite(cut)) {
        const f = failed.get(cut)!;
        state.handed = checkpoint;
        this.stopped = { stream, seq: cut, error: errorText(f.error) };
      }
      return { applied: ok.length, failed: records.length, tenants: tenantsOf(ok) };
    }
  }
}

function tenantsOf(events: readonly StoredEvent[]): Set<string> {
  const out = new Set<string>();
  for (const e of events) out.add(tenantOf(e.subject));
  return out;
}

export function errorText(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.length > 1_024 ? `${text.slice(0, 1_021)}...` : text;
}
