// Redrive of a projection's dead letters (FLEX_REAPPLY): applied once where it failed, in one
// transaction with the record of its id, also across a repeat, a second copy and a kill -9.
import { spawn } from "node:child_process";
import { mkdtemp, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDeadLetters, createPublisher, encodeEvent, ensureTopology, HEADERS, REDRIVE_HEADERS, redriveMessage, STREAMS } from "../streams/index.js";
import type { DeadLetter, Publisher } from "../streams/index.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { projectionsDir, readManifest } from "./catalog.js";
import { ENGINE_TABLES, REAPPLY_POSITION_KEY } from "./database.js";
import { flakyProjection } from "./fixtures/flaky-projection.js";
import { createProjectionEngine, dlqSource } from "./index.js";
import type { ProjectionEngine } from "./index.js";

const HOST = join(import.meta.dirname, "fixtures", "reapply-host.ts");
/** A tenant with its own confined NATS user (the boundary test). */
const TENANT = uniqueName("nt");

let nats: TestNats;
let pub: Publisher;
const dirs: string[] = [];

beforeAll(async () => {
  nats = await startTestNats({ tenants: [TENANT] });
  await ensureTopology(nats.nc);
  pub = createPublisher(nats.nc);
});
afterAll(async () => {
  await pub?.close();
  await nats?.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), "flexcore-reapply-"));
  dirs.push(d);
  return d;
}

async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function publishItems(tenant: string, id: string, datas: readonly unknown[]): Promise<number[]> {
  const seqs: number[] = [];
  for (const data of datas) {
    const enc = encodeEvent({ type: "ItemTouched", data });
    seqs.push((await pub.publish(`evt.${tenant}.item.${id}`, enc.data, { headers: enc.headers })).seq);
  }
  return seqs;
}

/** What the served database of `name` under `dataDir` holds (read from the file, read-only). */
function model(dataDir: string, name: string, tenant: string, id: string): { n: number; seqs: number[]; redriven: Array<{ dlq_seq: number; outcome: string }>; position: number } {
  const dir = projectionsDir(dataDir);
  const manifest = readManifest(dir, name);
  if (!manifest) return { n: 0, seqs: [], redriven: [], position: 0 };
  const db = new Database(join(dir, manifest.file), { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare("SELECT n, seqs FROM items WHERE tenant = ? AND id = ?").get(tenant, id) as { n: number; seqs: string } | undefined;
    const redriven = db.prepare(`SELECT dlq_seq, outcome FROM ${ENGINE_TABLES.redriven} ORDER BY dlq_seq`).all() as Array<{ dlq_seq: number; outcome: string }>;
    const pos = db.prepare(`SELECT value FROM ${ENGINE_TABLES.meta} WHERE key = ?`).get(REAPPLY_POSITION_KEY) as { value: string } | undefined;
    return { n: row?.n ?? 0, seqs: row ? (JSON.parse(row.seqs) as number[]) : [], redriven, position: Number(pos?.value ?? 0) };
  } finally {
    db.close();
  }
}

async function deadLettersOf(tenant: string, name: string): Promise<DeadLetter[]> {
  return (await createDeadLetters(nats.nc).find(tenant, { source: dlqSource(name) })).deadLetters;
}

/** Publishes a redrive again under another message id: a repeat past the duplicate window. */
async function publishRepeat(letter: DeadLetter): Promise<number> {
  const msg = redriveMessage(letter);
  msg.headers.set(HEADERS.msgId, `${msg.headers.get(HEADERS.msgId)}:repeat`);
  return (await pub.publish(msg.subject, msg.data, { headers: msg.headers })).seq;
}

describe("projection redrive", () => {
  it("a redrive that fails again is a new dead letter with both reasons; fixed, it is applied once by the copy that failed it, not by a copy that did not, and a repeat changes nothing", async () => {
    const tenant = uniqueName("pr");
    const name = uniqueName("pr").replace(/[^a-z0-9_]/gu, "_");
    const dirA = await tempDir();
    const dirB = await tempDir();
    const marker = join(dirA, "broken");
    await writeFile(marker, "");
    let a: ProjectionEngine | undefined = createProjectionEngine(nats.nc, { dataDir: dirA, projections: [flakyProjection(name)], log: () => undefined });
    let b: ProjectionEngine | undefined;
    try {
      await a.start();
      const seqs = await publishItems(tenant, "x", [{ v: 1 }, { v: 2, failWhile: marker }, { v: 3 }, { v: 4 }]);
      await a.waitFor(name, seqs[3]!);
      await waitFor(async () => (await deadLettersOf(tenant, name)).length === 1, 10_000, "the dead letter");
      const first = (await deadLettersOf(tenant, name))[0]!;
      expect(first).toMatchObject({ kind: "projection", originalSeq: seqs[1], originalSubject: `evt.${tenant}.item.x` });
      expect(model(dirA, name, tenant, "x")).toMatchObject({ n: 3, seqs: [seqs[0], seqs[2], seqs[3]] });

      // Redriven before the cause is fixed: fails again, returns as a new dead letter with both reasons.
      const dl = createDeadLetters(nats.nc);
      expect((await dl.redrive(tenant, { seq: first.seq })).redriven).toEqual([first.seq]);
      await waitFor(async () => (await deadLettersOf(tenant, name)).some((d) => d.seq !== first.seq), 10_000, "the dead letter of the failed redrive");
      const second = (await deadLettersOf(tenant, name)).find((d) => d.seq !== first.seq)!;
      expect(second.reasons).toHaveLength(2);
      expect(second.reasons[0]).toBe(first.reason);
      expect(second.headers["Flex-Dlq-Redriven-From"]).toBe(String(first.seq));
      expect(await deadLettersOf(tenant, name)).toHaveLength(1); // the first was taken out by the redrive
      expect(model(dirA, name, tenant, "x")).toMatchObject({ n: 3, redriven: [{ dlq_seq: first.seq, outcome: "failed" }] });

      // The cause fixed; a second copy (another instance) applies the event in order.
      await unlink(marker);
      b = createProjectionEngine(nats.nc, { dataDir: dirB, projections: [flakyProjection(name)], log: () => undefined });
      await b.start();
      await b.waitFor(name, seqs[3]!);
      expect(model(dirB, name, tenant, "x")).toMatchObject({ n: 4 });

      const changes: number[] = [];
      a.onChange(name, (c) => changes.push(c.events));
      const redrive = await dl.redrive(tenant, { seq: second.seq });
      expect(redrive.redriven).toEqual([second.seq]);
      await waitFor(() => model(dirA, name, tenant, "x").n === 4, 10_000, "copy A to apply the redrive");
      // B reads FLEX_REAPPLY from its start: both redrives, neither failed by it.
      await waitFor(() => model(dirB, name, tenant, "x").redriven.length === 2, 10_000, "copy B to take the redrives");
      expect(model(dirB, name, tenant, "x")).toMatchObject({ n: 4, redriven: [{ dlq_seq: first.seq, outcome: "not-failed-here" }, { dlq_seq: second.seq, outcome: "not-failed-here" }] });
      expect(changes).toEqual([1]);

      // The same dead letter again (a repeat past the duplicate window): nothing changes.
      const repeat = await publishRepeat(second);
      await waitFor(() => model(dirA, name, tenant, "x").position >= repeat && model(dirB, name, tenant, "x").position >= repeat, 10_000, "both copies past the repeat");
      const finalA = model(dirA, name, tenant, "x");
      expect(finalA.n).toBe(4);
      expect([...finalA.seqs].sort((p, q) => p - q)).toEqual(seqs);
      expect(finalA.seqs.at(-1)).toBe(seqs[1]); // a late event: applied after the ones that followed it
      expect(finalA.redriven).toEqual([{ dlq_seq: first.seq, outcome: "failed" }, { dlq_seq: second.seq, outcome: "applied" }]);
      expect(model(dirB, name, tenant, "x").n).toBe(4);
      expect(await deadLettersOf(tenant, name)).toHaveLength(0);
      expect((await a.query(name, { tenant })).rows).toEqual([{ tenant, id: "x", n: 4 }]);
    } finally {
      await a?.close();
      await b?.close();
      a = undefined;
    }
  }, 60_000);

  it("kill -9 of the host right after the redrive's transaction committed: after a restart it was applied once, and a repeat is not applied", async () => {
    const tenant = uniqueName("pk");
    const name = uniqueName("pk").replace(/[^a-z0-9_]/gu, "_");
    const dir = await tempDir();
    const marker = join(dir, "broken");
    await writeFile(marker, "");
    const host = (fault: boolean) => {
      const child = spawn(process.execPath, ["--import", "tsx", HOST, dir, name], { env: { ...process.env, ...nats.env, ...(fault ? { FLEXCORE_TEST_FAULT: "projection-reapply-after-commit" } : {}) }, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      const ready = new Promise<void>((resolve, reject) => {
        child.stdout.on("data", (d: Buffer) => {
          out += d.toString();
          if (out.includes("ready")) resolve();
        });
        child.once("exit", (code) => reject(new Error(`host exited (${code}) before ready: ${out}`)));
      });
      child.stderr.on("data", (d: Buffer) => void (out += d.toString()));
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
      ready.catch(() => undefined);
      return { child, ready, exited, output: () => out };
    };
    const first = host(true);
    await first.ready;
    const seqs = await publishItems(tenant, "y", [{ v: 1 }, { v: 2, failWhile: marker }, { v: 3 }]);
    await waitFor(async () => (await deadLettersOf(tenant, name)).length === 1, 20_000, "the dead letter");
    await waitFor(() => model(dir, name, tenant, "y").n === 2, 20_000, "the two good events");
    const letter = (await deadLettersOf(tenant, name))[0]!;
    await unlink(marker);
    await createDeadLetters(nats.nc).redrive(tenant, { seq: letter.seq });
    expect(await first.exited).toEqual({ code: null, signal: "SIGKILL" });
    const killed = model(dir, name, tenant, "y");
    expect(killed).toMatchObject({ n: 3, redriven: [{ dlq_seq: letter.seq, outcome: "applied" }] });

    const second = host(false);
    try {
      await second.ready;
      const repeat = await publishRepeat(letter);
      const [after] = await publishItems(tenant, "y", [{ v: 4 }]);
      await waitFor(() => model(dir, name, tenant, "y").seqs.includes(after!) && model(dir, name, tenant, "y").position >= repeat, 20_000, "the restarted host to catch up");
      const final = model(dir, name, tenant, "y");
      expect(final.n).toBe(4); // 3 + the new one: the redrive once
      expect([...final.seqs].sort((p, q) => p - q)).toEqual([...seqs, after]);
      expect(final.redriven).toEqual([{ dlq_seq: letter.seq, outcome: "applied" }]);
      expect(second.output()).toContain("already applied here");
    } finally {
      second.child.kill("SIGTERM");
      await second.exited;
    }
  }, 90_000);

  it("a tenant's NATS user can neither publish a redrive into FLEX_REAPPLY nor read it: nothing is stored, the model is unchanged", async () => {
    const name = uniqueName("pb").replace(/[^a-z0-9_]/gu, "_");
    const dir = await tempDir();
    const marker = join(dir, "broken");
    await writeFile(marker, "");
    await using engine = createProjectionEngine(nats.nc, { dataDir: dir, projections: [flakyProjection(name)], log: () => undefined });
    await engine.start();
    const [, bad] = await publishItems(TENANT, "z", [{ v: 1 }, { v: 2, failWhile: marker }]);
    await engine.waitFor(name, bad!);
    await unlink(marker);
    expect(model(dir, name, TENANT, "z").n).toBe(1);
    const subject = `reapply.${TENANT}.${dlqSource(name)}`;
    const countReapply = async (): Promise<number> => {
      const info = await (await jetstreamManager(nats.nc)).streams.info(STREAMS.reapply, { subjects_filter: subject });
      return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
    };
    const forged = encodeEvent({ type: "ItemTouched", data: { v: 2 } });
    forged.headers.set(REDRIVE_HEADERS.subject, `evt.${TENANT}.item.z`);
    forged.headers.set(REDRIVE_HEADERS.seq, String(bad));
    forged.headers.set(REDRIVE_HEADERS.dlqSeq, "1");
    forged.headers.set(REDRIVE_HEADERS.stream, STREAMS.events);
    const nc = await nats.connectAs(TENANT);
    await expect(jetstream(nc, { timeout: 1_000 }).publish(subject, forged.data, { headers: forged.headers })).rejects.toThrow();
    nc.publish(subject, forged.data, { headers: forged.headers }); // plain publish: dropped by the server's permissions
    await nc.flush();
    await expect(jetstreamManager(nc, { timeout: 1_000 }).then((jsm) => jsm.direct.getMessage(STREAMS.reapply, { seq: 1, next_by_subj: "reapply.>" }))).rejects.toThrow();
    await new Promise((r) => setTimeout(r, 1_000)); // more than the engine's poll
    expect(await countReapply()).toBe(0);
    expect(model(dir, name, TENANT, "z")).toMatchObject({ n: 1, redriven: [] });
  }, 30_000);
});
