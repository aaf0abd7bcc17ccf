/**
 * The event explorer's API (`GET /v1/events`, `GET /v1/events/live`) and the projection
 * catalog (`GET /v1/projections`) through the real gateway on port 0, a real nats-server with
 * authorization on and a real projection engine: what a tenant sees, paging, and every way
 * a query could try to leave `evt.<tenant>.>` refused with a coded 400 naming the field.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { genericProjection } from "../projections/index.js";
import { seedTenant, tokenFor } from "../test/console-fixtures.js";
import { startProjectionGateway } from "../test/gateway.js";
import type { TestProjectionGateway } from "../test/gateway.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { createGateway } from "./index.js";
import type { Gateway } from "./index.js";
import { MAX_LIVE_TAILS_PER_TENANT } from "./routes/explorer.js";

const A = uniqueName("exa");
const B = uniqueName("exb");
let running: TestProjectionGateway;
let nats: TestNats;
let gw: Gateway;
const t = { url: "" };
const tok: Record<string, string> = {};

beforeAll(async () => {
  running = await startProjectionGateway([genericProjection()]);
  ({ nats, gw, url: t.url } = running);
  tok.a = await tokenFor(gw, A, ["reader"]);
  tok.aw = await tokenFor(gw, A, ["writer"]);
  tok.b = await tokenFor(gw, B, ["reader"]);
  tok.bw = await tokenFor(gw, B, ["writer"]);
  await seedTenant(nats.nc, A, { events: 30 });
  await seedTenant(nats.nc, B, { events: 40 });
}, 30_000);

afterAll(async () => {
  await running?.close();
});

async function get(path: string, token: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${t.url}${path}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: await res.json() };
}

interface Sse {
  events: Array<{ event: string; id?: string; data: any }>;
  wait(pred: (e: { event: string; data: any }) => boolean, ms: number): Promise<{ event: string; id?: string; data: any }>;
  close(): void;
  status: number;
}

/** Opens an SSE feed with a bearer (as the console does, through fetch) and collects its events. */
async function sse(path: string, token: string, headers: Record<string, string> = {}): Promise<Sse> {
  const ctrl = new AbortController();
  const res = await fetch(`${t.url}${path}`, { headers: { authorization: `Bearer ${token}`, accept: "text/event-stream", ...headers }, signal: ctrl.signal });
  const events: Sse["events"] = [];
  const waiters = new Set<() => void>();
  if (res.ok && res.body) {
    void (async () => {
      const decoder = new TextDecoder();
      let buf = "";
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          buf += decoder.decode(chunk, { stream: true });
          let i: number;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let event = "message";
            let id: string | undefined;
            let data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event: ")) event = line.slice(7);
              else if (line.startsWith("id: ")) id = line.slice(4);
              else if (line.startsWith("data: ")) data += line.slice(6);
            }
            if (data) events.push({ event, ...(id ? { id } : {}), data: JSON.parse(data) });
            for (const w of waiters) w();
          }
        }
      } catch {
        // aborted
      }
    })();
  }
  return {
    events,
    status: res.status,
    close: () => ctrl.abort(),
    wait: (pred, ms) => new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = events.find(pred);
        if (hit) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(hit);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`no matching SSE event within ${ms} ms; got ${JSON.stringify(events)}`));
      }, ms);
      waiters.add(check);
      check();
    }),
  };
}

async function ingest(token: string, events: unknown[]): Promise<any> {
  const res = await fetch(`${t.url}/v1/events`, { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: JSON.stringify(events) });
  expect(res.status).toBe(200);
  return res.json();
}

describe("GET /v1/events", () => {
  it("pages through the tenant's events only, oldest first, with a cursor", async () => {
    const seen: any[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const r = await get(`/v1/events?limit=7${cursor ? `&cursor=${cursor}` : ""}`, tok.a!);
      expect(r.status).toBe(200);
      expect(r.body.events.length).toBeLessThanOrEqual(7);
      seen.push(...r.body.events);
      cursor = r.body.next;
      pages += 1;
    } while (cursor !== null && pages < 20);
    expect(seen).toHaveLength(30);
    expect(pages).toBeGreaterThanOrEqual(5);
    expect(new Set(seen.map((e) => e.id)).size).toBe(30);
    expect(seen.every((e) => e.id.startsWith(`${A}-`))).toBe(true);
    const seqs = seen.map((e) => e.seq);
    expect([...seqs].sort((x, y) => x - y)).toEqual(seqs);
    expect(seen[0]).toMatchObject({ category: "sensor", stream: "s0", type: "Reading", data: { i: 0 } });
  });

  it("filters by category, id, type and a stored-time range", async () => {
    const byId = await get("/v1/events?category=sensor&id=s3", tok.a!);
    expect(byId.body.events.map((e: any) => e.data.i)).toEqual([3, 10, 17, 24]);
    const idOnly = await get("/v1/events?id=s3", tok.a!);
    expect(idOnly.body.events).toHaveLength(4);
    await ingest(tok.aw!, [{ category: "door", stream: "d1", type: "Opened", data: { n: 1 } }, { category: "door", stream: "d1", type: "Closed", data: { n: 2 } }]);
    const typed = await get("/v1/events?type=Opened", tok.a!);
    expect(typed.body.events.map((e: any) => e.type)).toEqual(["Opened"]);
    const all = (await get("/v1/events?limit=1000", tok.a!)).body.events as any[];
    const mid = all[10].storedAt as string;
    const later = await get(`/v1/events?since=${encodeURIComponent(mid)}&limit=1000`, tok.a!);
    expect(later.body.events.length).toBeGreaterThan(0);
    expect(later.body.events.every((e: any) => e.storedAt >= mid)).toBe(true);
    const before = await get(`/v1/events?until=${encodeURIComponent(mid)}&limit=1000`, tok.a!);
    expect(before.body.events.every((e: any) => e.storedAt <= mid)).toBe(true);
    expect(before.body.next).toBeNull();
    expect(before.body.events.length + later.body.events.length).toBeGreaterThanOrEqual(all.length);
  });

  it("refuses a filter that names a subject, a wildcard or a bad range, with a coded 400 naming the field", async () => {
    const cases: Array<[string, string, string]> = [
      ["category=%3E", "FLEX_SUBJECT_TOKEN", "category"],
      ["category=*", "FLEX_SUBJECT_TOKEN", "category"],
      [`category=${B}.sensor`, "FLEX_SUBJECT_TOKEN", "category"],
      ["id=s1.%3E", "FLEX_SUBJECT_TOKEN", "id"],
      ["id=*", "FLEX_SUBJECT_TOKEN", "id"],
      ["since=yesterday", "FLEX_BAD_REQUEST", "since"],
      ["until=2026-13-45T00:00:00Z", "FLEX_BAD_REQUEST", "until"],
      ["since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "FLEX_BAD_REQUEST", "until"],
      ["cursor=abc", "FLEX_BAD_REQUEST", "cursor"],
      ["cursor=0", "FLEX_BAD_REQUEST", "cursor"],
      ["limit=100000", "FLEX_BAD_REQUEST", "limit"],
    ];
    for (const [query, code, field] of cases) {
      const r = await get(`/v1/events?${query}`, tok.a!);
      expect({ query, status: r.status, code: r.body.error?.code }).toEqual({ query, status: 400, code });
      expect(JSON.stringify(r.body.error)).toContain(field);
    }
    // A raw subject parameter does not exist: refused, not ignored.
    const raw = await get(`/v1/events?subject=${encodeURIComponent(`evt.${B}.>`)}`, tok.a!);
    expect(raw.status).toBe(400);
    expect(raw.body.error.code).toMatch(/^FLEX_/u);
  });

  it("confines another tenant's name and a huge range to the caller's tenant", async () => {
    const other = await get(`/v1/events?category=${B}&limit=1000`, tok.a!);
    expect(other.status).toBe(200);
    expect(other.body.events).toEqual([]);
    const huge = await get("/v1/events?since=1970-01-01T00:00:00Z&until=9999-12-31T23:59:59Z&limit=1000", tok.a!);
    expect(huge.status).toBe(200);
    expect(huge.body.events.length).toBeGreaterThanOrEqual(30);
    expect(huge.body.events.every((e: any) => !e.id.startsWith(`${B}-`))).toBe(true);
    const b = await get("/v1/events?limit=1000", tok.b!);
    expect(b.body.events).toHaveLength(40);
    expect(b.body.events.every((e: any) => e.id.startsWith(`${B}-`))).toBe(true);
  });

  it("needs the stream.read policy: a writer is refused", async () => {
    const r = await get("/v1/events", tok.aw!);
    expect(r.status).toBe(403);
    expect(r.body.error.code).toBe("FLEX_FORBIDDEN");
    const live = await get("/v1/events/live", tok.aw!);
    expect(live.status).toBe(403);
  });
});

describe("GET /v1/events/live", () => {
  it("sends an appended event within 1 s, never another tenant's, and resumes after Last-Event-ID", async () => {
    const a = await sse("/v1/events/live", tok.a!);
    expect(a.status).toBe(200);
    await a.wait((e) => e.event === "ready", 2_000);
    await ingest(tok.bw!, [{ category: "sensor", stream: "x", type: "Secret", data: { of: B } }]);
    const started = Date.now();
    await ingest(tok.aw!, [{ category: "sensor", stream: "live1", type: "Tailed", data: { n: 1 } }]);
    const got = await a.wait((e) => e.event === "event" && e.data.type === "Tailed", 1_000);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(got.data).toMatchObject({ category: "sensor", stream: "live1", data: { n: 1 } });
    expect(got.id).toBe(String(got.data.seq));
    expect(a.events.some((e) => JSON.stringify(e.data).includes("Secret"))).toBe(false);
    a.close();

    // A reconnect with the last id it saw gets what it missed.
    await ingest(tok.aw!, [{ category: "sensor", stream: "live1", type: "Missed", data: { n: 2 } }]);
    const again = await sse("/v1/events/live?category=sensor&id=live1", tok.a!, { "last-event-id": got.id! });
    const missed = await again.wait((e) => e.event === "event", 2_000);
    expect(missed.data.type).toBe("Missed");
    again.close();
  });

  it("filters by type, and refuses wildcards and a bad Last-Event-ID before streaming", async () => {
    const a = await sse("/v1/events/live?type=Wanted", tok.a!);
    await a.wait((e) => e.event === "ready", 2_000);
    await ingest(tok.aw!, [{ category: "c", stream: "s", type: "Unwanted", data: {} }, { category: "c", stream: "s", type: "Wanted", data: {} }]);
    await a.wait((e) => e.event === "event", 1_000);
    await new Promise((r) => setTimeout(r, 200));
    expect(a.events.filter((e) => e.event === "event").map((e) => e.data.type)).toEqual(["Wanted"]);
    a.close();
    for (const [query, field] of [["category=%3E", "category"], ["id=a.b", "id"]] as const) {
      const r = await get(`/v1/events/live?${query}`, tok.a!);
      expect(r.status).toBe(400);
      expect(r.body.error.details.field).toBe(field);
    }
    const bad = await fetch(`${t.url}/v1/events/live`, { headers: { authorization: `Bearer ${tok.a}`, "last-event-id": "evt.x.>" } });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { details: { field: string } } }).error.details.field).toBe("last-event-id");
  });

  it("ends the feed, sending nothing more, once the token is revoked; ends it with the reason when the gateway shuts down", async () => {
    const issued = await gw.issuer!.issueAccess({ tenant: A, subject: "revoked", roles: ["reader"] });
    const f = await sse("/v1/events/live", issued.token);
    await f.wait((e) => e.event === "ready", 2_000);
    await gw.revocations.revoke(issued.jti, issued.expiresAt);
    await ingest(tok.aw!, [{ category: "sensor", stream: "after", type: "AfterRevoke", data: {} }]);
    const end = await f.wait((e) => e.event === "end", 2_000);
    expect(end.data.reason).toBe("token expired or revoked");
    expect(f.events.some((e) => e.event === "event")).toBe(false);
    f.close();

    // A second gateway on the same server: closing it ends its open feeds at once, with the reason.
    const other = await createGateway({ nc: nats.nc, dataDir: running.dir, port: 0, metricsIntervalMs: 0, workflows: false, projections: running.engine });
    const base = await other.listen();
    const token = await tokenFor(other, A, ["reader"]);
    const res = await fetch(`${base}/v1/events/live`, { headers: { authorization: `Bearer ${token}` } });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!text.includes("event: ready")) text += (await reader.read()).value ?? "";
    const closing = other.close();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    await closing;
    expect(text).toContain('event: end\ndata: {"reason":"server shutting down"}');
  });

  it(`allows ${MAX_LIVE_TAILS_PER_TENANT} open feeds per tenant, then 429 FLEX_LIVE_FEEDS_EXHAUSTED; other tenants are not affected`, async () => {
    const open: Sse[] = [];
    try {
      for (let i = 0; i < MAX_LIVE_TAILS_PER_TENANT; i++) {
        const f = await sse("/v1/events/live", tok.a!);
        expect(f.status).toBe(200);
        open.push(f);
      }
      const over = await get("/v1/events/live", tok.a!);
      expect(over.status).toBe(429);
      expect(over.body.error.code).toBe("FLEX_LIVE_FEEDS_EXHAUSTED");
      const b = await sse("/v1/events/live", tok.b!);
      expect(b.status).toBe(200);
      b.close();
    } finally {
      for (const f of open) f.close();
    }
  });
});

describe("GET /v1/projections", () => {
  it("lists the read models with readers, columns (no tenant) and state", async () => {
    const r = await get("/v1/projections", tok.a!);
    expect(r.status).toBe(200);
    const generic = r.body.projections.find((p: any) => p.name === "generic");
    expect(generic).toMatchObject({ name: "generic", rebuilding: false });
    expect(typeof generic.generation).toBe("number");
    expect(generic.readers[0].name).toBe("aggregates");
    expect(generic.readers[0].columns).not.toHaveProperty("tenant");
    expect(generic.readers[0].columns).toHaveProperty("category");
    const w = await get("/v1/projections", tok.aw!);
    expect(w.status).toBe(403);
  });
});
