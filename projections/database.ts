import { createHash } from "node:crypto";
import BetterSqlite3 from "better-sqlite3";
import type { Database } from "better-sqlite3";
import { ProjectionStorageError } from "./errors.js";

/**
 * SQLite `synchronous` level of the read-model databases (always in WAL mode):
 * - `"full"`: every committed batch is fsynced; a committed checkpoint survives a power loss.
 * - `"normal"`: commits are fsynced at WAL checkpoints only; survives a process crash
 *   (kill -9), a power loss may lose the last batches, which are then re-applied from
 *   the checkpoint that survived (still exactly once, as rows and checkpoint go together).
 */
export type SyncMode = "full" | "normal";

/** Default {@link SyncMode}. */
export const DEFAULT_SYNC: SyncMode = "full";

/** Tables the engine keeps in every read-model database, beside the projection's own. */
export const ENGINE_TABLES = { meta: "_flex_meta", checkpoint: "_flex_checkpoint", failures: "_flex_failures", redriven: "_flex_redriven" } as const;

/** `_flex_meta` key of the last `FLEX_REAPPLY` sequence this database has taken (written with what it did). */
export const REAPPLY_POSITION_KEY = "reapply_seq";

/** One stream's checkpoint as stored. */
export interface StoredCheckpoint {
  readonly stream: string;
  /** Last stream sequence whose effects are in the database. */
  readonly seq: number;
  /** `Flex-Time` of the last applied event. */
  readonly lastEventTime: string | null;
  /** When JetStream stored the last applied event, ms since the epoch. */
  readonly lastStoredAt: number | null;
}

/** A failed event as recorded in the database. */
export interface StoredFailure {
  readonly stream: string;
  readonly seq: number;
  readonly subject: string;
  readonly type: string;
  readonly error: string;
  readonly policy: string;
}

/** Opens (creating if needed) a read-model database for writing. */
export function openWriter(file: string, sync: SyncMode): Database {
  let db: Database;
  try {
    db = new BetterSqlite3(file);
  } catch (err) {
    throw new ProjectionStorageError(file, `cannot open: ${(err as Error).message}`, { cause: err });
  }
  db.pragma("journal_mode = WAL");
  db.pragma(`synchronous = ${sync === "full" ? "FULL" : "NORMAL"}`);
  db.pragma("foreign_keys = OFF");
  // Large batches of upserts: keep the working set in memory (negative = KiB).
  db.pragma("cache_size = -65536");
  db.pragma("temp_store = MEMORY");
  db.exec(`
    CREATE TABLE IF NOT EXISTS ${ENGINE_TABLES.meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS ${ENGINE_TABLES.checkpoint} (
      stream TEXT PRIMARY KEY, seq INTEGER NOT NULL, last_event_time TEXT, last_stored_at INTEGER);
    CREATE TABLE IF NOT EXISTS ${ENGINE_TABLES.failures} (
      stream TEXT NOT NULL, seq INTEGER NOT NULL, subject TEXT NOT NULL, type TEXT NOT NULL,
      error TEXT NOT NULL, policy TEXT NOT NULL, PRIMARY KEY (stream, seq));
    CREATE TABLE IF NOT EXISTS ${ENGINE_TABLES.redriven} (
      source TEXT NOT NULL, dlq_seq INTEGER NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
      outcome TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY (source, dlq_seq));
  `);
  return db;
}

/** Opens a read-model database for queries only; WAL gives each query a committed snapshot. */
export function openReader(file: string): Database {
  try {
    const db = new BetterSqlite3(file, { readonly: true, fileMustExist: true });
    return db;
  } catch (err) {
    throw new ProjectionStorageError(file, `cannot open for reading: ${(err as Error).message}`, { cause: err });
  }
}

export function readMeta(db: Database, key: string): string | undefined {
  const row = db.prepare(`SELECT value FROM ${ENGINE_TABLES.meta} WHERE key = ?`).get(key) as { value: string } | undefined;
  return row?.value;
}

export function writeMeta(db: Database, key: string, value: string): void {
  db.prepare(`INSERT INTO ${ENGINE_TABLES.meta} (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`).run(key, value);
}

export function readCheckpoints(db: Database): StoredCheckpoint[] {
  const rows = db.prepare(`SELECT stream, seq, last_event_time, last_stored_at FROM ${ENGINE_TABLES.checkpoint} ORDER BY stream`).all() as Array<{ stream: string; seq: number; last_event_time: string | null; last_stored_at: number | null }>;
  return rows.map((r) => ({ stream: r.stream, seq: r.seq, lastEventTime: r.last_event_time, lastStoredAt: r.last_stored_at }));
}

export function readFailures(db: Database, limit = 20): { count: number; last: StoredFailure[] } {
  const count = (db.prepare(`SELECT count(*) AS n FROM ${ENGINE_TABLES.failures}`).get() as { n: number }).n;
  const last = db.prepare(`SELECT stream, seq, subject, type, error, policy FROM ${ENGINE_TABLES.failures} ORDER BY rowid DESC LIMIT ?`).all(limit) as StoredFailure[];
  return { count, last };
}

/** `PRAGMA integrity_check`: `"ok"` or the problems found. */
export function integrityCheck(db: Database): string {
  const rows = db.pragma("integrity_check") as Array<{ integrity_check: string }>;
  return rows.map((r) => r.integrity_check).join("; ");
}

/**
 * SHA-256 of the projection's own tables (not the engine's `_flex_*` bookkeeping), rows
 * in a total order: two databases with the same hash hold the same read model row for row.
 */
export function modelHash(db: Database): string {
  const hash = createHash("sha256");
  const tables = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_flex\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name`).all() as Array<{ name: string }>;
  for (const { name } of tables) {
    const cols = (db.prepare(`SELECT name FROM pragma_table_info(?)`).all(name) as Array<{ name: string }>).map((c) => c.name);
    hash.update(`table ${name} (${cols.join(",")})\n`);
    const order = cols.map((_, i) => String(i + 1)).join(", ");
    for (const row of db.prepare(`SELECT * FROM "${name}" ORDER BY ${order}`).raw().iterate()) {
      hash.update(JSON.stringify(row));
      hash.update("\n");
    }
  }
  return hash.digest("hex");
}
