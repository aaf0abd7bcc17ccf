import type { Database, Statement } from "better-sqlite3";
import { checkToken } from "../streams/index.js";
import { InvalidQueryError, TenantRequiredError } from "./errors.js";
import type { ColumnType, ReaderSpec } from "./projection.js";

/** Rows per page when a query names no limit. */
export const DEFAULT_PAGE_SIZE = 100;
/** Most rows one page can hold. */
export const MAX_PAGE_SIZE = 1_000;

export type Scalar = string | number | boolean | null;

/** Comparison operators of one filter field; several are ANDed. */
export interface FilterOps {
  readonly eq?: Scalar;
  readonly ne?: Scalar;
  readonly gt?: Scalar;
  readonly gte?: Scalar;
  readonly lt?: Scalar;
  readonly lte?: Scalar;
  readonly in?: readonly Scalar[];
  /** Text starts with this (case-sensitive). */
  readonly prefix?: string;
}

/** A value means equality (`null`: IS NULL); an object applies operators. */
export type FilterValue = Scalar | FilterOps;

/** A read-model query. The tenant is required: no query crosses tenants. */
export interface QueryOptions {
  /** The tenant whose rows to read. Required; {@link TenantRequiredError} without it. */
  readonly tenant: string;
  /** Which reader of the projection. @default its first */
  readonly reader?: string;
  /** Per column (or `jsonColumn.path.to.field`): a value or operators. ANDed. */
  readonly filter?: Readonly<Record<string, FilterValue>>;
  /** Columns to sort by, `-` for descending: `"-last_time"` or `["category", "-count"]`. @default the reader's */
  readonly sort?: string | readonly string[];
  /** `nextCursor` of the previous page (same reader, filter and sort). */
  readonly cursor?: string;
  /** @default 100, at most 1000 */
  readonly limit?: number;
}

/** One page of rows. */
export interface QueryPage<T = Record<string, unknown>> {
  readonly rows: T[];
  /** Pass as `cursor` to get the next page; absent on the last page. */
  readonly nextCursor?: string;
}

const OPS: Readonly<Record<string, string>> = { eq: "=", ne: "IS NOT", gt: ">", gte: ">=", lt: "<", lte: "<=" };
const PATH = /^[A-Za-z0-9_]+$/u;
// NULLs sort first in SQLite; a keyset cursor needs a comparable value, so they become this.
const NULL_SORT = "-1e308";

interface Column {
  readonly sql: string;
  readonly type: ColumnType;
}

function quote(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function resolveColumn(spec: ReaderSpec, field: string, what: string): Column {
  const [head, ...path] = field.split(".");
  const type = head === undefined ? undefined : spec.columns[head];
  if (type === undefined || !Object.hasOwn(spec.columns, head!)) {
    throw new InvalidQueryError(what, field, `one of ${Object.keys(spec.columns).join(", ")}${Object.values(spec.columns).includes("json") ? " (or jsonColumn.path)" : ""}`);
  }
  if (path.length === 0) return { sql: `r.${quote(head!)}`, type };
  if (type !== "json" || !path.every((p) => PATH.test(p))) throw new InvalidQueryError(what, field, "a path of letters, digits and `_` into a json column");
  return { sql: `json_extract(r.${quote(head!)}, '$.${path.join(".")}')`, type: "json" };
}

function bindable(field: string, v: unknown): string | number | null {
  if (v === null || typeof v === "string") return v;
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (typeof v === "boolean") return v ? 1 : 0;
  throw new InvalidQueryError(field, v, "a string, finite number, boolean or null");
}

interface SortKey {
  readonly field: string;
  readonly desc: boolean;
  readonly sql: string;
}

function parseSort(spec: ReaderSpec, sort: string | readonly string[] | undefined): SortKey[] {
  const raw = sort === undefined ? (spec.defaultSort ? [spec.defaultSort] : []) : typeof sort === "string" ? sort.split(",").filter(Boolean) : [...sort];
  const keys: SortKey[] = [];
  for (const s of raw) {
    if (typeof s !== "string" || s.length === 0) throw new InvalidQueryError("sort", s, "column names, `-` for descending");
    const desc = s.startsWith("-");
    const field = desc ? s.slice(1) : s;
    const col = resolveColumn(spec, field, "sort");
    if (!keys.some((k) => k.field === field)) keys.push({ field, desc, sql: col.sql });
  }
  // The key makes the order total, so a cursor names exactly one position.
  for (const k of spec.key) if (!keys.some((x) => x.field === k)) keys.push({ field: k, desc: false, sql: `r.${quote(k)}` });
  return keys;
}

interface Cursor {
  readonly r: string;
  readonly s: string;
  readonly v: Array<string | number>;
}

function encodeCursor(c: Cursor): string {
  return Buffer.from(JSON.stringify(c)).toString("base64url");
}

function decodeCursor(text: unknown, reader: string, sortId: string, n: number): Cursor {
  if (typeof text !== "string") throw new InvalidQueryError("cursor", text, "the nextCursor of a previous page");
  try {
    const c = JSON.parse(Buffer.from(text, "base64url").toString("utf8")) as Cursor;
    if (c.r === reader && c.s === sortId && Array.isArray(c.v) && c.v.length === n && c.v.every((x) => typeof x === "string" || typeof x === "number")) return c;
  } catch {
    // fall through
  }
  throw new InvalidQueryError("cursor", text, "the nextCursor of a previous page with the same reader and sort");
}

const statements = new WeakMap<Database, Map<string, Statement>>();

function prepare(db: Database, sql: string): Statement {
  let cache = statements.get(db);
  if (!cache) statements.set(db, (cache = new Map()));
  let stmt = cache.get(sql);
  if (!stmt) {
    stmt = db.prepare(sql);
    if (cache.size > 256) cache.clear();
    cache.set(sql, stmt);
  }
  return stmt;
}

/** Validates the tenant of a query. @throws TenantRequiredError, SubjectTokenError */
export function checkTenant(tenant: unknown): string {
  if (tenant === undefined || tenant === null || tenant === "") throw new TenantRequiredError(tenant);
  return checkToken("tenant", tenant);
}

/** Runs a tenant-scoped query against one reader of a read-model database. */
export function runQuery(db: Database, readerName: string, spec: ReaderSpec, options: QueryOptions): QueryPage {
  if (options === null || typeof options !== "object") throw new TenantRequiredError(options);
  const tenant = checkTenant(options.tenant);
  const limit = options.limit ?? DEFAULT_PAGE_SIZE;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE_SIZE) throw new InvalidQueryError("limit", limit, `an integer from 1 to ${MAX_PAGE_SIZE}`);

  const params: Record<string, unknown> = { ...(spec.params?.() ?? {}), __tenant: tenant };
  let n = 0;
  const param = (field: string, v: unknown): string => {
    const name = `__p${n++}`;
    params[name] = bindable(field, v);
    return `:${name}`;
  };
  const where: string[] = ["r.tenant = :__tenant"];
  for (const [field, value] of Object.entries(options.filter ?? {})) {
    const col = resolveColumn(spec, field, "filter");
    if (value === null) {
      where.push(`${col.sql} IS NULL`);
    } else if (typeof value !== "object") {
      where.push(`${col.sql} = ${param(`filter.${field}`, value)}`);
    } else {
      const ops = Object.entries(value);
      if (ops.length === 0) throw new InvalidQueryError(`filter.${field}`, value, "a value or operators eq, ne, gt, gte, lt, lte, in, prefix");
      for (const [op, v] of ops) {
        if (op === "in") {
          if (!Array.isArray(v) || v.length === 0 || v.length > MAX_PAGE_SIZE) throw new InvalidQueryError(`filter.${field}.in`, v, `a non-empty array of at most ${MAX_PAGE_SIZE} values`);
          where.push(`${col.sql} IN (${v.map((x) => param(`filter.${field}.in`, x)).join(", ")})`);
        } else if (op === "prefix") {
          if (typeof v !== "string") throw new InvalidQueryError(`filter.${field}.prefix`, v, "a string");
          where.push(`substr(${col.sql}, 1, ${[...v].length}) = ${param(`filter.${field}.prefix`, v)}`);
        } else if (op in OPS) {
          where.push(v === null ? `${col.sql} ${op === "ne" ? "IS NOT NULL" : "IS NULL"}` : `${col.sql} ${op === "ne" ? "!=" : OPS[op]} ${param(`filter.${field}.${op}`, v)}`);
        } else {
          throw new InvalidQueryError(`filter.${field}`, op, "operators eq, ne, gt, gte, lt, lte, in, prefix");
        }
      }
    }
  }

  const sort = parseSort(spec, options.sort);
  const sortId = sort.map((k) => (k.desc ? `-${k.field}` : k.field)).join(",");
  const sortExpr = sort.map((k) => `coalesce(${k.sql}, ${NULL_SORT})`);
  if (options.cursor !== undefined) {
    const c = decodeCursor(options.cursor, readerName, sortId, sort.length);
    // Keyset: (a, b, c) after the cursor, honouring each key's direction.
    const alternatives: string[] = [];
    for (let i = 0; i < sort.length; i++) {
      const parts: string[] = [];
      for (let j = 0; j < i; j++) parts.push(`${sortExpr[j]} = ${param("cursor", c.v[j])}`);
      parts.push(`${sortExpr[i]} ${sort[i]!.desc ? "<" : ">"} ${param("cursor", c.v[i])}`);
      alternatives.push(`(${parts.join(" AND ")})`);
    }
    where.push(`(${alternatives.join(" OR ")})`);
  }
  const cols = Object.keys(spec.columns).map((c) => `r.${quote(c)}`);
  const sql = `SELECT ${cols.join(", ")}, ${sortExpr.map((e, i) => `${e} AS __s${i}`).join(", ")} FROM ${/^\w+$/u.test(spec.from) ? quote(spec.from) : `(${spec.from})`} AS r WHERE ${where.join(" AND ")} ORDER BY ${sortExpr.map((e, i) => `${e}${sort[i]!.desc ? " DESC" : ""}`).join(", ")} LIMIT ${limit + 1}`;
  const raw = prepare(db, sql).all(params) as Array<Record<string, unknown>>;
  const more = raw.length > limit;
  const page = more ? raw.slice(0, limit) : raw;
  const jsonCols = Object.entries(spec.columns).filter(([, t]) => t === "json").map(([c]) => c);
  const rows = page.map((row) => {
    const out: Record<string, unknown> = {};
    for (const c of Object.keys(spec.columns)) {
      const v = row[c];
      out[c] = jsonCols.includes(c) && typeof v === "string" ? JSON.parse(v) : v;
    }
    return out;
  });
  if (!more) return { rows };
  const last = page[page.length - 1]!;
  return { rows, nextCursor: encodeCursor({ r: readerName, s: sortId, v: sort.map((_, i) => last[`__s${i}`] as string | number) }) };
}
