import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import Fastify from "fastify";
import type { FastifyInstance } from "fastify";
import { createPublisher, encodeEvent, ensureTopology } from "../streams/index.js";
import { createGateway } from "../gateway/index.js";
import type { Gateway } from "../gateway/index.js";
import { createProjectionEngine, genericProjection } from "../projections/index.js";
import type { ProjectionEngine } from "../projections/index.js";
import { cpuMeter, median, ratio, runTasks, startBenchNats } from "./harness.js";
import type { BenchResult, CpuSplit, Suite } from "./harness.js";
import type { Job } from "./gateway-load.js";

/** Seconds of load per measured iteration. */
const LOAD_SECONDS = 3;
/** Measured samples per figure (after one warm-up run). */
const ITERATIONS = 3;
const PROJECTION_CONNECTIONS = 64;
const APPEND_CONNECTIONS = 64;
const BATCH_CONNECTIONS = 8;
const BATCH_EVENTS = 1_000;
const BASELINE_EVENTS = 20_000;
/** Aggregates (rows of the `generic` read model) of the benchmark tenant. */
const AGGREGATES = 1_000;
const SITES = 10;
const TENANT = "bench";

type LoadJob = Job;

interface LoadResult {
  readonly rps: number;
  readonly durationSec: number;
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

export const suite: Suite = {
  name: "gateway",
  description: `HTTP gateway under autocannon in a separate process (${LOAD_SECONDS} s per sample): projection query (SQLite read model) with and without auth, single-event appends, batch ingest`,
  async run({ log, env }) {
    const nats = await startBenchNats();
    const { server, nc } = nats;
    env.natsServer = server.version;
    env.loadGenerator = "autocannon (child process)";
    const dir = await mkdtemp(join(tmpdir(), "flexcore-bench-gw-"));
    const gateways: Gateway[] = [];
    let bare: FastifyInstance | undefined;
    let engine: ProjectionEngine | undefined;
    try {
      await ensureTopology(nc);
      // The real read path: the projection engine's `generic` model in SQLite, with an index on doc.site.
      engine = createProjectionEngine(nc, { dataDir: dir, projections: [genericProjection({ indexes: [{ field: "site" }], subjects: ["evt.*.device.>"] })], log: () => undefined });
      await engine.start();
      env.projectionReadPath = `projection engine, generic read model (SQLite), ${AGGREGATES} aggregates of tenant ${TENANT} over ${SITES} sites, index on doc.site`;
      // A rate limit far above the load keeps its cost in the measured path without refusing requests.
      const common = { nc, dataDir: dir, port: 0, projections: engine, workflows: false, rateLimit: { perSecond: 1e9 } } as const;
      const authed = await createGateway(common);
      const open = await createGateway({ ...common, auth: false });
      // Batch ingest with fast-ingest batches (nats-server 2.14+), beside the default.
      const batched = await createGateway({ ...common, ingestBatching: "auto" });
      gateways.push(authed, open, batched);
      const batchedUrl = await batched.listen();
      const authUrl = await authed.listen();
      const openUrl = await open.listen();
      const { token } = await authed.issuer!.issueAccess({ tenant: TENANT, subject: "bench", roles: ["reader", "writer"], ttlSeconds: 3600 });
      const bearer = { authorization: `Bearer ${token}` };
      // The same rows for the bench tenant (auth) and the no-auth gateway's tenant, so both queries return the same page.
      let lastSeq = 0;
      for (const [g, headers] of [[authed, bearer], [open, {}]] as const) {
        const seed = await g.app.inject({
          method: "POST", url: "/v1/events", headers,
          payload: Array.from({ length: AGGREGATES }, (_, i) => ({ category: "device", stream: `d-${i}`, type: "DeviceRegistered", data: { site: `site-${i % SITES}`, model: `m-${i % 7}`, installed: 2000 + (i % 25) } })),
        });
        lastSeq = Math.max(lastSeq, ...(seed.json() as { results: Array<{ seq: number }> }).results.map((r) => r.seq));
      }
      await engine.waitFor("generic", lastSeq, { timeout: 30_000 });
      // The common read: one aggregate's document by key. The page query below sorts 100 matches per request.
      const query = `/v1/projections/generic?filter=${encodeURIComponent('{"category":"device","id":"d-3"}')}`;
      // The ceiling of the projection figures on this machine: Fastify with one route that
      // answers the same bytes (no auth, hooks, query or metrics), under the same load.
      const answer = (await authed.app.inject({ method: "GET", url: query, headers: bearer })).body;
      bare = Fastify({ logger: false });
      bare.get("/v1/projections/generic", async (_req, reply) => reply.type("application/json; charset=utf-8").send(answer));
      const bareUrl = await bare.listen({ host: "127.0.0.1", port: 0 });
      const pageQuery = `/v1/projections/generic?filter=${encodeURIComponent('{"category":"device","doc.site":"site-3"}')}&limit=10`;
      const batch = JSON.stringify(Array.from({ length: BATCH_EVENTS }, (_, i) => ({
        category: "sensor", stream: `s-${i % 100}`, type: "ReadingRecorded",
        data: { sensor: `s-${i % 100}`, site: "plant-7", temp: 20 + (i % 50) / 10, humidity: 40 + (i % 30) / 3, pressure: 1013.25, seq: i },
      })));
      const append = JSON.stringify({ type: "ReadingRecorded", data: { sensor: "s-1", site: "plant-7", temp: 21.5, humidity: 44, pressure: 1013.25 } });
      const jobs = {
        projectionAuth: { url: authUrl, path: query, method: "GET", headers: bearer, connections: PROJECTION_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS },
        projectionOpen: { url: openUrl, path: query, method: "GET", headers: {}, connections: PROJECTION_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS },
        projectionBare: { url: bareUrl, path: query, method: "GET", headers: bearer, connections: PROJECTION_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS },
        projectionPage: { url: authUrl, path: pageQuery, method: "GET", headers: bearer, connections: PROJECTION_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS },
        append: { url: authUrl, path: "/v1/streams/sensor/", method: "POST", headers: { ...bearer, "content-type": "application/json" }, body: append, connections: APPEND_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS, perConnectionSuffix: true },
        batch: { url: authUrl, path: "/v1/events", method: "POST", headers: { ...bearer, "content-type": "application/json" }, body: batch, connections: BATCH_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS },
        batchFast: { url: batchedUrl, path: "/v1/events", method: "POST", headers: { ...bearer, "content-type": "application/json" }, body: batch, connections: BATCH_CONNECTIONS, pipelining: 1, durationSec: LOAD_SECONDS },
      } satisfies Record<string, LoadJob>;

      const latencies: Record<string, number[]> = {};
      // CPU per event of the gateway (this process) and nats-server, for the ingest figures.
      const cpu: Record<string, CpuSplit[]> = {};
      const measure = (name: string, job: LoadJob, perRequest = 1) => async (): Promise<number> => {
        const meter = cpuMeter(server.pid);
        const r = await load(job).catch((err: unknown) => {
          log(`  ${name}: ${(err as Error).message}`);
          throw err;
        });
        (latencies[name] ??= []).push(r.latencyP99);
        if (perRequest > 1) (cpu[name] ??= []).push(meter(r.ok * perRequest));
        // Completed requests over the run's length: autocannon's per-second average is coarse
        // when a run completes only a few large batches per second.
        return (r.ok / r.durationSec) * perRequest;
      };
      const goal = (value: number) => ({ goal: value });
      // Auth and no-auth samples alternate (after one warm-up of each) so that load from other
      // processes on the machine falls on both alike; the ratio is then of medians of neighbours.
      const pair = { open: [] as number[], auth: [] as number[], bare: [] as number[] };
      const openRun = measure("http.projection.no-auth", jobs.projectionOpen);
      const authRun = measure("http.projection.auth", jobs.projectionAuth);
      const bareRun = measure("baseline.http.bare-fastify", jobs.projectionBare);
      await openRun();
      await authRun();
      await bareRun();
      for (let i = 0; i < ITERATIONS; i++) {
        pair.open.push(await openRun());
        pair.auth.push(await authRun());
        pair.bare.push(await bareRun());
      }
      for (const name of ["http.projection.no-auth", "http.projection.auth", "baseline.http.bare-fastify"]) latencies[name]!.shift();
      const pairResults: BenchResult[] = [
        { name: "http.projection.no-auth", unit: "req/s", median: median(pair.open), samples: pair.open, extra: { what: `GET ${query} (one aggregate's document), auth off (baseline), ${PROJECTION_CONNECTIONS} connections` } },
        { name: "http.projection.auth", unit: "req/s", median: median(pair.auth), samples: pair.auth, extra: { what: `same query with an RS256 bearer token (verified-token cache), ${PROJECTION_CONNECTIONS} connections`, ...goal(10_000) } },
        { name: "baseline.http.bare-fastify", unit: "req/s", median: median(pair.bare), samples: pair.bare, extra: { what: `the ceiling: bare Fastify answering the same bytes from one route (no auth, hooks, SQLite or metrics), same load, ${PROJECTION_CONNECTIONS} connections` } },
      ];
      for (const r of pairResults) log(`  ${r.name}: ${Math.round(r.median)} ${r.unit} (median of ${r.samples.length}, interleaved)`);
      const pageResults = await runTasks([
        { name: "http.projection.page.auth", unit: "req/s", fn: measure("http.projection.page.auth", jobs.projectionPage), extra: { what: `GET ${pageQuery}: a page of 10 of the 100 aggregates of one site (indexed JSON field, sorted by key), auth` } },
      ], { log, iterations: ITERATIONS });
      // The engine reads every stored event (its filter applies after decoding) and writes a
      // checkpoint per caught-up batch; stopped here, the write loads below measure the
      // gateway and NATS, not also a projection in the same process.
      await engine.close();
      engine = undefined;
      const results: BenchResult[] = [...pairResults, ...pageResults, ...(await runTasks([
        { name: "http.append", unit: "req/s", fn: measure("http.append", jobs.append), extra: { what: `POST /v1/streams/sensor/<per-connection id>, one event, auth, acked by JetStream, ${APPEND_CONNECTIONS} connections`, ...goal(5_000) } },
        { name: "http.batch-ingest", unit: "events/s", fn: measure("http.batch-ingest", jobs.batch, BATCH_EVENTS), extra: { what: `POST /v1/events, ${BATCH_EVENTS} events per JSON array, auth, every event acked, ${BATCH_CONNECTIONS} connections`, ...goal(50_000) } },
        { name: "http.batch-ingest.fast-batches", unit: "events/s", fn: measure("http.batch-ingest.fast-batches", jobs.batchFast, BATCH_EVENTS), extra: { what: `same, gateway with ingestBatching: "auto" (fast-ingest batches, acked per batch)`, ...goal(100_000) } },
        {
          // The ceiling of batch ingest: the same events through the same publisher, in-process, no HTTP.
          name: "baseline.publisher",
          unit: "events/s",
          ops: BASELINE_EVENTS,
          async fn() {
            const meter = cpuMeter(server.pid);
            const publisher = createPublisher(nc);
            const pending: Array<Promise<unknown>> = [];
            for (let i = 0; i < BASELINE_EVENTS; i++) {
              const e = encodeEvent({ type: "ReadingRecorded", data: { sensor: `s-${i % 100}`, site: "plant-7", temp: 20 + (i % 50) / 10, humidity: 40 + (i % 30) / 3, pressure: 1013.25, seq: i } });
              pending.push(publisher.publish(`evt.${TENANT}.sensor.s-${i % 100}`, e.data, { headers: e.headers }));
            }
            await Promise.all(pending);
            await publisher.close();
            (cpu["baseline.publisher"] ??= []).push(meter(BASELINE_EVENTS));
          },
          extra: { what: `${BASELINE_EVENTS} events: encodeEvent + createPublisher().publish, every one acked (streams' pipelined publisher, no HTTP)` },
        },
      ], { log, iterations: ITERATIONS }))];
      const withGoals: BenchResult[] = results.map((r) => {
        const g = r.extra?.goal;
        const splits = (cpu[r.name] ?? []).slice(-ITERATIONS); // the measured samples, not the warm-up
        // µs of CPU per event (median of the samples) of the gateway process and of nats-server.
        const cpuExtra = splits.length === 0 ? {} : {
          gatewayCpuUsPerEvent: median(splits.map((c) => c.benchUsPerEvent)),
          ...(splits.every((c) => c.serverUsPerEvent !== undefined) ? { natsServerCpuUsPerEvent: median(splits.map((c) => c.serverUsPerEvent!)) } : {}),
          coresBusy: median(splits.map((c) => c.cores)),
        };
        const extra = { ...r.extra, ...(typeof g === "number" ? { met: r.median >= g } : {}), latencyP99ms: median(latencies[r.name] ?? []), ...cpuExtra };
        return { ...r, extra };
      });
      const byName = (n: string) => withGoals.find((r) => r.name === n)!;
      withGoals.push(ratio("http.projection.auth/no-auth", byName("http.projection.auth"), byName("http.projection.no-auth"), 0.6));
      withGoals.push(ratio("http.projection.auth/baseline.http.bare-fastify", byName("http.projection.auth"), byName("baseline.http.bare-fastify")));
      withGoals.push(ratio("http.batch-ingest/baseline.publisher", byName("http.batch-ingest"), byName("baseline.publisher")));
      withGoals.push(ratio("http.batch-ingest.fast-batches/http.batch-ingest", byName("http.batch-ingest.fast-batches"), byName("http.batch-ingest")));
      return withGoals;
    } finally {
      for (const g of gateways) await g.close().catch(() => undefined);
      await bare?.close().catch(() => undefined);
      await engine?.close().catch(() => undefined);
      await nats.close();
      await rm(dir, { recursive: true, force: true });
    }
  },
};
