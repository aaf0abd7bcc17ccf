import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, describe, expect, it } from "vitest";
import type { StoredEvent } from "../../streams/index.js";
import { genericProjection, mergePatch } from "./generic.js";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function event(seq: number, id: string, data: unknown): StoredEvent {
  return { id: `e${seq}`, type: "Changed", data, time: new Date(Date.UTC(2026, 0, 1, 0, 0, seq)).toISOString(), correlationId: undefined, causationId: undefined, schema: "1", subject: `evt.t1.thing.${id}`, seq, revision: undefined, storedAt: seq };
}

/** Folds the events in one window into a fresh SQLite file and returns the documents by id. */
function foldAll(events: StoredEvent[]): Map<string, unknown> {
  const dir = mkdtempSync(join(tmpdir(), "flexcore-generic-"));
  dirs.push(dir);
  const db = new Database(join(dir, "g.db"));
  try {
    const p = genericProjection();
    p.init(db);
    const fold = p.fold!(db, { stream: "FLEX_EVENTS" } as never);
    for (const e of events) fold.add(e);
    db.transaction(() => fold.write())();
    const rows = db.prepare("SELECT id, doc FROM generic_aggregates").all() as Array<{ id: string; doc: string }>;
    return new Map(rows.map((r) => [r.id, JSON.parse(r.doc)]));
  } finally {
    db.close();
  }
}

describe("generic documents (JSON merge patch, RFC 7396)", () => {
  it("merges flat and nested patches, deletes keys set to null, replaces arrays", () => {
    const docs = foldAll([
      event(1, "a", { name: "x", n: 1, tags: ["a"], address: { city: "Oslo", zip: "0150" } }),
      event(2, "a", { n: 2, tags: ["b", "c"] }),
      event(3, "a", { address: { zip: null, street: "Main" }, name: null }),
      event(4, "b", { only: true }),
    ]);
    expect(docs.get("a")).toEqual({ n: 2, tags: ["b", "c"], address: { city: "Oslo", street: "Main" } });
    expect(docs.get("b")).toEqual({ only: true });
  });

  it("folds the same documents as mergePatch applied event by event", () => {
    const patches = Array.from({ length: 200 }, (_, i) => (i % 3 === 0 ? { v: i, nested: { k: i % 5 === 0 ? null : i } } : i % 7 === 0 ? { v: null } : { v: i, w: `s${i}` }));
    const docs = foldAll(patches.map((p, i) => event(i + 1, `k${i % 4}`, p)));
    for (let k = 0; k < 4; k++) {
      let expected: unknown;
      patches.forEach((p, i) => {
        if (i % 4 === k) expected = mergePatch(expected, p);
      });
      expect(docs.get(`k${k}`)).toEqual(expected);
    }
  });

  it("never modifies an event's data, which other projections may still hold", () => {
    const first = { a: 1, inner: { b: 1 } };
    const second = { a: 2, inner: { c: 2 } };
    const docs = foldAll([event(1, "x", first), event(2, "x", second), event(3, "x", { a: 3 })]);
    expect(first).toEqual({ a: 1, inner: { b: 1 } });
    expect(second).toEqual({ a: 2, inner: { c: 2 } });
    expect(docs.get("x")).toEqual({ a: 3, inner: { b: 1, c: 2 } });
  });

  it("keeps a `__proto__` key of event data as a field instead of setting the prototype", () => {
    const data = JSON.parse('{"__proto__": {"polluted": true}, "ok": 1}') as unknown;
    const docs = foldAll([event(1, "p", { ok: 0 }), event(2, "p", data)]);
    expect(docs.get("p")).toEqual(JSON.parse('{"ok": 1, "__proto__": {"polluted": true}}'));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    const merged = mergePatch({ ok: 0 }, data) as Record<string, unknown>;
    expect(Object.getPrototypeOf(merged)).toBe(Object.prototype);
    expect(Object.hasOwn(merged, "__proto__")).toBe(true);
  });
});
