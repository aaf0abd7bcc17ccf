import type { Database, Statement } from "better-sqlite3";
import { InvalidOptionError, STREAMS } from "../../streams/index.js";
import type { StoredEvent } from "../../streams/index.js";
import type { Projection, ProjectionFold } from "../projection.js";
import { tokens } from "./fields.js";

/** Folds one aggregate's events into its JSON document (pure; `state` is undefined for the first event). */
export type DocumentReducer = (state: unknown, event: StoredEvent) => unknown;

/** A JSON field of the documents to index, for fast filters on `doc.<field>`. */
export interface GenericIndex {
  /** Dotted path into the document: `status`, `address.city`. */
  readonly field: string;
}

/** Options of {@link genericProjection}. */
export interface GenericProjectionOptions {
  /** Reducers by category; other categories use a JSON merge (RFC 7396) of event data. */
  readonly reducers?: Readonly<Record<string, DocumentReducer>>;
  /** Indexed document fields. */
  readonly indexes?: readonly GenericIndex[];
  /** Subject filters of FLEX_EVENTS to fold. @default ["evt.>"] */
  readonly subjects?: readonly string[];
  /** Bump when reducers change meaning: the model is rebuilt at start. @default 1 */
  readonly version?: number;
}

const FIELD = /^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$/u;

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/**
 * RFC 7396 JSON merge patch: objects merge key by key, `null` deletes a key, anything else
 * replaces. Returns a new value; neither argument is modified.
 */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: Record<string, unknown> = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else setOwn(out, k, mergePatch(Object.hasOwn(out, k) ? out[k] : undefined, v));
  }
  return out;
}

// Like mergePatch, but modifies `target` when it is an object this module owns; values
// from `patch` are never aliased except arrays and scalars, which are never modified.
function mergeInto(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: Record<string, unknown> = isObject(target) ? target : {};
  // A flat patch (no null, no nested object: most events) is a plain assign, which V8
  // does natively; a JS loop of keyed loads and stores costs about twice as much.
  let flat = true;
  for (const k in patch) {
    // for-in over a parsed object: no array of values per event (Object.values).
    const v = patch[k];
    if (v === null || isObject(v)) {
      flat = false;
      break;
    }
  }
  // `__proto__` from JSON is an own key: assigned, it would set the prototype instead.
  if (flat && !Object.hasOwn(patch, "__proto__")) return Object.assign(out, patch);
  for (const k in patch) {
    const v = patch[k];
    if (v === null) delete out[k];
    else setOwn(out, k, isObject(v) ? mergeInto(Object.hasOwn(out, k) ? out[k] : undefined, v) : v);
  }
  return out;
}

function setOwn(o: Record<string, unknown>, k: string, v: unknown): void {
  if (k === "__proto__") Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
  else o[k] = v;
}

interface Doc {
  /** Whether `state` may be modified in place (parsed or built here, not a reducer's). */
  owned: boolean;
  tenant: string;
  category: string;
  id: string;
  /** The category's reducer, if it has one (looked up once per document). */
  reducer: DocumentReducer | undefined;
  state: unknown;
  revision: number;
  lastType: string;
  createdTime: string;
  updatedTime: string;
  lastSeq: number;
  /** Changed since the last write (listed in the fold's `dirty`). */
  dirty: boolean;
}

const statements = new WeakMap<Database, { load: Statement; save: Statement; any: Statement }>();
/** Documents a fold keeps between windows (as parsed state), beyond which it forgets them all. */
const CACHED_DOCUMENTS = 100_000;

/**
 * `generic`: the latest state of every aggregate (`evt.<tenant>.<category>.<id>`) as a JSON
 * document, folded by the category's reducer or by JSON merge of the event data, with its
 * revision (events folded) and the time of the first and last event.
 */
export function genericProjection(options: GenericProjectionOptions = {}): Projection {
  const reducers = options.reducers ?? {};
  for (const [category, r] of Object.entries(reducers)) if (typeof r !== "function") throw new InvalidOptionError(`reducers.${category}`, r, "a function (state, event) => state");
  const indexes = options.indexes ?? [];
  indexes.forEach((ix, i) => {
    if (typeof ix?.field !== "string" || !FIELD.test(ix.field)) throw new InvalidOptionError(`indexes[${i}].field`, ix?.field, "a dotted path of letters, digits and `_`");
  });
  const fold = (doc: Doc, e: StoredEvent): unknown => {
    if (doc.reducer) {
      doc.owned = false;
      return doc.reducer(doc.state, e);
    }
    // The document was parsed or built here, so it can be merged into without a copy.
    const next = doc.owned ? mergeInto(doc.state, e.data) : mergePatch(doc.state, e.data);
    doc.owned = true;
    return next;
  };
  const prepare = (db: Database): { load: Statement; save: Statement; any: Statement } => {
    let s = statements.get(db);
    if (!s) {
      s = {
        load: db.prepare(`SELECT doc, revision, created_time FROM generic_aggregates WHERE tenant = ? AND category = ? AND id = ?`),
        any: db.prepare(`SELECT 1 FROM generic_aggregates LIMIT 1`),
        save: db.prepare(`INSERT INTO generic_aggregates (tenant, category, id, doc, revision, last_type, created_time, updated_time, last_seq)
          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
          ON CONFLICT (tenant, category, id) DO UPDATE SET doc = excluded.doc, revision = excluded.revision, last_type = excluded.last_type,
            updated_time = excluded.updated_time, last_seq = excluded.last_seq`),
      };
      statements.set(db, s);
    }
    return s;
  };
  // Folds per aggregate in memory: one read and one write per aggregate and window.
  const makeFold = (db: Database): ProjectionFold => {
    const s = prepare(db);
    const docs = new Map<string, Doc>();
    let dirty: Doc[] = [];
    // Every row is in `docs` (a fold started on an empty table, as a rebuild does, and
    // never forgot one): an aggregate not there has no row, no need to look.
    let complete = s.any.get() === undefined;
    return {
      add(e) {
        let doc = docs.get(e.subject);
        const fresh = !doc;
        if (!doc) {
          const [, tenant, category, id] = tokens(e.subject);
          const row = complete ? undefined : (s.load.get(tenant, category, id) as { doc: string | null; revision: number; created_time: string } | undefined);
          doc = {
            owned: true,
            tenant, category, id,
            reducer: Object.hasOwn(reducers, category) ? reducers[category] : undefined,
            state: row?.doc == null ? undefined : JSON.parse(row.doc),
            revision: row?.revision ?? 0,
            lastType: e.type,
            createdTime: row?.created_time ?? e.time,
            updatedTime: e.time,
            lastSeq: e.seq,
            dirty: false,
          };
        }
        // Throws before changing anything (reading `data` parses it; reducers are pure).
        doc.state = fold(doc, e);
        doc.revision += 1;
        doc.lastType = e.type;
        doc.updatedTime = e.time;
        doc.lastSeq = e.seq;
        if (fresh) docs.set(e.subject, doc);
        if (!doc.dirty) {
          doc.dirty = true;
          dirty.push(doc);
        }
      },
      write() {
        for (const d of dirty) {
          s.save.run(d.tenant, d.category, d.id, d.state === undefined ? null : JSON.stringify(d.state), d.revision, d.lastType, d.createdTime, d.updatedTime, d.lastSeq);
          d.dirty = false;
        }
        dirty = [];
        // Once committed, the documents equal their rows: the next window of this fold
        // starts from them instead of reading and parsing the rows again (up to a bound).
        if (docs.size > CACHED_DOCUMENTS) {
          docs.clear();
          complete = false;
        }
      },
    };
  };
  return {
    name: "generic",
    version: options.version ?? 1,
    description: "Latest state of every aggregate as a JSON document (reducer per category, else JSON merge of event data)",
    sources: [{ stream: STREAMS.events, subjects: options.subjects ?? ["evt.>"] }],
    readers: {
      aggregates: {
        description: "One row per aggregate; filter on document fields with `doc.<path>`",
        from: "generic_aggregates",
        columns: {
          tenant: "text", category: "text", id: "text", doc: "json", revision: "integer", last_type: "text",
          created_time: "text", updated_time: "text", last_seq: "integer",
        },
        key: ["category", "id"],
      },
    },
    init(db) {
      db.exec(`CREATE TABLE generic_aggregates (
        tenant TEXT NOT NULL, category TEXT NOT NULL, id TEXT NOT NULL, doc TEXT, revision INTEGER NOT NULL,
        last_type TEXT NOT NULL, created_time TEXT NOT NULL, updated_time TEXT NOT NULL, last_seq INTEGER NOT NULL,
        PRIMARY KEY (tenant, category, id)) WITHOUT ROWID`);
      indexes.forEach((ix, i) => {
        db.exec(`CREATE INDEX generic_ix${i}_${ix.field.replaceAll(".", "_")} ON generic_aggregates (tenant, category, json_extract(doc, '$.${ix.field}'))`);
      });
    },
    apply(db, events) {
      const f = makeFold(db);
      for (const e of events) f.add(e);
      f.write();
    },
    fold: makeFold,
  };
}
