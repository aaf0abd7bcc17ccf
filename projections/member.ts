import type { Database, Statement } from "better-sqlite3";
import type { StoredEvent } from "../streams/index.js";
import { ENGINE_TABLES, openWriter, readCheckpoints, readMeta, writeMeta } from "./database.js";
import type { SyncMode } from "./database.js";
import { ProjectionApplyError } from "./errors.js";
import { subjectMatcher } from "./projection.js";
import type { FailurePolicy, Projection, SourceStream, SubjectMatcher } from "./projection.js";

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

/** What one batch did to a member. */
export interface BatchOutcome {
  readonly applied: readonly StoredEvent[];
  readonly failed: number;
}

interface StreamState {
  readonly matcher: SubjectMatcher;
  /** Every event up to here is reflected in the committed rows (or was not for this projection). */
  position: number;
  /** The checkpoint stored in the database. */
  durable: number;
  lastEventTime: string | null;
  lastStoredAt: number | null;
}

const ROLLBACK = Symbol("rollback");

/**
 * One generation of one projection: its database file, the position per stream, and
 * the exactly-once apply (rows and checkpoint in one transaction; events at or below the
 * position are skipped, so redelivery and replay change nothing).
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
      this.streams.set(source.stream, {
        matcher: subjectMatcher(source.subjects),
        position: c?.seq ?? 0,
        durable: c?.seq ?? 0,
        lastEventTime: c?.lastEventTime ?? null,
        lastStoredAt: c?.lastStoredAt ?? null,
      });
    }
    this.#checkpointStmt = this.db.prepare(`INSERT INTO ${ENGINE_TABLES.checkpoint} (stream, seq, last_event_time, last_stored_at) VALUES (?, ?, ?, ?)
      ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq, last_event_time = excluded.last_event_time, last_stored_at = excluded.last_stored_at`);
    this.#failureStmt = this.db.prepare(`INSERT OR IGNORE INTO ${ENGINE_TABLES.failures} (stream, seq, subject, type, error, policy) VALUES (?, ?, ?, ?, ?, ?)`);
  }

  get name(): string {
    return this.projection.name;
  }

  position(stream: string): number {
    return this.streams.get(stream as SourceStream)?.position ?? 0;
  }

  /**
   * Applies the events of one batch (ascending sequences, all from `stream`, ending at
   * `lastSeq`) that this member has not applied yet and that match its filters.
   * `force` writes the checkpoint even when no event matched (the stream is caught up).
   */
  async applyBatch(stream: SourceStream, events: readonly StoredEvent[], lastSeq: number, force: boolean, deadLetter: DeadLetterFn): Promise<BatchOutcome | undefined> {
    const state = this.streams.get(stream);
    if (!state || this.stopped || lastSeq <= state.position) return undefined;
    const todo: StoredEvent[] = [];
    for (const e of events) if (e.seq > state.position && state.matcher(e.subject)) todo.push(e);
    if (todo.length === 0) {
      state.position = lastSeq;
      if (state.durable < lastSeq && (force || Date.now() - this.#lastWrite >= CHECKPOINT_INTERVAL_MS)) this.#commit(stream, state, [], lastSeq, []);
      return { applied: todo, failed: 0 };
    }
    try {
      this.#commit(stream, state, todo, lastSeq, []);
      return { applied: todo, failed: 0 };
    } catch {
      // Some event of the batch fails: find which, one by one.
      return this.#isolate(stream, state, todo, lastSeq, deadLetter);
    }
  }

  /** Writes the checkpoint of every stream whose position is ahead of it. */
  flushCheckpoints(): void {
    for (const [stream, state] of this.streams) if (state.durable < state.position) this.#commit(stream, state, [], state.position, []);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  #commit(stream: SourceStream, state: StreamState, events: readonly StoredEvent[], lastSeq: number, failures: ReadonlyArray<{ event: StoredEvent; error: unknown }>, onEventError?: (event: StoredEvent, error: unknown) => void): void {
    const last = events[events.length - 1];
    const lastEventTime = last?.time ?? state.lastEventTime;
    const lastStoredAt = last?.storedAt ?? state.lastStoredAt;
    const ctx = { projection: this.name, stream };
    this.db.transaction(() => {
      if (onEventError) {
        // One apply per event, so a failure names its event.
        for (const e of events) {
          try {
            this.projection.apply(this.db, [e], ctx);
          } catch (err) {
            onEventError(e, err);
            throw err;
          }
        }
      } else if (events.length > 0) {
        this.projection.apply(this.db, events, ctx);
      }
      for (const f of failures) {
        this.#failureStmt.run(stream, f.event.seq, f.event.subject, f.event.type, errorText(f.error), this.policy);
      }
      this.#checkpointStmt.run(stream, lastSeq, lastEventTime, lastStoredAt);
    })();
    state.position = lastSeq;
    state.durable = lastSeq;
    state.lastEventTime = lastEventTime;
    state.lastStoredAt = lastStoredAt;
    this.#lastWrite = Date.now();
    if (events.length > 0) {
      this.applied += events.length;
      this.lastAppliedAt = this.#lastWrite;
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
        await deadLetter(this.name, stream, f.event, f.error, this.policy);
        sent.add(seq);
      }
      const firstFailed = Math.min(...failed.keys());
      const cut = this.policy === "stop" && failed.size > 0 ? firstFailed : Number.POSITIVE_INFINITY;
      const ok = events.filter((e) => e.seq < cut && !failed.has(e.seq));
      const checkpoint = Number.isFinite(cut) ? cut - 1 : lastSeq;
      const records = [...failed.values()].filter((f) => f.event.seq <= (Number.isFinite(cut) ? cut : lastSeq));
      let culprit: { event: StoredEvent; error: unknown } | undefined;
      try {
        this.#commit(stream, state, ok, checkpoint, records, (event, error) => (culprit = { event, error }));
      } catch (err) {
        // Each event applied alone before, yet one fails now: `apply` depends on more
        // than its input. Dead-letter that one too and commit again.
        if (!culprit || attempt >= events.length) throw new ProjectionApplyError(this.name, stream, ok[0]?.seq ?? lastSeq, { cause: err });
        failed.set(culprit.event.seq, culprit);
        continue;
      }
      if (Number.isFinite(cut)) {
        const f = failed.get(cut)!;
        this.stopped = { stream, seq: cut, error: errorText(f.error) };
      }
      return { applied: ok, failed: records.length };
    }
  }
}

export function errorText(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return text.length > 1_024 ? `${text.slice(0, 1_021)}...` : text;
}
