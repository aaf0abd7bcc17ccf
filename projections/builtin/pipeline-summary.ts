import type { Database, Statement } from "better-sqlite3";
import { STREAMS } from "../../streams/index.js";
import type { StoredEvent } from "../../streams/index.js";
import type { ApplyContext, Projection, ProjectionFold } from "../projection.js";
import { tokens } from "./fields.js";

/** Per-minute buckets older than this (behind a key's newest minute) are dropped. */
export const SUMMARY_RATE_WINDOW_MINUTES = 60;
const MINUTE_MS = 60_000;

interface Agg {
  tenant: string;
  category: string;
  type: string;
  source: string;
  count: number;
  firstTime: string;
  lastTime: string;
  lastSeq: number;
  lastMinute: number;
  /** Events per minute, apart from the current run of one minute's events. */
  minutes: Map<number, number>;
  /** The minute of the last events folded and how many of them came in a row. */
  minute: number;
  minuteCount: number;
}

const statements = new WeakMap<Database, { summary: Statement; minute: Statement; prune: Statement }>();

function prepared(db: Database): { summary: Statement; minute: Statement; prune: Statement } {
  let s = statements.get(db);
  if (!s) {
    s = {
      summary: db.prepare(`INSERT INTO pipeline_summary (tenant, category, type, source, count, first_time, last_time, last_seq, last_minute)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (tenant, category, type, source) DO UPDATE SET count = count + excluded.count,
          first_time = min(first_time, excluded.first_time), last_time = max(last_time, excluded.last_time),
          last_seq = max(last_seq, excluded.last_seq), last_minute = max(last_minute, excluded.last_minute)
        RETURNING last_minute`),
      minute: db.prepare(`INSERT INTO pipeline_minute (tenant, category, type, source, minute, count) VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (tenant, category, type, source, minute) DO UPDATE SET count = count + excluded.count`),
      prune: db.prepare(`DELETE FROM pipeline_minute WHERE tenant = ? AND category = ? AND type = ? AND source = ? AND minute < ?`),
    };
    statements.set(db, s);
  }
  return s;
}

const rate = (n: string): string =>
  `coalesce((SELECT sum(m.count) FROM pipeline_minute m WHERE m.tenant = s.tenant AND m.category = s.category AND m.type = s.type AND m.source = s.source AND m.minute >= :from${n}), 0) / :span${n}`;

// Folds in memory first: one upsert per key and per key and minute, not per event.
function makeFold(db: Database, ctx: ApplyContext): ProjectionFold {
  const source = ctx.stream === STREAMS.events ? "events" : "derived";
  // Each tenant and category's aggregates, one per event type, by `<root>.<tenant>.<category>`:
  // a small map that stays in cache. (A map by subject, sharing the subject's hash with
  // generic's lookup, measured slower: one cache miss per event into a large table.)
  const byPrefix = new Map<string, Agg[]>();
  return {
    add(e) {
      const subject = e.subject;
      const a1 = subject.indexOf(".");
      const a2 = subject.indexOf(".", a1 + 1);
      let a3 = a1 < 0 || a2 < 0 ? subject.length : subject.indexOf(".", a2 + 1);
      if (a3 < 0) a3 = subject.length;
      const prefix = subject.slice(0, a3);
      let group = byPrefix.get(prefix);
      if (!group) byPrefix.set(prefix, (group = []));
      const type = e.type;
      const minute = Math.floor(e.storedAt / MINUTE_MS);
      let a: Agg | undefined;
      for (const x of group) {
        if (x.type === type) {
          a = x;
          break;
        }
      }
      if (!a) {
        const [, tenant, category] = tokens(e.subject);
        a = { tenant, category, type, source, count: 0, firstTime: e.time, lastTime: e.time, lastSeq: e.seq, lastMinute: minute, minutes: new Map(), minute, minuteCount: 0 };
        group.push(a);
      }
      a.count += 1;
      if (e.time < a.firstTime) a.firstTime = e.time;
      if (e.time > a.lastTime) a.lastTime = e.time;
      if (e.seq > a.lastSeq) a.lastSeq = e.seq;
      if (minute > a.lastMinute) a.lastMinute = minute;
      if (minute !== a.minute) {
        a.minutes.set(a.minute, (a.minutes.get(a.minute) ?? 0) + a.minuteCount);
        a.minute = minute;
        a.minuteCount = 0;
      }
      a.minuteCount += 1;
    },
    write() {
      const s = prepared(db);
      for (const group of byPrefix.values()) {
        for (const a of group) {
          a.minutes.set(a.minute, (a.minutes.get(a.minute) ?? 0) + a.minuteCount);
          const row = s.summary.get(a.tenant, a.category, a.type, a.source, a.count, a.firstTime, a.lastTime, a.lastSeq, a.lastMinute) as { last_minute: number };
          const oldest = row.last_minute - SUMMARY_RATE_WINDOW_MINUTES - 1;
          let stale = false;
          for (const [minute, count] of a.minutes) {
            if (minute < oldest) stale = true;
            else s.minute.run(a.tenant, a.category, a.type, a.source, minute, count);
          }
          if (stale || a.lastMinute === row.last_minute) s.prune.run(a.tenant, a.category, a.type, a.source, oldest);
        }
      }
      // What is folded are increments: the next window starts from zero.
      byPrefix.clear();
    },
  };
}

/**
 * `pipeline_summary`: per tenant × category (processor for derived events) × event type ×
 * source (`events` or `derived`): count, first and last event time, last sequence, and
 * the rate (events/s, by stored time) over the last 1 min, 5 min and 1 h.
 */
export function pipelineSummaryProjection(): Projection {
  return {
    name: "pipeline_summary",
    version: 1,
    description: "Per tenant, category and event type: count, first/last time, last seq, rates over 1 min / 5 min / 1 h",
    sources: [
      { stream: STREAMS.events, subjects: ["evt.>"] },
      { stream: STREAMS.derived, subjects: ["drv.>"] },
    ],
    readers: {
      pipeline_summary: {
        description: "One row per category, event type and source",
        from: `SELECT s.tenant, s.category, s.type, s.source, s.count, s.first_time, s.last_time, s.last_seq,
          ${rate("1")} AS rate_1m, ${rate("5")} AS rate_5m, ${rate("60")} AS rate_1h FROM pipeline_summary s`,
        columns: {
          tenant: "text", category: "text", type: "text", source: "text", count: "integer", first_time: "text", last_time: "text",
          last_seq: "integer", rate_1m: "real", rate_5m: "real", rate_1h: "real",
        },
        key: ["category", "type", "source"],
        params: () => {
          const now = Date.now();
          const minute = Math.floor(now / MINUTE_MS);
          const into = (now % MINUTE_MS) / 1000;
          // Buckets [now - n min, now]: n whole minutes plus the current partial one.
          return { from1: minute - 1, span1: 60 + into, from5: minute - 5, span5: 300 + into, from60: minute - 60, span60: 3600 + into };
        },
      },
    },
    init(db) {
      db.exec(`
        CREATE TABLE pipeline_summary (
          tenant TEXT NOT NULL, category TEXT NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL,
          count INTEGER NOT NULL, first_time TEXT NOT NULL, last_time TEXT NOT NULL, last_seq INTEGER NOT NULL,
          last_minute INTEGER NOT NULL,
          PRIMARY KEY (tenant, category, type, source)) WITHOUT ROWID;
        CREATE TABLE pipeline_minute (
          tenant TEXT NOT NULL, category TEXT NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL,
          minute INTEGER NOT NULL, count INTEGER NOT NULL,
          PRIMARY KEY (tenant, category, type, source, minute)) WITHOUT ROWID;
      `);
    },
    apply(db, events: readonly StoredEvent[], ctx) {
      const f = makeFold(db, ctx);
      for (const e of events) f.add(e);
      f.write();
    },
    fold: makeFold,
  };
}
