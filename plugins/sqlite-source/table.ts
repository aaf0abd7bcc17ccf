/**
 * The `sqlite-source` plugin's reading: a SQLite table tailed after a cursor, opened
 * read-only, every identifier checked before it reaches SQL and every value bound.
 */
import { createHash } from "node:crypto";
import { realpathSync } from "node:fs";
import { isAbsolute, sep } from "node:path";
import Database from "better-sqlite3";
import type { SourceRecord } from "../protocol.js";

/** Options of the `sqlite-table` source. */
export interface SqliteSourceOptions {
  /** Absolute path of the database file; it must lie inside one of the operator's `roots`. */
  readonly path: string;
  readonly table: string;
  /** A monotonic column: `rowid` (default) or an INTEGER or TEXT column that only grows. */
  readonly cursorColumn?: string;
  /** How the cursor compares: `integer` (default) or `text`. `rowid` is always integer. */
  readonly cursorType?: "integer" | "text";
  /** Column of the record id (deterministic event ids). @default the cursor column */
  readonly idColumn?: string;
  /** Column of the aggregate key (the subject's last token). */
  readonly keyColumn: string;
  /** Category of the subject `evt.<tenant>.<category>.<key>` (the source driver uses it). */
  readonly category: string;
  /** Event type of every record. @default "RowAdded" */
  readonly type?: string;
}

export const DEFAULT_RECORD_TYPE = "RowAdded";
/** An SQL identifier accepted in options: letters, digits, `_`, starting with a letter or `_`. */
export const IDENTIFIER = "^[A-Za-z_][A-Za-z0-9_]{0,63}$";

const PATH_OPTION = { type: "string", minLength: 2, maxLength: 4096 } as const;
const ID = { type: "string", pattern: IDENTIFIER } as const;

/** The options' JSON Schema (the manifest embeds the same; a test keeps them equal). */
export const SQLITE_SOURCE_OPTIONS_SCHEMA = {
  type: "object",
  required: ["path", "table", "keyColumn", "category"],
  additionalProperties: false,
  properties: {
    path: PATH_OPTION,
    table: ID,
    cursorColumn: ID,
    cursorType: { enum: ["integer", "text"] },
    idColumn: ID,
    keyColumn: ID,
    category: { type: "string", pattern: "^[a-z][a-z0-9_-]{0,63}$" },
    type: { type: "string", pattern: "^[A-Za-z][A-Za-z0-9_-]{0,127}$" },
  },
} as const;

/** Bad options or a cursor that does not fit (→ 400). `path` names the field. */
export class SourceOptionsError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "SourceOptionsError";
    this.path = path;
  }
}

const quote = (id: string): string => `"${id}"`;
const IDENT = new RegExp(IDENTIFIER, "u");

/** A subject token from any value: deterministic, no `.`, `*`, `>` or whitespace, at most 128 characters. */
export function toToken(value: unknown): string {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  const token = encodeURIComponent(text).replace(/\./gu, "%2E").replace(/\*/gu, "%2A");
  if (token.length === 0) return "%00";
  return token.length <= 128 ? token : `h-${createHash("sha256").update(text).digest("hex")}`;
}

function jsonValue(v: unknown): unknown {
  if (typeof v === "bigint") return v.toString();
  if (Buffer.isBuffer(v)) return v.toString("base64");
  return v;
}

/** Resolves `path` inside one of `roots` (after symbolic links). @throws SourceOptionsError */
export function confinedPath(path: string, roots: readonly string[]): string {
  if (roots.length === 0) throw new SourceOptionsError("options.path", "no `roots` are configured for this plugin (FLEXCORE_PLUGIN_CONFIG.roots), so no database may be read");
  if (!isAbsolute(path)) throw new SourceOptionsError("options.path", `expected an absolute path, got ${JSON.stringify(path)}`);
  let real: string;
  try {
    real = realpathSync(path);
  } catch {
    throw new SourceOptionsError("options.path", `expected an existing database file, got ${JSON.stringify(path)}`);
  }
  for (const root of roots) {
    let r: string;
    try {
      r = realpathSync(root);
    } catch {
      continue;
    }
    if (real.startsWith(r.endsWith(sep) ? r : r + sep)) return real;
  }
  throw new SourceOptionsError("options.path", `expected a file inside the configured roots, got ${JSON.stringify(path)}`);
}

/**
 * Reads up to `max` rows after `cursor`, in cursor order. Returns the records and the new
 * cursor (the last row's cursor value, or the old cursor when there is nothing new).
 */
export function readTable(o: SqliteSourceOptions, roots: readonly string[], cursor: string | null, max: number): { records: SourceRecord[]; cursor: string | null } {
  for (const field of ["table", "cursorColumn", "idColumn", "keyColumn"] as const) {
    const v = o[field];
    if (v !== undefined && (typeof v !== "string" || !IDENT.test(v))) throw new SourceOptionsError(`options.${field}`, `expected an identifier matching ${IDENTIFIER}, got ${JSON.stringify(v)}`);
  }
  const file = confinedPath(o.path, roots);
  const cursorColumn = o.cursorColumn ?? "rowid";
  const cursorType = cursorColumn === "rowid" ? "integer" : (o.cursorType ?? "integer");
  let after: number | string | null = null;
  if (cursor !== null) {
    if (cursorType === "integer") {
      if (!/^-?\d{1,16}$/u.test(cursor) || !Number.isSafeInteger(Number(cursor))) throw new SourceOptionsError("cursor", `expected an integer cursor, got ${JSON.stringify(cursor)}`);
      after = Number(cursor);
    } else after = cursor;
  }
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const columns = new Set((db.prepare("SELECT name FROM pragma_table_info(?)").all(o.table) as Array<{ name: string }>).map((c) => c.name));
    if (columns.size === 0) throw new SourceOptionsError("options.table", `expected an existing table, got ${JSON.stringify(o.table)}`);
    for (const field of ["cursorColumn", "idColumn", "keyColumn"] as const) {
      const v = o[field];
      if (v !== undefined && !(field === "cursorColumn" && v === "rowid") && !columns.has(v)) throw new SourceOptionsError(`options.${field}`, `expected a column of ${o.table}, got ${JSON.stringify(v)}`);
    }
    const cursorExpr = cursorColumn === "rowid" ? "rowid" : quote(cursorColumn);
    const sql = `SELECT ${cursorExpr} AS "__flex_cursor", * FROM ${quote(o.table)}${after === null ? "" : ` WHERE ${cursorExpr} > ?`} ORDER BY ${cursorExpr} LIMIT ?`;
    const rows = db.prepare(sql).all(...(after === null ? [max] : [after, max])) as Array<Record<string, unknown>>;
    const type = o.type ?? DEFAULT_RECORD_TYPE;
    const records: SourceRecord[] = [];
    let last: unknown = null;
    for (const row of rows) {
      last = row.__flex_cursor;
      const data: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(row)) if (k !== "__flex_cursor") Object.defineProperty(data, k, { value: jsonValue(v), enumerable: true, writable: true, configurable: true });
      const id = o.idColumn ? row[o.idColumn] : last;
      records.push({ id: toToken(id), key: toToken(row[o.keyColumn] ?? "null"), type, data });
    }
    return { records, cursor: rows.length === 0 ? cursor : String(last) };
  } finally {
    db.close();
  }
}
