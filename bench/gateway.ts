import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { connect } from "@nats-io/transport-node";
import { ensureTopology, startNatsServer } from "../streams/index.js";
import { createGateway } from "../gateway/index.js";
import type { Gateway, ReadModelQuery, ReadModels } from "../gateway/index.js";
import { median, ratio, runTasks } from "./harness.js";
import type { BenchResult, Suite } from "./harness.js";

/** Seconds of load per measured iteration. */
const LOAD_SECONDS = 3;
const PROJECTION_CONNECTIONS = 64;
const APPEND_CONNECTIONS = 64;
const BATCH_CONNECTIONS = 8;
const BATCH_EVENTS = 1_000;
const ROWS_PER_TENANT = 1_000;
const TENANT = "bench";

interface LoadJob {
  readonly url: string;
  readonly path: string;
  readonly method: "GET" | "POST";
  readonly headers: Record<string, string>;
  readonly body?: string;
  readonly connections: number;
  readonly pipelining: number;
  readonly durationSec: number;
  readonly perConnectionSuffix?: boolean;
}

interface LoadResult {
  readonly rps: number;
  readonly latencyP50: number;
  readonly latencyP99: number;
  readonly ok: number;
  readonly non2xx: number;
  readonly errors: number;
}

/** Runs autocannon in a child process (bench/gateway-load) and returns its figures. */
async function load(job: LoadJob): Promise<LoadResult> {
  const fromSource = import.meta.url.endsWith(".ts");
  const script = fileURLToPath(new URL(fromSource ? "./gateway-load.ts" : "./gateway-load.js", import.meta.url));
  const child = spawn(process.execPath, [...(fromSource ? ["--import", "tsx"] : []), script], { stdio: ["pipe", "pipe", "inherit"] });
  let stdout = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stdin.end(JSON.stringify(job));
  const code = await new Promise<number | null>((res) => child.once("exit", res));
  if (code !== 0) throw new Error(`load generator exited with ${code}`);
  const result = JSON.parse(stdout.trim().split("\n").pop()!) as LoadResult;
  if (result.ok === 0 || result.non2xx > result.ok / 100 || result.errors > 0) {
    throw new Error(`load on ${job.method} ${job.path} failed: ${JSON.stringify(result)}`);
  }
  return result;
}

/**
 * The read path behind the projection routes in this benchmark: an in-memory read model
 * with {@link ROWS_PER_TENANT} rows per tenant, filtered and sorted per query. It measures
 * the gateway (auth, RBAC, rate limit, validation, serialisation) rather than SQLite.
 */
function memoryReadModels(): ReadModels {
  const rows = new Map<string, Array<Record<string, unknown>>>();
  rows.set(TENANT, Array.from({ length: ROWS_PER_TENANT }, (_, i) => ({ sensor: `s-${i}`, site: `site-${i % 10}`, count: i, avg: 20 + (i % 50) / 10, lastSeen: new Date(1_700_000_000_000 + i * 1000).toISOString() })));
  return {
    query(_name: string, q: ReadModelQuery) {
      const all = rows.get(q.tenant) ?? [];
      const site = (q.filter as { site?: unknown } | undefined)?.site;
      const matched = site === undefined ? all : all.filter((r) => r.site === site);
      return { rows: matched.slice(0, q.limit ?? 100) };
    },
    async waitFor() {},
    onChange: () => () => undefined,
  };
}

export const suite: Suite = {
  name: "gateway",
  description: `HTTP gateway under autocannon in a separate process (${LOAD_SECONDS} s per sample): projection query with and without auth, single-event appends, batch ingest`,
  async run({ log, env }) {
    const server = await startNatsServer();
    env.natsServer = server.version;
    env.loadGenerator = "autocannon (child process)";
    const nc = await connect({ servers: server.url });
    const dir = await mkdtemp(join(tmpdir(), "flexcore-bench-gw-"));
    const gateways: Gateway[] = [];
    try {
      await ensureTopology(nc);
      const readModels = memoryReadModels();
      env.projectionReadPath = "in-memory read model (1,000 rows/tenant) behind the ReadModels interface; the projection engine was not wired into this suite";
      // A rate limit far above the load keeps its cost in the measured path without refusing requests.
      const common = { nc, dataDir: dir, port: 0, readModels, rateLimit: { perSecond: 1e9 } } as const;
      const authed = await createGateway(common);
      const open = await createGateway({ ...common, auth: false });
      gateways.push(authed, open);
      const authUrl = await authed.listen();
      const openUrl = await open.listen();
      const { token } = await authed.issuer!.issueAccess({ tenant: TENANT, subject: "bench", roles: ["reader", "writer"], ttlSeconds: 3600 });
      const bearer = { authorization: `Bearer ${token}` };
      const query = `/v1/projections/sensors?filter=${encodeURIComponent('{"site":"site-3"}')}&limit=10`;
      const batch = JSON.stringify(Array.from({ length: BATCH_EVENTS }, (_, i) => ({
        category: "sensor", stream: `s-${i % 100}`, type: "ReadingRecorded",
        data: { sensor: `s-${i % 100}`, site: "plant-7", temp: 20 + (i % 50) / 10, humidity: 40 + (i % 30) / 3, pressure: 1013.25, seq: i },
      })));
      const append = JSON.stringify({ type: "ReadingRecorded", data: { sensor: "s-1", site: "plant-7", temp: 21.5, humidity: 44, pressure: 1013.25 } });
      const jobs = {
        projectionAuth: { url: authUrl, path: query, method: "GET", headers: bearer, connections: PROJECTION_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS },
        projectionOpen: { url: openUrl, path: query, method: "GET", headers: {}, connections: PROJECTION_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS },
        append: { url: authUrl, path: "/v1/streams/sensor/", method: "POST", headers: { ...bearer, "content-type": "application/json" }, body: append, connections: APPEND_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS, perConnectionSuffix: true },
        batch: { url: authUrl, path: "/v1/events", method: "POST", headers: { ...bearer, "content-type": "application/json" }, body: batch, connections: BATCH_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS },
      } satisfies Record<string, LoadJob>;

      const latencies: Record<string, number[]> = {};
      const measure = (name: string, job: LoadJob, perRequest = 1) => async (): Promise<number> => {
        const r = await load(job).catch((err: unknown) => {
          log(`  ${name}: ${(err as Error).message}`);
          throw err;
        });
        (latencies[name] ??= []).push(r.latencyP99);
        return r.rps * perRequest;
      };
      const goal = (value: number) => ({ goal: value });
      const results: BenchResult[] = await runTasks([
        { name: "http.projection.no-auth", unit: "req/s", fn: measure("http.projection.no-auth", jobs.projectionOpen), extra: { what: `GET ${query}, auth off (baseline), ${PROJECTION_CONNECTIONS} connections` } },
        { name: "http.projection.auth", unit: "req/s", fn: measure("http.projection.auth", jobs.projectionAuth), extra: { what: `same query with an RS256 bearer token (verified-token cache), ${PROJECTION_CONNECTIONS} connections`, ...goal(10_000) } },
        { name: "http.append", unit: "req/s", fn: measure("http.append", jobs.append), extra: { what: `POST /v1/streams/sensor/<per-connection id>, one event, auth, acked by JetStream, ${APPEND_CONNECTIONS} connections`, ...goal(5_000) } },
        { name: "http.batch-ingest", unit: "events/s", fn: measure("http.batch-ingest", jobs.batch, BATCH_EVENTS), extra: { what: `POST /v1/events, ${BATCH_EVENTS} events per JSON array, auth, every event acked, ${BATCH_CONNECTIONS} connections`, ...goal(50_000) } },
      ], { log });
      const withGoals: BenchResult[] = results.map((r) => {
        const g = r.extra?.goal;
        return typeof g === "number" ? { ...r, extra: { ...r.extra, met: r.median >= g, latencyP99ms: median(latencies[r.name] ?? []) } } : { ...r, extra: { ...r.extra, latencyP99ms: median(latencies[r.name] ?? []) } };
      });
      const byName = (n: string) => withGoals.find((r) => r.name === n)!;
      withGoals.push(ratio("http.projection.auth/no-auth", byName("http.projection.auth"), byName("http.projection.no-auth"), 0.6));
      return withGoals;
    } finally {
      for (const g of gateways) await g.close().catch(() => undefined);
      await nc.close();
      await server.close();
      await rm(dir, { recursive: true, force: true });
    }
  },
};
