import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, describe, expect, it } from "vitest";
import type { StoredEvent } from "../../streams/index.js";
import { pipelineSummaryProjection } from "./pipeline-summary.js";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const MINUTE = 60_000;

function event(seq: number, subject: string, type: string, minute: number): StoredEvent {
  const storedAt = minute * MINUTE + (seq % 60) * 1000;
  return { id: `e${seq}`, type, data: {}, time: new Date(storedAt).toISOString(), correlationId: undefined, causationId: undefined, schema: "1", subject, seq, revision: undefined, storedAt };
}

interface Minute { tenant: string; category: string; type: string; minute: number; count: number }

/** Folds `windows` (one fold, one transaction each) into a fresh SQLite file; returns its rows. */
function fold(windows: StoredEvent[][]): { summary: Array<{ tenant: string; category: string; type: string; count: number; last_seq: number }>; minutes: Minute[] } {
  const dir = mkdtempSync(join(tmpdir(), "flexcore-summary-"));
  dirs.push(dir);
  const db = new Database(join(dir, "s.db"));
  try {
    const p = pipelineSummaryProjection();
    p.init(db);
    const f = p.fold!(db, { projection: p.name, stream: "FLEX_EVENTS" });
    for (const w of windows) {
      for (const e of w) f.add(e);
      db.transaction(() => f.write())();
    }
    return {
      summary: db.prepare("SELECT tenant, category, type, count, last_seq FROM pipeline_summary ORDER BY tenant, category, type").all() as never,
      minutes: db.prepare("SELECT tenant, category, type, minute, count FROM pipeline_minute ORDER BY tenant, category, type, minute").all() as Minute[],
    };
  } finally {
    db.close();
  }
}

/** What the rows must be: counted event by event. */
function expected(events: StoredEvent[]): { counts: Map<string, number>; minutes: Map<string, number> } {
  const counts = new Map<string, number>();
  const minutes = new Map<string, number>();
  for (const e of events) {
    const [, tenant, category] = e.subject.split(".");
    const key = `${tenant}/${category}/${e.type}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
    const m = `${key}/${Math.floor(e.storedAt / MINUTE)}`;
    minutes.set(m, (minutes.get(m) ?? 0) + 1);
  }
  return { counts, minutes };
}

describe("pipeline_summary fold", () => {
  it("counts per tenant, category and type, and per minute, with minutes interleaved and many subjects per key", () => {
    const events: StoredEvent[] = [];
    for (let i = 1; i <= 3_000; i++) {
      // Minutes go back and forth (late events), tenants and types alternate, 50 aggregates per category.
      const minute = 29_000_000 + (i % 7 === 0 ? 0 : Math.floor(i / 1_000)) + (i % 3);
      events.push(event(i, `evt.t${i % 3}.${i % 2 ? "sensor" : "pump"}.a${i % 50}`, i % 5 === 0 ? "Calibrated" : "ReadingRecorded", minute));
    }
    const want = expected(events);
    // One window, then the same events split over windows: the rows must not depend on the split.
    for (const windows of [[events], [events.slice(0, 1_234), events.slice(1_234, 2_000), events.slice(2_000)]]) {
      const got = fold(windows);
      expect(new Map(got.summary.map((r) => [`${r.tenant}/${r.category}/${r.type}`, r.count]))).toEqual(want.counts);
      expect(new Map(got.minutes.map((r) => [`${r.tenant}/${r.category}/${r.type}/${r.minute}`, r.count]))).toEqual(want.minutes);
      expect(Math.max(...got.summary.map((r) => r.last_seq))).toBe(3_000);
    }
  });

  it("keeps keys apart whose subjects share a prefix, and subjects with fewer than three tokens", () => {
    const events = [
      event(1, "evt.t1.a.x", "T", 29_000_000),
      event(2, "evt.t1.ab.x", "T", 29_000_000),
      event(3, "evt.t1", "T", 29_000_000),
      event(4, "evt.t1.a.y", "T", 29_000_000),
      event(5, "evt.t11.a.x", "T", 29_000_000),
    ];
    const got = fold([events]);
    expect(got.summary.map((r) => [r.tenant, r.category, r.count])).toEqual([["t1", "", 1], ["t1", "a", 2], ["t1", "ab", 1], ["t11", "a", 1]]);
  });
});
