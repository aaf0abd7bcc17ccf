import type { Database } from "better-sqlite3";
import { checkSubjectFilter, InvalidOptionError, STREAMS } from "../streams/index.js";
import type { StoredEvent } from "../streams/index.js";

/** The streams a projection can read: domain events and processor outputs. */
export type SourceStream = typeof STREAMS.events | typeof STREAMS.derived;

/** Where a projection's events come from. */
export interface ProjectionSource {
  /** `FLEX_EVENTS` or `FLEX_DERIVED`; each has its own sequence, so its own checkpoint. */
  readonly stream: SourceStream;
  /** Subject filters (`evt.*.workflow.*`); an event is applied when any matches. */
  readonly subjects: readonly string[];
}

/** What `apply` is told besides the events. */
export interface ApplyContext {
  readonly projection: string;
  readonly stream: SourceStream;
}

/**
 * What happens when `apply` throws on an event:
 * - `"dlq"`: the event is published to `FLEX_DLQ` with the error, counted, and skipped;
 *   the projection moves on.
 * - `"stop"`: the event is published to `FLEX_DLQ` and counted as well, the events before
 *   it are applied, and the projection halts there (status `stopped`) until restarted.
 */
export type FailurePolicy = "dlq" | "stop";

/** SQLite type of a reader column, used to validate filter values. */
export type ColumnType = "text" | "integer" | "real" | "json";

/**
 * A typed, tenant-scoped view of a read model for queries. The engine adds the tenant
 * condition, filters, sort, keyset cursor and page limit; `from` only says where rows are.
 */
export interface ReaderSpec {
  /** What the reader returns, for `flexcore projections list` and the gateway's docs. */
  readonly description: string;
  /**
   * A table name or a `SELECT` whose rows have a `tenant` column. It may use named
   * parameters supplied by `params` (e.g. `:now` for rates).
   */
  readonly from: string;
  /** Columns returned, filterable and sortable. `json` columns are parsed and allow `col.path` filters. */
  readonly columns: Readonly<Record<string, ColumnType>>;
  /** Columns that identify a row within a tenant: the cursor's tie-breaker. */
  readonly key: readonly string[];
  /** Sort when the query names none, e.g. `-last_time`. @default the key ascending */
  readonly defaultSort?: string;
  /** Values of the named parameters in `from`, computed per query. */
  params?(): Record<string, unknown>;
}

/**
 * The incremental form of `apply` (see {@link Projection.fold}): events are folded into
 * memory as they arrive, and what they add up to is written once per window.
 */
export interface ProjectionFold {
  /**
   * Folds one event into memory (it may read the database, never write it). If it
   * throws, the fold must be as it was before the call: the engine rejects that event
   * alone (failure policy) and folds the next ones.
   */
  add(event: StoredEvent): void;
  /**
   * Writes everything folded since the previous `write` (or since the fold was created).
   * Runs inside the transaction that also stores the checkpoint: synchronous, must not
   * commit. Once that transaction committed, the engine may keep using the fold for the
   * next window (so what it holds may serve as a cache of the rows); if the transaction
   * failed, or `apply` wrote for this stream meanwhile, the fold is dropped. Each source
   * stream has its own fold: a fold must not cache rows that another stream's events change.
   */
  write(): void;
}

/** A read model: what it reads, how it creates its tables and folds events into them. */
export interface Projection {
  /** Lower-case letters, digits and `_`, starting with a letter; names the database file. */
  readonly name: string;
  /** Bump when `init` or `apply` change meaning: the model is then rebuilt from sequence 1 at start. */
  readonly version: number;
  readonly description: string;
  readonly sources: readonly ProjectionSource[];
  /** Readers by name; the first is the default. Every row they return has a `tenant`. */
  readonly readers: Readonly<Record<string, ReaderSpec>>;
  /** @default "dlq" */
  readonly onError?: FailurePolicy;
  /** Creates the tables (every primary key starts with `tenant`). Runs once on a fresh database. */
  init(db: Database): void;
  /**
   * Folds events (in stream order, all from `ctx.stream`) into the tables. Runs inside the
   * transaction that also stores the checkpoint, so it must be synchronous and must not
   * commit. Throwing rolls the batch back; the engine then isolates the failing event.
   */
  apply(db: Database, events: readonly StoredEvent[], ctx: ApplyContext): void;
  /**
   * Optional, for speed: a fresh in-memory fold of this projection for one stream, that
   * must give the same rows as `apply` on the same events. With it, a catch-up or rebuild
   * holds folded state instead of events and writes each key once per window of up to
   * `foldWindow` events (one transaction) rather than once per batch. `apply` is still
   * used to isolate the failing event when a window's `write` throws.
   */
  fold?(db: Database, ctx: ApplyContext): ProjectionFold;
}

const NAME = /^[a-z][a-z0-9_]{0,62}$/u;

/** Validates a projection definition. @throws InvalidOptionError naming the field */
export function checkProjection(p: Projection, path: string): Projection {
  if (p === null || typeof p !== "object") throw new InvalidOptionError(path, p, "a projection object");
  if (typeof p.name !== "string" || !NAME.test(p.name)) throw new InvalidOptionError(`${path}.name`, p.name, "lower-case letters, digits and `_`, starting with a letter (at most 63)");
  if (!Number.isInteger(p.version) || p.version < 1) throw new InvalidOptionError(`${path}.version`, p.version, "an integer from 1 and up");
  if (typeof p.init !== "function") throw new InvalidOptionError(`${path}.init`, p.init, "a function (db) => void");
  if (typeof p.apply !== "function") throw new InvalidOptionError(`${path}.apply`, p.apply, "a function (db, events, ctx) => void");
  if (p.fold !== undefined && typeof p.fold !== "function") throw new InvalidOptionError(`${path}.fold`, p.fold, "a function (db, ctx) => { add(event), write() }");
  if (p.onError !== undefined && p.onError !== "dlq" && p.onError !== "stop") throw new InvalidOptionError(`${path}.onError`, p.onError, '"dlq" or "stop"');
  if (!Array.isArray(p.sources) || p.sources.length === 0) throw new InvalidOptionError(`${path}.sources`, p.sources, "a non-empty array of { stream, subjects }");
  const seen = new Set<string>();
  p.sources.forEach((s, i) => {
    if (s.stream !== STREAMS.events && s.stream !== STREAMS.derived) throw new InvalidOptionError(`${path}.sources[${i}].stream`, s.stream, `"${STREAMS.events}" or "${STREAMS.derived}"`);
    if (seen.has(s.stream)) throw new InvalidOptionError(`${path}.sources[${i}].stream`, s.stream, "a stream listed once (put all its subjects in one source)");
    seen.add(s.stream);
    if (!Array.isArray(s.subjects) || s.subjects.length === 0) throw new InvalidOptionError(`${path}.sources[${i}].subjects`, s.subjects, "a non-empty array of subject filters");
    const root = s.stream === STREAMS.events ? "evt" : "drv";
    s.subjects.forEach((f: string, j: number) => {
      checkSubjectFilter(f);
      if (f.split(".")[0] !== root && f !== ">") throw new InvalidOptionError(`${path}.sources[${i}].subjects[${j}]`, f, `a filter under \`${root}.\` for ${s.stream}`);
    });
  });
  const readers = Object.entries(p.readers ?? {});
  if (readers.length === 0) throw new InvalidOptionError(`${path}.readers`, p.readers, "at least one reader");
  for (const [name, r] of readers) {
    if (!NAME.test(name)) throw new InvalidOptionError(`${path}.readers`, name, "reader names of lower-case letters, digits and `_`");
    if (!r.columns || !("tenant" in r.columns)) throw new InvalidOptionError(`${path}.readers.${name}.columns`, r.columns, "columns including `tenant`");
    for (const k of r.key) if (!(k in r.columns)) throw new InvalidOptionError(`${path}.readers.${name}.key`, k, "a column of the reader");
  }
  return p;
}

/** A compiled subject filter: `*` matches one token, a final `>` one or more. */
export type SubjectMatcher = (subject: string) => boolean;

/** Compiles subject filters into one predicate. */
export function subjectMatcher(filters: readonly string[]): SubjectMatcher {
  if (filters.includes(">")) return () => true;
  if (filters.every((f) => /^[^.*>]+\.>$/u.test(f))) {
    const prefixes = filters.map((f) => f.slice(0, -1));
    return (subject) => prefixes.some((p) => subject.startsWith(p) && subject.length > p.length);
  }
  const alternatives = filters.map((f) =>
    f
      .split(".")
      .map((t) => (t === "*" ? "[^.]+" : t === ">" ? "[^.]+(?:\\.[^.]+)*" : t.replace(/[\\^$.*+?()[\]{}|]/gu, "\\$&")))
      .join("\\."),
  );
  const re = new RegExp(`^(?:${alternatives.join("|")})$`, "u");
  return (subject) => re.test(subject);
}
