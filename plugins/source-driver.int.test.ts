// The source driver with the sqlite-source plugin as a child process, a SQLite file written
// by the test, and a real nats-server (FLEX_EVENTS, flex_state).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPluginProcess } from "../test/plugin-process.js";
import type { PluginProcess } from "../test/plugin-process.js";
import { startPluginTestNats } from "../test/plugin-nats.js";
import type { PluginTestNats } from "../test/plugin-nats.js";
import { ensureTopology, STREAMS } from "../streams/index.js";
import { createPluginClient } from "./client.js";
import { PluginRejectedError } from "./errors.js";
import { createSourceDriver, sourceCursorKey } from "./source-driver.js";
import { sqliteSourcePluginCommand } from "./sqlite-source/launch.js";

let nats: PluginTestNats;
let proc: PluginProcess;
let dir: string;
let db: Database.Database;
let file: string;

async function events(filter: string): Promise<Array<{ subject: string; id: string; data: Record<string, unknown> }>> {
  const jsm = await jetstreamManager(nats.nc);
  const info = await jsm.streams.info(STREAMS.events, { subjects_filter: filter });
  const total = Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
  if (total === 0) return [];
  const consumer = await jetstream(nats.nc).consumers.get(STREAMS.events, { filter_subjects: filter });
  const out = [];
  const it = await consumer.consume({ max_messages: 1000 });
  for await (const m of it) {
    out.push({ subject: m.subject, id: m.headers?.get("Nats-Msg-Id") ?? "", data: m.json<Record<string, unknown>>() });
    if (out.length >= total) break;
  }
  await it.close();
  return out;
}

async function waitFor(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "flexcore-source-driver-"));
  file = join(dir, "crm.db");
  db = new Database(file);
  db.pragma("journal_mode = WAL");
  db.exec("CREATE TABLE contacts (id INTEGER PRIMARY KEY, account TEXT NOT NULL, email TEXT)");
  nats = await startPluginTestNats({ plugins: ["sqlite-source"] });
  await ensureTopology(nats.nc);
  proc = await startPluginProcess(nats, "sqlite-source", sqliteSourcePluginCommand(), { FLEXCORE_PLUGIN_CONFIG: JSON.stringify({ roots: [dir] }) });
}, 30_000);

afterAll(async () => {
  await proc?.kill();
  await nats?.close();
  db?.close();
  rmSync(dir, { recursive: true, force: true });
});

const insert = (n: number, from: number): void => {
  const ins = db.prepare("INSERT INTO contacts (id, account, email) VALUES (?, ?, ?)");
  db.transaction(() => {
    for (let i = from; i < from + n; i++) ins.run(i, `acct${i % 3}`, `u${i}@example.com`);
  })();
};

describe("source driver", () => {
  it("appends the rows after the cursor with deterministic ids, then stores the cursor; the next poll reads only new rows", async () => {
    insert(5, 1);
    const options = { path: file, table: "contacts", idColumn: "id", keyColumn: "account", category: "contacts", type: "ContactAdded" };
    const driver = createSourceDriver(nats.nc, { client: createPluginClient(nats.nc, "sqlite-source"), source: "sqlite-table", name: "crm", tenant: "acme", category: "contacts", options, max: 3 });
    expect(await driver.pollOnce()).toBe(3);
    expect(await driver.storedCursor()).toBe("3");
    expect(await driver.pollOnce()).toBe(2);
    expect(await driver.pollOnce()).toBe(0);
    expect(await driver.storedCursor()).toBe("5");
    const got = await events("evt.acme.contacts.>");
    expect(got.map((e) => e.id)).toEqual([1, 2, 3, 4, 5].map((i) => `sqlite-source:sqlite-table:acme:crm:${i}`));
    expect(got[0]).toMatchObject({ subject: "evt.acme.contacts.acct1", data: { id: 1, account: "acct1", email: "u1@example.com" } });
    expect(driver.metrics()).toEqual({ polls: 3, records: 5, appended: 5, duplicates: 0, failed: 0 });
    await driver.close();
  });

  // Rows 1-5 were appended for tenant acme above: with ids of plugin, source and record only, the
  // stream-wide dedupe would drop tenant crash's rows 1-5 (this test caught that).
  it("a crash between the appends and the cursor store re-reads and re-appends: the dedupe keeps one event per id", async () => {
    insert(4, 6);
    const options = { path: file, table: "contacts", idColumn: "id", keyColumn: "account", category: "people" };
    const client = createPluginClient(nats.nc, "sqlite-source");
    const crash = new Error("killed between append and cursor store");
    const first = createSourceDriver(nats.nc, { client, source: "sqlite-table", name: "crm", tenant: "crash", category: "people", options, max: 100, afterAppend: () => { throw crash; } });
    await expect(first.pollOnce()).rejects.toBe(crash);
    expect(await first.storedCursor()).toBeNull();
    expect(first.metrics()).toMatchObject({ appended: 9, failed: 1 });
    await first.close();
    const second = createSourceDriver(nats.nc, { client, source: "sqlite-table", name: "crm", tenant: "crash", category: "people", options, max: 100 });
    expect(await second.pollOnce()).toBe(9);
    expect(second.metrics()).toMatchObject({ records: 9, appended: 0, duplicates: 9 });
    expect(await second.storedCursor()).toBe("9");
    const got = await events("evt.crash.people.>");
    expect(got).toHaveLength(9);
    expect(new Set(got.map((e) => e.id)).size).toBe(9);
    await second.close();
  });

  it("tails a table while it is written, keeping per-key order", async () => {
    const options = { path: file, table: "contacts", idColumn: "id", keyColumn: "account", category: "live" };
    const errors: unknown[] = [];
    const driver = createSourceDriver(nats.nc, { client: createPluginClient(nats.nc, "sqlite-source"), source: "sqlite-table", name: "crm", tenant: "live", category: "live", options, max: 25, intervalMs: 20, onError: (e) => errors.push(e) });
    driver.start();
    for (let batch = 0; batch < 10; batch++) {
      insert(10, 100 + batch * 10);
      await new Promise((r) => setTimeout(r, 15));
    }
    await waitFor(async () => (await driver.storedCursor()) === "199", 20_000, "cursor 199");
    await driver.close();
    const got = await events("evt.live.live.>");
    expect(got).toHaveLength(9 + 100);
    for (const key of ["acct0", "acct1", "acct2"]) {
      const ids = got.filter((e) => e.subject.endsWith(`.${key}`)).map((e) => e.data.id as number);
      expect(ids).toEqual([...ids].sort((a, b) => a - b));
    }
    expect(errors).toEqual([]);
  });

  it("options that would inject SQL or leave the roots are refused (400) and nothing is appended or stored", async () => {
    const client = createPluginClient(nats.nc, "sqlite-source");
    for (const bad of [
      { path: file, table: "contacts WHERE 1=1; --", keyColumn: "account", category: "bad" },
      { path: file, table: "contacts", keyColumn: "account, (SELECT 1)", category: "bad" },
      { path: "/etc/passwd", table: "contacts", keyColumn: "account", category: "bad" },
    ]) {
      const driver = createSourceDriver(nats.nc, { client, source: "sqlite-table", name: "crm", tenant: "evil", category: "bad", options: bad });
      const err = await driver.pollOnce().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PluginRejectedError);
      expect(await driver.storedCursor()).toBeNull();
      await driver.close();
    }
    expect(await events("evt.evil.>")).toEqual([]);
    expect(sourceCursorKey("sqlite-source", "sqlite-table", "evil", "crm")).toMatch(/^source\.[-_A-Za-z0-9]+\.[-_A-Za-z0-9]+\.[-_A-Za-z0-9]+\.[-_A-Za-z0-9]+$/u);
  });
});
