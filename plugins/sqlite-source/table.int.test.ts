// The SQLite tailer against real SQLite files (better-sqlite3), written by the test.
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MANIFEST_FILE, parseManifest } from "../index.js";
import { SQLITE_SOURCE_OPTIONS_SCHEMA, SourceOptionsError, confinedPath, readTable, toToken } from "./table.js";

let root: string;
let outside: string;
let file: string;
let db: Database.Database;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "flexcore-sqlite-src-"));
  outside = mkdtempSync(join(tmpdir(), "flexcore-sqlite-out-"));
  file = join(root, "shop.db");
  db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.exec("CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT, total REAL, updated INTEGER, note BLOB); CREATE TABLE secrets (v TEXT); INSERT INTO secrets VALUES ('s3cret');");
  const ins = db.prepare("INSERT INTO orders (id, customer, total, updated, note) VALUES (?, ?, ?, ?, ?)");
  for (let i = 1; i <= 5; i++) ins.run(`o-${i}`, i % 2 ? "ada.lovelace" : "bob", i * 10, 1000 + i, i === 1 ? Buffer.from([1, 2, 3]) : null);
  new Database(join(outside, "other.db")).exec("CREATE TABLE orders (id TEXT)");
});

afterAll(() => {
  db.close();
  rmSync(root, { recursive: true, force: true });
  rmSync(outside, { recursive: true, force: true });
});

const base = { path: "", table: "orders", keyColumn: "customer", category: "orders" };

describe("sqlite-source: reading a table after a cursor", () => {
  it("returns rows after the cursor in rowid order, up to max, with the new cursor; data is the row", () => {
    const o = { ...base, path: file, idColumn: "id" };
    const first = readTable(o, [root], null, 2);
    expect(first.cursor).toBe("2");
    expect(first.records).toEqual([
      { id: "o-1", key: "ada%2Elovelace", type: "RowAdded", data: { id: "o-1", customer: "ada.lovelace", total: 10, updated: 1001, note: "AQID" } },
      { id: "o-2", key: "bob", type: "RowAdded", data: { id: "o-2", customer: "bob", total: 20, updated: 1002, note: null } },
    ]);
    const next = readTable(o, [root], first.cursor, 10);
    expect(next.records.map((r) => r.id)).toEqual(["o-3", "o-4", "o-5"]);
    expect(next.cursor).toBe("5");
    expect(readTable(o, [root], "5", 10)).toEqual({ records: [], cursor: "5" });
  });

  it("tails an integer or text column; the id defaults to the cursor value", () => {
    expect(readTable({ ...base, path: file, cursorColumn: "updated", type: "OrderChanged" }, [root], "1003", 10).records.map((r) => [r.id, r.type])).toEqual([["1004", "OrderChanged"], ["1005", "OrderChanged"]]);
    expect(readTable({ ...base, path: file, cursorColumn: "id", cursorType: "text" }, [root], "o-3", 10)).toMatchObject({ cursor: "o-5", records: [{ id: "o-4" }, { id: "o-5" }] });
  });

  it.each([
    [{ table: "orders; DROP TABLE orders" }, "options.table"],
    [{ table: 'orders" UNION SELECT v FROM secrets --' }, "options.table"],
    [{ cursorColumn: "rowid) OR 1=1 --" }, "options.cursorColumn"],
    [{ keyColumn: "(SELECT v FROM secrets)" }, "options.keyColumn"],
    [{ idColumn: "id, v" }, "options.idColumn"],
    [{ table: "nope" }, "options.table"],
    [{ keyColumn: "nope" }, "options.keyColumn"],
  ])("refuses %j (no SQL built from it) and changes nothing", (bad, path) => {
    const err = (() => {
      try {
        readTable({ ...base, path: file, ...bad }, [root], null, 10);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(SourceOptionsError);
    expect((err as SourceOptionsError).path).toBe(path);
    expect((db.prepare("SELECT count(*) AS n FROM orders").get() as { n: number }).n).toBeGreaterThanOrEqual(5);
  });

  it("binds the cursor: a cursor holding SQL is refused (integer) or compared as a plain value (text)", () => {
    expect(() => readTable({ ...base, path: file }, [root], "0 OR 1=1", 10)).toThrow(/integer cursor/);
    expect(readTable({ ...base, path: file, cursorColumn: "id", cursorType: "text" }, [root], "' OR '1'='1", 10).records).toHaveLength(5);
    expect(readTable({ ...base, path: file, cursorColumn: "id", cursorType: "text" }, [root], "z' OR '1'='1", 10).records).toHaveLength(0);
  });

  it("opens read-only: the file's bytes do not change", () => {
    db.pragma("wal_checkpoint(TRUNCATE)");
    const before = readFileSync(file);
    readTable({ ...base, path: file }, [root], null, 100);
    expect(readFileSync(file).equals(before)).toBe(true);
  });

  it("only reads files inside the configured roots (after symbolic links)", () => {
    expect(() => confinedPath(join(outside, "other.db"), [root])).toThrow(/inside the configured roots/);
    expect(() => confinedPath(join(root, "..", "x.db"), [root])).toThrow(SourceOptionsError);
    expect(() => confinedPath("shop.db", [root])).toThrow(/absolute/);
    expect(() => confinedPath(file, [])).toThrow(/no `roots`/);
    const link = join(root, "escape.db");
    symlinkSync(join(outside, "other.db"), link);
    expect(() => confinedPath(link, [root])).toThrow(/inside the configured roots/);
    expect(confinedPath(file, [root])).toBe(file);
  });

  it("makes subject tokens of any key deterministically", () => {
    expect(toToken("a.b c*>")).toBe("a%2Eb%20c%2A%3E");
    expect(toToken(42)).toBe("42");
    expect(toToken("x".repeat(200))).toMatch(/^h-[0-9a-f]{64}$/u);
  });

  it("the manifest's source options schema is SQLITE_SOURCE_OPTIONS_SCHEMA", () => {
    const m = parseManifest(readFileSync(join(import.meta.dirname, MANIFEST_FILE)), { file: MANIFEST_FILE });
    expect(m.capabilities.sources?.[0]?.options).toEqual(SQLITE_SOURCE_OPTIONS_SCHEMA);
  });
});
