import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AbortedError, createPublisher, decodeEvent, encodeEvent, eventFromJsMsg, ensureTopology, InvalidOptionError, PLUGIN_EVENT_TYPES, STREAMS, SubjectTokenError, WORKFLOW_EVENT_TYPES } from "../streams/index.js";
import type { Publisher, StoredEvent } from "../streams/index.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import Database from "better-sqlite3";
import { modelHash } from "./database.js";
import {
  builtinProjections,
  createProjectionEngine,
  DLQ_HEADERS,
  dlqSource,
  genericProjection,
  InvalidQueryError,
  MAX_PAGE_SIZE,
  pipelineSummaryProjection,
  ProjectionLockedError,
  ProjectionNotFoundError,
  ProjectionStoppedError,
  TenantRequiredError,
  WaitTimeoutError,
} from "./index.js";
import type { ChangeEvent, Projection, ProjectionEngine, ProjectionEngineOptions, QueryOptions } from "./index.js";

let nats: TestNats;
let pub: Publisher;
const dirs: string[] = [];

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  pub = createPublisher(nats.nc);
});
afterAll(async () => {
  await pub?.close();
  await nats?.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function dataDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), "flexcore-proj-"));
  dirs.push(d);
  return d;
}

/** Publishes events in order and returns the last sequence. */
async function publish(events: ReadonlyArray<{ subject: string; type: string; data: unknown; time?: string }>): Promise<number> {
  const acks = events.map((e) => {
    const enc = encodeEvent({ type: e.type, data: e.data, ...(e.time ? { time: e.time } : {}) });
    return pub.publish(e.subject, enc.data, { headers: enc.headers });
  });
  const done = await Promise.all(acks);
  return Math.max(...done.map((a) => a.seq));
}

async function lastSeq(stream: string = STREAMS.events): Promise<number> {
  const jsm = await jetstreamManager(nats.nc);
  return (await jsm.streams.info(stream)).state.last_seq;
}

async function engineWith(options: Partial<ProjectionEngineOptions> & { dataDir?: string } = {}): Promise<ProjectionEngine> {
  const engine = createProjectionEngine(nats.nc, { dataDir: options.dataDir ?? (await dataDir()), log: () => undefined, ...options });
  await engine.start();
  return engine;
}

/**
 * A projection counting events per tenant and aggregate, keeping the order of values seen.
 * An event with `poison` throws; one with `badRow` passes `fold.add` but makes the write
 * fail (as a constraint would). With `fold`, it also has the incremental form.
 */
function counter(name: string, opts: { version?: number; onError?: "dlq" | "stop"; category: string; factor?: number; fold?: boolean }): Projection {
  type Row = { n: number; seen: number[] };
  const statements = (db: Database.Database) => ({
    get: db.prepare("SELECT n, seen FROM counts WHERE tenant = ? AND id = ?"),
    put: db.prepare("INSERT INTO counts (tenant, id, n, seen) VALUES (?, ?, ?, ?) ON CONFLICT (tenant, id) DO UPDATE SET n = excluded.n, seen = excluded.seen"),
  });
  const load = (s: ReturnType<typeof statements>, tenant: string, id: string): Row => {
    const row = s.get.get(tenant, id) as { n: number; seen: string } | undefined;
    return row ? { n: row.n, seen: JSON.parse(row.seen) as number[] } : { n: 0, seen: [] };
  };
  const value = (e: StoredEvent): { v: number; badRow: boolean } => {
    const data = e.data as { v: number; poison?: boolean; badRow?: boolean };
    if (data.poison) throw new Error(`poisoned value ${data.v}`);
    return { v: data.v, badRow: data.badRow === true };
  };
  return {
    name,
    version: opts.version ?? 1,
    description: "test counter",
    sources: [{ stream: STREAMS.events, subjects: [`evt.*.${opts.category}.*`] }],
    ...(opts.onError ? { onError: opts.onError } : {}),
    readers: {
      counts: { description: "counts", from: "counts", columns: { tenant: "text", id: "text", n: "integer", seen: "json" }, key: ["id"] },
    },
    init(db) {
      db.exec("CREATE TABLE counts (tenant TEXT NOT NULL, id TEXT NOT NULL, n INTEGER NOT NULL, seen TEXT NOT NULL, PRIMARY KEY (tenant, id))");
    },
    apply(db, events: readonly StoredEvent[]) {
      const s = statements(db);
      for (const e of events) {
        const { v, badRow } = value(e);
        if (badRow) throw new Error(`bad row for value ${v}`);
        const [, tenant, , id] = e.subject.split(".") as [string, string, string, string];
        const row = load(s, tenant, id);
        row.seen.push(v);
        s.put.run(tenant, id, row.n + (opts.factor ?? 1), JSON.stringify(row.seen));
      }
    },
    ...(opts.fold
      ? {
          fold(db) {
            const s = statements(db);
            const rows = new Map<string, Row & { tenant: string; id: string }>();
            let bad: number | undefined;
            return {
              add(e) {
                const { v, badRow } = value(e);
                const [, tenant, , id] = e.subject.split(".") as [string, string, string, string];
                const key = `${tenant}/${id}`;
                const row = rows.get(key) ?? { ...load(s, tenant, id), tenant, id };
                row.seen = [...row.seen, v];
                row.n += opts.factor ?? 1;
                rows.set(key, row);
                if (badRow) bad = v;
              },
              write() {
                if (bad !== undefined) throw new Error(`bad row for value ${bad}`);
                for (const r of rows.values()) s.put.run(r.tenant, r.id, r.n, JSON.stringify(r.seen));
                rows.clear();
              },
            };
          },
        }
      : {}),
  };
}

describe("built-in read models", () => {
  it("fold every kind of event, serve each tenant its own rows only, and read back after waitFor", async () => {
    const [a, b] = [uniqueName("ta"), uniqueName("tb")];
    const t0 = "2026-01-01T10:00:00.000Z";
    const at = (s: number): string => new Date(Date.parse(t0) + s * 1000).toISOString();
    const evts: Array<{ subject: string; type: string; data: unknown; time?: string }> = [];
    for (const tenant of [a, b]) {
      const run = `run-${tenant}`;
      evts.push(
        { subject: `evt.${tenant}.workflow.${run}`, type: WORKFLOW_EVENT_TYPES.runStarted, data: { runId: run, workflow: "etl", version: 3, tenant, trigger: "manual" }, time: at(0) },
        { subject: `evt.${tenant}.workflow.${run}`, type: WORKFLOW_EVENT_TYPES.stepStarted, data: { runId: run, step: "load", attempt: 1 }, time: at(1) },
        { subject: `evt.${tenant}.workflow.${run}`, type: WORKFLOW_EVENT_TYPES.stepFailed, data: { runId: run, step: "load", attempt: 1, error: { message: "timeout", code: "E_T" }, willRetry: true }, time: at(2) },
        { subject: `evt.${tenant}.workflow.${run}`, type: WORKFLOW_EVENT_TYPES.stepStarted, data: { runId: run, step: "load", attempt: 2 }, time: at(3) },
        { subject: `evt.${tenant}.workflow.${run}`, type: WORKFLOW_EVENT_TYPES.stepSucceeded, data: { runId: run, step: "load", attempt: 2, output: "42 rows" }, time: at(5) },
        { subject: `evt.${tenant}.workflow.${run}`, type: WORKFLOW_EVENT_TYPES.stepSkipped, data: { runId: run, step: "notify", reason: "condition false" }, time: at(5) },
        { subject: `evt.${tenant}.workflow.${run}`, type: WORKFLOW_EVENT_TYPES.runSucceeded, data: { runId: run, output: "ok" }, time: at(6) },
        { subject: `evt.${tenant}.plugin.geo`, type: PLUGIN_EVENT_TYPES.loaded, data: { plugin: "geo", version: "1.2.0" }, time: at(0) },
        { subject: `evt.${tenant}.plugin.geo`, type: PLUGIN_EVENT_TYPES.started, data: { plugin: "geo" }, time: at(1) },
        { subject: `evt.${tenant}.plugin.geo`, type: PLUGIN_EVENT_TYPES.failed, data: { plugin: "geo", error: { message: "boom" }, willRestart: true }, time: at(2) },
        { subject: `evt.${tenant}.plugin.geo`, type: PLUGIN_EVENT_TYPES.started, data: { plugin: "geo" }, time: at(3) },
        { subject: `evt.${tenant}.plugin.geo`, type: PLUGIN_EVENT_TYPES.health, data: { plugin: "geo", ok: true, detail: "fine", latencyMs: 3 }, time: at(4) },
        { subject: `evt.${tenant}.metrics.anomaly`, type: "MetricsReported", data: { component: "anomaly", kind: "processor", minute: "2026-01-01T10:00:00Z", count: 100, errors: 1, p50Ms: 1, p95Ms: 5, p99Ms: 9, throughput: 1.5 } },
        { subject: `evt.${tenant}.metrics.anomaly`, type: "MetricsReported", data: { component: "anomaly", kind: "processor", minute: "2026-01-01T10:00:30Z", count: 300, errors: 0, p50Ms: 3, p95Ms: 5, p99Ms: 13, throughput: 5 } },
        { subject: `evt.${tenant}.metrics.anomaly`, type: "MetricsReported", data: { component: "anomaly", kind: "processor", minute: "2026-01-01T10:00:00Z", count: 0, errors: 0, p50Ms: null, p95Ms: null, p99Ms: null, throughput: 0 } },
        { subject: `evt.${tenant}.order.o1`, type: "OrderPlaced", data: { status: "new", total: 10, lines: [1, 2] } },
        { subject: `evt.${tenant}.order.o1`, type: "OrderPaid", data: { status: "paid", paidAt: "x", total: null } },
      );
    }
    await publish([{ subject: `drv.${a}.anomaly.s1`, type: "AnomalyDetected", data: { score: 3 } }]);
    const seq = await publish(evts);
    await using engine = await engineWith();
    for (const p of engine.list()) await engine.waitFor(p.name, seq, { timeout: 20_000 });
    await engine.waitFor("pipeline_summary", await lastSeq(STREAMS.derived), { stream: STREAMS.derived, timeout: 20_000 });

    const runs = await engine.query("workflow_history", { tenant: a });
    expect(runs.rows).toEqual([expect.objectContaining({ tenant: a, run_id: `run-${a}`, workflow: "etl", version: "3", status: "succeeded", trigger: "manual", started_at: at(0), ended_at: at(6), duration_ms: 6000, output_summary: "ok", steps: 2 })]);
    const steps = await engine.query("workflow_history", { tenant: a, reader: "steps", sort: "step" });
    expect(steps.rows[1]).toMatchObject({ step: "notify", status: "skipped", error: "condition false" });
    expect(steps.rows.slice(0, 1)).toEqual([expect.objectContaining({ step: "load", status: "succeeded", attempts: 2, started_at: at(1), ended_at: at(5), duration_ms: 4000, error: null, output_summary: "42 rows" })]);
    const plugins = await engine.query("plugin_status", { tenant: a });
    expect(plugins.rows).toEqual([expect.objectContaining({ plugin: "geo", state: "running", version: "1.2.0", restarts: 1, failures: 1, last_error: "boom", healthy: 1, health_detail: "fine", last_health_at: at(4) })]);
    const metrics = await engine.query("performance_metrics", { tenant: a });
    expect(metrics.rows).toEqual([expect.objectContaining({ component: "anomaly", kind: "processor", minute: "2026-01-01T10:00:00.000Z", count: 400, errors: 1, p50_ms: 2.5, p99_ms: 12, throughput: 6.5, reports: 3 })]);
    const docs = await engine.query("generic", { tenant: a, filter: { category: "order" } });
    expect(docs.rows).toEqual([expect.objectContaining({ id: "o1", doc: { status: "paid", lines: [1, 2], paidAt: "x" }, revision: 2, last_type: "OrderPaid" })]);
    const summary = await engine.query<{ category: string; type: string; source: string; count: number; rate_1h: number }>("pipeline_summary", { tenant: a });
    const byKey = new Map(summary.rows.map((r) => [`${r.source}/${r.category}/${r.type}`, r]));
    expect(byKey.get("events/workflow/StepStarted")?.count).toBe(2);
    expect(byKey.get("events/plugin/PluginStarted")?.count).toBe(2);
    expect(byKey.get("derived/anomaly/AnomalyDetected")?.count).toBe(1);
    expect(byKey.get("events/order/OrderPaid")?.rate_1h).toBeGreaterThan(0);

    // Every reader of every projection: tenant A's query never returns B's rows.
    for (const p of engine.list()) {
      for (const r of p.readers) {
        const page = await engine.query(p.name, { tenant: a, reader: r.name, limit: MAX_PAGE_SIZE });
        expect(page.rows.length, `${p.name}.${r.name}`).toBeGreaterThan(0);
        for (const row of page.rows) expect(row.tenant, `${p.name}.${r.name}`).toBe(a);
        const other = await engine.query(p.name, { tenant: b, reader: r.name, limit: MAX_PAGE_SIZE, filter: { tenant: a } });
        expect(other.rows, `${p.name}.${r.name} with a tenant filter`).toEqual([]);
      }
      await expect(engine.query(p.name, {} as never)).rejects.toBeInstanceOf(TenantRequiredError);
      await expect(engine.query(p.name, { tenant: "" })).rejects.toMatchObject({ code: "FLEX_TENANT_REQUIRED" });
      await expect(engine.query(p.name, { tenant: `${a}.>` })).rejects.toBeInstanceOf(SubjectTokenError);
    }
    await expect(engine.query("nope", { tenant: a })).rejects.toBeInstanceOf(ProjectionNotFoundError);
  });

  it("generic: an event its reducer rejects is dead-lettered alone; the aggregate keeps the others, and one it would have created does not exist", async () => {
    const tenant = uniqueName("red");
    const category = uniqueName("acct");
    const reducer = (state: unknown, e: StoredEvent): unknown => {
      const d = e.data as { n: number; bad?: boolean };
      if (d.bad) throw new Error(`rejected ${d.n}`);
      return { total: ((state as { total?: number } | undefined)?.total ?? 0) + d.n };
    };
    await using engine = await engineWith({ projections: [genericProjection({ reducers: { [category]: reducer } })] });
    const seq = await publish([
      { subject: `evt.${tenant}.${category}.a`, type: "Add", data: { n: 1 } },
      { subject: `evt.${tenant}.${category}.b`, type: "Add", data: { n: 5, bad: true } },
      { subject: `evt.${tenant}.${category}.a`, type: "Add", data: { n: 2, bad: true } },
      { subject: `evt.${tenant}.${category}.a`, type: "Add", data: { n: 3 } },
    ]);
    await engine.waitFor("generic", seq);
    const rows = (await engine.query("generic", { tenant })).rows;
    expect(rows).toEqual([expect.objectContaining({ id: "a", doc: { total: 4 }, revision: 2, last_seq: seq })]);
    const failures = (await engine.status("generic"))[0]!.failures.last.filter((f) => f.seq > seq - 4);
    expect(failures.map((f) => f.seq).sort()).toEqual([seq - 2, seq - 1]);
    expect(failures.map((f) => f.error).join()).toMatch(/rejected 5.*rejected 2|rejected 2.*rejected 5/u);
  });

  it("read-your-writes: waitFor resolves once the model holds the write; times out and aborts with typed errors", async () => {
    await using engine = await engineWith({ projections: [genericProjection()] });
    const tenant = uniqueName("ryw");
    const changes: ChangeEvent[] = [];
    const off = engine.onChange("generic", (c) => changes.push(c));
    for (let i = 0; i < 20; i++) {
      const seq = await publish([{ subject: `evt.${tenant}.cart.c1`, type: "ItemAdded", data: { items: i } }]);
      await engine.waitFor("generic", seq);
      const page = await engine.query<{ doc: { items: number }; revision: number }>("generic", { tenant });
      expect(page.rows[0]?.doc.items).toBe(i);
      expect(page.rows[0]?.revision).toBe(i + 1);
    }
    off();
    expect(changes.length).toBeGreaterThan(0);
    const mine = changes.filter((c) => c.tenants.includes(tenant));
    expect(mine.length).toBeGreaterThan(0);
    expect(changes.every((c) => c.kind === "apply" && c.events > 0)).toBe(true);
    const future = (await lastSeq()) + 1_000;
    const err = await engine.waitFor("generic", future, { timeout: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WaitTimeoutError);
    expect((err as WaitTimeoutError).code).toBe("FLEX_PROJECTION_WAIT_TIMEOUT");
    const ac = new AbortController();
    const waiting = engine.waitFor("generic", future, { timeout: 10_000, signal: ac.signal });
    ac.abort();
    await expect(waiting).rejects.toBeInstanceOf(AbortedError);
    await expect(engine.waitFor("generic", 1, { stream: STREAMS.derived })).rejects.toBeInstanceOf(InvalidOptionError);
  });
});

describe.each([
  ["apply", false],
  ["fold", true],
])("exactly once (%s)", (_, fold) => {
  it("restarts and replays from sequence 1 never double count, and keep each aggregate's order", async () => {
    const dir = await dataDir();
    const category = uniqueName("ord");
    const tenant = uniqueName("t");
    const evts: Array<{ subject: string; type: string; data: unknown }> = [];
    for (let i = 0; i < 600; i++) evts.push({ subject: `evt.${tenant}.${category}.a${i % 7}`, type: "V", data: { v: i } });
    const first = await publish(evts.slice(0, 300));
    const p = counter("counts", { category, fold });
    {
      await using engine = await engineWith({ dataDir: dir, projections: [p] });
      await engine.waitFor("counts", first);
    }
    const seq = await publish(evts.slice(300));
    const expected = Array.from({ length: 7 }, (_, k) => ({ id: `a${k}`, seen: evts.map((e, i) => ({ e, i })).filter(({ e }) => e.subject.endsWith(`.a${k}`)).map(({ i }) => i) }));
    const check = async (engine: ProjectionEngine): Promise<void> => {
      const rows = (await engine.query<{ id: string; n: number; seen: number[] }>("counts", { tenant, sort: "id" })).rows;
      expect(rows.map((r) => ({ id: r.id, seen: r.seen }))).toEqual(expected);
      expect(rows.map((r) => r.n)).toEqual(expected.map((x) => x.seen.length));
    };
    // Restart from the checkpoint.
    {
      await using engine = await engineWith({ dataDir: dir, projections: [p] });
      await engine.waitFor("counts", seq);
      await check(engine);
    }
    // A new projection beside it makes the shared consumer replay the stream from 1:
    // `counts` sees every old event again and must skip them.
    const hashBefore = await (async () => {
      await using engine = await engineWith({ dataDir: dir, projections: [p, counter("fresh", { category, fold })] });
      await engine.waitFor("fresh", seq, { timeout: 20_000 });
      await engine.waitFor("counts", seq);
      await check(engine);
      const fresh = await engine.query<{ n: number }>("fresh", { tenant });
      expect(fresh.rows.reduce((a, r) => a + r.n, 0)).toBe(600);
      const status = await engine.status("counts");
      expect(status[0]?.streams[0]?.checkpoint).toBe(await lastSeq());
      return status[0]!.file;
    })();
    // A rebuilt copy holds the same rows.
    await using engine = await engineWith({ dataDir: dir, projections: [p, counter("fresh", { category, fold })] });
    const before = modelHash(new Database(hashBefore, { readonly: true }));
    await engine.rebuild("counts");
    const after = (await engine.status("counts"))[0]!;
    expect(after.generation).toBeGreaterThan(1);
    expect(modelHash(new Database(after.file, { readonly: true }))).toBe(before);
    await check(engine);
  });
});

describe.each([
  ["apply", false],
  ["fold", true],
])("failure policy (%s)", (_, fold) => {
  it("dlq (default): the failing event goes to FLEX_DLQ with its reason, the rest are applied, the failure is counted", async () => {
    const category = uniqueName("poison");
    const tenant = uniqueName("t");
    const logs: string[] = [];
    await using engine = await engineWith({ projections: [counter("poisoned", { category, fold })], log: (l) => logs.push(l) });
    // 13 throws in apply / fold.add; 21 only when written (with a fold: the whole window's write).
    const evts = Array.from({ length: 30 }, (_, i) => ({ subject: `evt.${tenant}.${category}.x${i % 3}`, type: "V", data: { v: i, poison: i === 13, badRow: i === 21 } }));
    const seq = await publish(evts);
    await engine.waitFor("poisoned", seq);
    const rows = (await engine.query<{ id: string; n: number; seen: number[] }>("poisoned", { tenant, sort: "id" })).rows;
    expect(rows.reduce((a, r) => a + r.n, 0)).toBe(28);
    // Each aggregate's values once, in order, without the two failed ones.
    expect(rows.map((r) => r.seen)).toEqual([0, 1, 2].map((k) => evts.map((_e, i) => i).filter((i) => i % 3 === k && i !== 13 && i !== 21)));
    const status = (await engine.status("poisoned"))[0]!;
    expect(status.failures.count).toBe(2);
    expect(status.failures.last.map((f) => f.seq).sort()).toEqual([seq - 16, seq - 8].sort());
    expect(status.failures.last.find((f) => f.seq === seq - 16)).toMatchObject({ type: "V", policy: "dlq" });
    expect(status.failures.last.find((f) => f.seq === seq - 16)?.error).toContain("poisoned value 13");
    expect(status.failures.last.find((f) => f.seq === seq - 8)?.error).toContain("bad row for value 21");
    expect(status.streams[0]?.checkpoint).toBe(seq);
    if (fold) expect(logs.some((l) => l.includes("reading it again event by event"))).toBe(true);
    expect(status.state).not.toBe("stopped");
    // Both are in the DLQ once (a dead letter sent again is deduplicated by its id).
    const dead: Array<{ seq: string | undefined; reason: string | undefined; subject: string | undefined; body: unknown }> = [];
    const consumer = await jetstream(nats.nc).consumers.get(STREAMS.dlq, { filter_subjects: `dlq.${tenant}.${dlqSource("poisoned")}` });
    for await (const m of await consumer.consume()) {
      dead.push({ seq: m.headers?.get(DLQ_HEADERS.seq), reason: m.headers?.get(DLQ_HEADERS.reason), subject: m.headers?.get(DLQ_HEADERS.subject), body: m.json() });
      if (m.info.pending === 0) break;
    }
    expect(dead.map((d) => d.seq).sort()).toEqual([String(seq - 16), String(seq - 8)].sort());
    const thirteen = dead.find((d) => d.seq === String(seq - 16));
    expect(thirteen?.reason).toContain("poisoned value 13");
    expect(thirteen?.subject).toBe(evts[13]!.subject);
    expect(thirteen?.body).toEqual({ v: 13, poison: true, badRow: false });
    expect(dead.find((d) => d.seq === String(seq - 8))?.reason).toContain("bad row for value 21");
  });

  it("stop: the events before the failing one are applied, then the projection halts and says why", async () => {
    const category = uniqueName("poison");
    const tenant = uniqueName("t");
    await using engine = await engineWith({ projections: [counter("halting", { category, onError: "stop", fold })] });
    const evts = Array.from({ length: 30 }, (_, i) => ({ subject: `evt.${tenant}.${category}.x${i % 3}`, type: "V", data: { v: i, poison: i === 13 } }));
    const seq = await publish(evts);
    const poisonSeq = seq - 16;
    const err = await engine.waitFor("halting", seq, { timeout: 10_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProjectionStoppedError);
    expect((err as ProjectionStoppedError).seq).toBe(poisonSeq);
    const rows = (await engine.query<{ n: number }>("halting", { tenant })).rows;
    expect(rows.reduce((a, r) => a + r.n, 0)).toBe(13);
    const status = (await engine.status("halting"))[0]!;
    expect(status.state).toBe("stopped");
    expect(status.stoppedAt).toMatchObject({ seq: poisonSeq });
    expect(status.streams[0]?.checkpoint).toBe(poisonSeq - 1);
    expect(status.failures.count).toBe(1);
    const jsm = await jetstreamManager(nats.nc);
    const dead = await jsm.streams.getMessage(STREAMS.dlq, { last_by_subj: `dlq.${tenant}.${dlqSource("halting")}` });
    expect(dead?.header?.get(DLQ_HEADERS.policy)).toBe("stop");
  });
});

describe("rebuild", () => {
  it("readers querying during a rebuild see the old model or the new one, never a partial one", async () => {
    const tenant = uniqueName("rb");
    const N = 20_000;
    const seq = await publish(Array.from({ length: N }, (_, i) => ({ subject: `evt.${tenant}.meter.m${i % 50}`, type: "Tick", data: { v: i } })));
    await using engine = await engineWith({ projections: [pipelineSummaryProjection(), genericProjection()] });
    await engine.waitFor("pipeline_summary", seq, { timeout: 30_000 });
    await engine.waitFor("generic", seq, { timeout: 30_000 });
    const total = async (): Promise<[number, number]> => {
      const s = await engine.query<{ count: number }>("pipeline_summary", { tenant });
      const g = await engine.query<{ revision: number }>("generic", { tenant });
      return [s.rows.reduce((a, r) => a + r.count, 0), g.rows.reduce((a, r) => a + r.revision, 0)];
    };
    expect(await total()).toEqual([N, N]);
    const seen: Array<[number, number]> = [];
    let reading = true;
    const reader = (async () => {
      while (reading) {
        seen.push(await total());
        await new Promise((r) => setImmediate(r));
      }
    })();
    const progress: number[] = [];
    const extra = publish(Array.from({ length: 100 }, (_, i) => ({ subject: `evt.${tenant}.meter.m${i % 50}`, type: "Tick", data: { v: i } })));
    const result = await engine.rebuild(["pipeline_summary", "generic"], { onProgress: (p) => progress.push(p.done) });
    const last = await extra;
    await engine.waitFor("pipeline_summary", last);
    await engine.waitFor("generic", last);
    reading = false;
    await reader;
    expect(result.projections.map((p) => p.name)).toEqual(["pipeline_summary", "generic"]);
    expect(seen.length).toBeGreaterThan(2);
    // Never fewer than before the rebuild, never more than everything, never going back.
    for (const [i, [s, g]] of seen.entries()) {
      expect(s).toBeGreaterThanOrEqual(N);
      expect(g).toBeGreaterThanOrEqual(N);
      expect(s).toBeLessThanOrEqual(N + 100);
      if (i > 0) expect(s).toBeGreaterThanOrEqual(seen[i - 1]![0]);
    }
    expect(await total()).toEqual([N + 100, N + 100]);
    expect(progress.length).toBeGreaterThan(0);
    const status = await engine.status();
    expect(status.every((s) => s.generation === 2)).toBe(true);
  });

  it("bumping a projection's version rebuilds it at start, serving the old copy meanwhile", async () => {
    const dir = await dataDir();
    const category = uniqueName("ver");
    const tenant = uniqueName("t");
    const seq = await publish(Array.from({ length: 200 }, (_, i) => ({ subject: `evt.${tenant}.${category}.k`, type: "V", data: { v: i } })));
    {
      await using engine = await engineWith({ dataDir: dir, projections: [counter("versioned", { category })] });
      await engine.waitFor("versioned", seq);
    }
    await using engine = await engineWith({ dataDir: dir, projections: [counter("versioned", { category, version: 2, factor: 10 })] });
    const first = (await engine.query<{ n: number }>("versioned", { tenant })).rows[0]?.n;
    expect([200, 2000]).toContain(first);
    for (let i = 0; i < 200 && (await engine.status("versioned"))[0]!.generation === 1; i++) await sleep(50);
    const status = (await engine.status("versioned"))[0]!;
    expect(status.generation).toBe(2);
    expect(status.version).toBe(2);
    expect((await engine.query<{ n: number }>("versioned", { tenant })).rows[0]?.n).toBe(2000);
  });
});

describe("queries", () => {
  it("filter, sort and cursor pages cover every row once; bad input is a typed error", async () => {
    const tenant = uniqueName("q");
    const evts = Array.from({ length: 250 }, (_, i) => ({ subject: `evt.${tenant}.item.i${String(i).padStart(3, "0")}`, type: "Set", data: { rank: i % 10, color: i % 2 ? "red" : "blue", nested: { deep: i } } }));
    const seq = await publish(evts);
    await using engine = await engineWith({ projections: [genericProjection({ indexes: [{ field: "color" }] })] });
    await engine.waitFor("generic", seq);
    const ids: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await engine.query<{ id: string; doc: { rank: number; color: string } }>("generic", { tenant, filter: { "doc.color": "red" }, sort: ["-doc.rank", "id"], limit: 30, ...(cursor ? { cursor } : {}) });
      for (const r of page.rows) expect(r.doc.color).toBe("red");
      ids.push(...page.rows.map((r) => r.id));
      cursor = page.nextCursor;
      pages += 1;
    } while (cursor);
    expect(pages).toBe(5);
    expect(new Set(ids).size).toBe(125);
    expect(ids.length).toBe(125);
    const ranks = (await engine.query<{ doc: { rank: number } }>("generic", { tenant, filter: { "doc.color": "red" }, sort: "-doc.rank", limit: MAX_PAGE_SIZE })).rows.map((r) => r.doc.rank);
    expect(ranks).toEqual([...ranks].sort((x, y) => y - x));
    const ops = await engine.query("generic", { tenant, filter: { "doc.nested.deep": { gte: 10, lt: 20 }, id: { in: ["i010", "i011", "i099"] } } });
    expect(ops.rows.map((r) => r.id)).toEqual(["i010", "i011"]);
    await expect(engine.query("generic", { tenant, filter: { secret: 1 } })).rejects.toBeInstanceOf(InvalidQueryError);
    await expect(engine.query("generic", { tenant, sort: "-nope" })).rejects.toMatchObject({ code: "FLEX_INVALID_QUERY", field: "sort" });
    await expect(engine.query("generic", { tenant, limit: MAX_PAGE_SIZE + 1 })).rejects.toMatchObject({ field: "limit" });
    await expect(engine.query("generic", { tenant, cursor: "garbage" })).rejects.toMatchObject({ field: "cursor" });
    await expect(engine.query("generic", { tenant, filter: { "doc.a'b": 1 } })).rejects.toBeInstanceOf(InvalidQueryError);
    await expect(engine.query("generic", { tenant, reader: "nope" })).rejects.toMatchObject({ field: "reader" });
  });

  it("queries of one shape with other values (a compiled plan reused) get their own rows and checks", async () => {
    const tenant = uniqueName("shape");
    const seq = await publish(Array.from({ length: 30 }, (_, i) => ({ subject: `evt.${tenant}.item.i${String(i).padStart(2, "0")}`, type: "Set", data: { rank: i % 3, name: `n${i}` } })));
    await using engine = await engineWith({ projections: [genericProjection()] });
    await engine.waitFor("generic", seq);
    const ids = async (options: Omit<QueryOptions, "tenant">): Promise<string[]> => (await engine.query<{ id: string }>("generic", { tenant, limit: MAX_PAGE_SIZE, ...options })).rows.map((r) => r.id);
    for (const rank of [0, 1, 2]) expect(await ids({ filter: { "doc.rank": rank } })).toHaveLength(10);
    expect(await ids({ filter: { "doc.rank": 0, id: { prefix: "i2" } } })).toEqual(["i21", "i24", "i27"]);
    expect(await ids({ filter: { "doc.rank": 1, id: { prefix: "i1" } } })).toEqual(["i10", "i13", "i16", "i19"]);
    expect(await ids({ filter: { "doc.rank": 1, id: { prefix: "i" } } })).toHaveLength(10);
    expect(await ids({ filter: { id: { in: ["i01", "i02"] } } })).toEqual(["i01", "i02"]);
    expect(await ids({ filter: { id: { in: ["i03", "i04", "i05"] } } })).toEqual(["i03", "i04", "i05"]);
    expect(await ids({ filter: { id: { in: ["i29"] } } })).toEqual(["i29"]);
    expect(await ids({ filter: { "doc.name": null } })).toEqual([]);
    // The shapes above are compiled now: bad values of the same shapes are still refused.
    await expect(ids({ filter: { "doc.rank": 0, id: { prefix: 5 as never } } })).rejects.toMatchObject({ field: "filter.id.prefix" });
    await expect(ids({ filter: { "doc.rank": { a: 1 } as never } })).rejects.toMatchObject({ field: "filter.doc.rank" });
    await expect(ids({ filter: { id: { in: [{}] as never } } })).rejects.toMatchObject({ field: "filter.id.in" });
    await expect(ids({ filter: "id" as never })).rejects.toMatchObject({ field: "filter" });
    // Names that spell the key of a compiled shape in an older key format are planned on
    // their own, and refused: a typed error, not a statement with unbound parameters.
    expect(await ids({ filter: { "doc.rank": 0, id: "i03" } })).toEqual(["i03"]);
    await expect(ids({ filter: { "doc.rank\u0002V\u0001id": 0 } })).rejects.toBeInstanceOf(InvalidQueryError);
    await expect(ids({ filter: { 'doc.rank" :V "id': 0 } })).rejects.toBeInstanceOf(InvalidQueryError);
  });

  it("options are validated; one engine per data directory", async () => {
    expect(() => createProjectionEngine(nats.nc, { dataDir: "x", sync: "off" as never })).toThrow(InvalidOptionError);
    expect(() => createProjectionEngine(nats.nc, { dataDir: "" })).toThrow(/dataDir/);
    expect(() => createProjectionEngine(nats.nc, { dataDir: "x", projections: [...builtinProjections(), genericProjection()] })).toThrow(/name/);
    const dir = await dataDir();
    await using engine = await engineWith({ dataDir: dir, projections: [genericProjection()] });
    void engine;
    const second = createProjectionEngine(nats.nc, { dataDir: dir, projections: [genericProjection()], log: () => undefined });
    await expect(second.start()).rejects.toBeInstanceOf(ProjectionLockedError);
    // A read-only engine on the same directory serves queries.
    await using reader = await engineWith({ dataDir: dir, projections: [genericProjection()], readOnly: true });
    expect((await reader.status())[0]?.state).toBe("read-only");
  });
});

describe("decoding", () => {
  it("reads the same event from the raw bytes as decodeEvent does, FlexCore headers or not", async () => {
    const tenant = uniqueName("dec");
    const first = await publish([{ subject: `evt.${tenant}.x.a`, type: "Typed", data: { a: [1, { b: "ü" }] }, time: "2026-02-03T04:05:06.007Z" }]);
    const h = natsHeaders();
    h.set("Flex-Revision", "7");
    h.set("X-Other", "a: b");
    await pub.publish(`evt.${tenant}.x.b`, new TextEncoder().encode("not json"), { headers: h });
    await pub.publish(`evt.${tenant}.x.c`, new Uint8Array(0));
    const last = await pub.publish(`evt.${tenant}.x.d`, new TextEncoder().encode("42"));
    const consumer = await jetstream(nats.nc).consumers.get(STREAMS.events, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: first });
    const seen: Array<[unknown, unknown]> = [];
    for await (const m of await consumer.consume()) {
      const fast = eventFromJsMsg(m, { lazyData: true });
      const reference = decodeEvent({ subject: m.subject, seq: m.seq, headers: m.headers, data: m.data, storedAt: Math.floor(m.info.timestampNanos / 1e6) });
      seen.push([JSON.parse(JSON.stringify(fast)), JSON.parse(JSON.stringify(reference))]);
      if (m.seq >= last.seq) break;
    }
    expect(seen).toHaveLength(4);
    for (const [fast, reference] of seen) expect(fast).toEqual(reference);
    expect(seen[0]![0]).toMatchObject({ type: "Typed", data: { a: [1, { b: "ü" }] }, time: "2026-02-03T04:05:06.007Z" });
    expect(seen[1]![0]).toMatchObject({ type: "unknown", data: "not json", revision: 7 });
    expect(seen[2]![0]).toMatchObject({ data: null });
  });
});
