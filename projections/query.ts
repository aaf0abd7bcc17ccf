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

/** Validates the tenant of a query. @throws TenantRequiredError, SubjectTokenError */
export function checkQueryTenant(tenant: unknown): string {
  if (tenant === undefined || tenant === null || tenant === "") throw new TenantRequiredError(tenant);
  return checkToken("tenant", tenant);
}

/**
 * A query shape compiled once: its SQL (with named parameters) and how to read the
 * values of a query of that shape. Queries differ mostly in values, not in shape (the
 * same filter fields, operators and sort), so the SQL is built and validated once.
 */
interface Plan {
  readonly statement: Statement;
  /** Parameter names of the filter values, in the order {@link filterValues} yields them. */
  readonly filterParams: readonly string[];
  /** Per sort key: the parameter names of its cursor value (empty without a cursor). */
  readonly cursorParams: readonly (readonly string[])[];
  readonly sortId: string;
  readonly sortLength: number;
  readonly columns: readonly string[];
  readonly jsonColumns: ReadonlySet<string>;
}

const plans = new WeakMap<Database, Map<string, Plan>>();
const MAX_PLANS = 256;

// What makes two queries share SQL: the reader, the filter's fields and operators (and
// how many `in` values), the sort, whether a cursor is given, and the page size (a bound
// LIMIT makes SQLite's query several times slower than a literal one). Values are not in it.
// Names from the query (fields, operators, sort) are JSON-quoted, so that no crafted name
// can spell another shape's key.
function shapeOf(readerName: string, options: QueryOptions, limit: number): string {
  const sort = options.sort;
  // A sort that is not text is refused when planned (and then not cached): its key need not be exact.
  const sortKey = typeof sort === "string" ? JSON.stringify(sort) : Array.isArray(sort) ? JSON.stringify(sort.map((x: unknown) => (typeof x === "string" ? x : null))) : "-";
  let key = `${readerName} ${limit} ${sortKey} ${options.cursor === undefined ? 0 : 1}`;
  const filter = options.filter ?? {};
  for (const field of Object.keys(filter)) {
    const value = filter[field];
    key += ` ${JSON.stringify(field)}:`;
    if (value === null) key += "N";
    else if (typeof value !== "object") key += "V";
    else for (const op of Object.keys(value)) key += `${JSON.stringify(op)}${op === "in" && Array.isArray((value as FilterOps).in) ? (value as FilterOps).in!.length : ""}${(value as Record<string, unknown>)[op] === null ? "!" : ""},`;
  }
  return key;
}

// The filter's values in the order the plan's parameters were named (see planQuery).
// Only shapes that compiled are cached, so the structure is known to be valid here; the
// values are checked by `bindable`, and a prefix's type here.
function filterValues(filter: Readonly<Record<string, FilterValue>> | undefined, out: Array<[string, unknown]>): void {
  if (!filter) return;
  for (const field of Object.keys(filter)) {
    const value = filter[field];
    if (value === null) continue;
    if (typeof value !== "object") {
      out.push([`filter.${field}`, value]);
      continue;
    }
    for (const op of Object.keys(value)) {
      const v = (value as Record<string, unknown>)[op];
      if (op === "in") {
        for (const x of v as Scalar[]) out.push([`filter.${field}.in`, x]);
      } else if (op === "prefix") {
        if (typeof v !== "string") throw new InvalidQueryError(`filter.${field}.prefix`, v, "a string");
        out.push([`filter.${field}.prefix`, [...v].length], [`filter.${field}.prefix`, v]);
      } else if (v !== null) {
        out.push([`filter.${field}.${op}`, v]);
      }
    }
  }
}

function planQuery(db: Database, spec: ReaderSpec, options: QueryOptions, limit: number): Plan {
  let n = 0;
  const filterParams: string[] = [];
  const param = (): string => {
    const name = `__p${n++}`;
    filterParams.push(name);
    return `:${name}`;
  };
  const where: string[] = ["r.tenant = :__tenant"];
  for (const [field, value] of Object.entries(options.filter ?? {})) {
    const col = resolveColumn(spec, field, "filter");
    if (value === null) {
      where.push(`${col.sql} IS NULL`);
    } else if (typeof value !== "object") {
      where.push(`${col.sql} = ${param()}`);
    } else {
      const ops = Object.entries(value);
      if (ops.length === 0) throw new InvalidQueryError(`filter.${field}`, value, "a value or operators eq, ne, gt, gte, lt, lte, in, prefix");
      for (const [op, v] of ops) {
        if (op === "in") {
          if (!Array.isArray(v) || v.length === 0 || v.length > MAX_PAGE_SIZE) throw new InvalidQueryError(`filter.${field}.in`, v, `a non-empty array of at most ${MAX_PAGE_SIZE} values`);
          where.push(`${col.sql} IN (${v.map(() => param()).join(", ")})`);
        } else if (op === "prefix") {
          if (typeof v !== "string") throw new InvalidQueryError(`filter.${field}.prefix`, v, "a string");
          const length = param();
          where.push(`substr(${col.sql}, 1, ${length}) = ${param()}`);
        } else if (op in OPS) {
          where.push(v === null ? `${col.sql} ${op === "ne" ? "IS NOT NULL" : "IS NULL"}` : `${col.sql} ${op === "ne" ? "!=" : OPS[op]} ${param()}`);
        } else {
          throw new InvalidQueryError(`filter.${field}`, op, "operators eq, ne, gt, gte, lt, lte, in, prefix");
        }
      }
    }
  }

  const sort = parseSort(spec, options.sort);
  const sortId = sort.map((k) => (k.desc ? `-${k.field}` : k.field)).join(",");
  const sortExpr = sort.map((k) => `coalesce(${k.sql}, ${NULL_SORT})`);
  const cursorParams: string[][] = sort.map(() => []);
  if (options.cursor !== undefined) {
    // Keyset: (a, b, c) after the cursor, honouring each key's direction.
    const cursorParam = (i: number): string => {
      const name = `__c${n++}`;
      cursorParams[i]!.push(name);
      return `:${name}`;
    };
    const alternatives: string[] = [];
    for (let i = 0; i < sort.length; i++) {
      const parts: string[] = [];
      for (let j = 0; j < i; j++) parts.push(`${sortExpr[j]} = ${cursorParam(j)}`);
      parts.push(`${sortExpr[i]} ${sort[i]!.desc ? "<" : ">"} ${cursorParam(i)}`);
      alternatives.push(`(${parts.join(" AND ")})`);
    }
    where.push(`(${alternatives.join(" OR ")})`);
  }
  const columns = Object.keys(spec.columns);
  const cols = columns.map((c) => `r.${quote(c)}`);
  const sql = `SELECT ${cols.join(", ")}, ${sortExpr.map((e, i) => `${e} AS __s${i}`).join(", ")} FROM ${/^\w+$/u.test(spec.from) ? quote(spec.from) : `(${spec.from})`} AS r WHERE ${where.join(" AND ")} ORDER BY ${sortExpr.map((e, i) => `${e}${sort[i]!.desc ? " DESC" : ""}`).join(", ")} LIMIT ${limit + 1}`;
  const jsonColumns = new Set(Object.entries(spec.columns).filter(([, t]) => t === "json").map(([c]) => c));
  return { statement: db.prepare(sql), filterParams, cursorParams, sortId, sortLength: sort.length, columns, jsonColumns };
}

/** Runs a tenant-scoped query against one reader of a read-model database. */
export function runQuery(db: Database, readerName: string, spec: ReaderSpec, options: QueryOptions): QueryPage {
  if (options === null || typeof options !== "object") throw new TenantRequiredError(options);
  const tenant = checkQueryTenant(options.tenant);
  const limit = options.limit ?? DEFAULT_PAGE_SIZE;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE_SIZE) throw new InvalidQueryError("limit", limit, `an integer from 1 to ${MAX_PAGE_SIZE}`);
  if (options.filter !== undefined && (options.filter === null || typeof options.filter !== "object")) throw new InvalidQueryError("filter", options.filter, "an object of column: value or operators");

  let cache = plans.get(db);
  if (!cache) plans.set(db, (cache = new Map()));
  const shape = shapeOf(readerName, options, limit);
  let plan = cache.get(shape);
  if (!plan) {
    plan = planQuery(db, spec, options, limit);
    if (cache.size >= MAX_PLANS) cache.clear();
    cache.set(shape, plan);
  }

  const params: Record<string, unknown> = { ...(spec.params?.() ?? {}), __tenant: tenant };
  const values: Array<[string, unknown]> = [];
  filterValues(options.filter, values);
  for (let i = 0; i < values.length; i++) params[plan.filterParams[i]!] = bindable(values[i]![0], values[i]![1]);
  if (options.cursor !== undefined) {
    const c = decodeCursor(options.cursor, readerName, plan.sortId, plan.sortLength);
    plan.cursorParams.forEach((names, i) => {
      for (const name of names) params[name] = bindable("cursor", c.v[i]);
    });
  }
  const raw = plan.statement.all(params) as Array<Record<string, unknown>>;
  const more = raw.length > limit;
  const page = more ? raw.slice(0, limit) : raw;
  const { columns, jsonColumns } = plan;
  const rows = page.map((row) => {
    const out: Record<string, unknown> = {};
    for (const c of columns) {
      const v = row[c];
      out[c] = jsonColumns.has(c) && typeof v === "string" ? JSON.parse(v) : v;
    }
    return out;
  });
  if (!more) return { rows };
  const last = page[page.length - 1]!;
  return { rows, nextCursor: encodeCursor({ r: readerName, s: plan.sortId, v: Array.from({ length: plan.sortLength }, (_, i) => last[`__s${i}`] as string | number) }) };
}
