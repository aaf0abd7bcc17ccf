/**
 * What an operator sees of a whole `flexcore up` pipeline (in this process, real
 * nats-server, gateway on port 0) after real work: the JSON log lines of each area, the
 * `/metrics` series of every area with values that match the work done, and `/readyz`
 * with the processors and the workflow runner. And what nobody else sees: `/metrics` is
 * public, so it must carry no tenant name, and the log carries no bearer token.
 */
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { metricNames, parseMetrics, promqlMetricNames, sumOf } from "../test/metrics-text.js";
import type { Sample } from "../test/metrics-text.js";
import { ROLES } from "../gateway/index.js";
import type { Gateway } from "../gateway/index.js";
import { startPipeline } from "./up.js";
import type { Pipeline } from "./up.js";

let nats: TestNats;
let dir: string;
let pipeline: Pipeline;
let gateway: Gateway;
let base: string;
let token: string;
const lines: Array<Record<string, unknown>> = [];
const raw: string[] = [];
const T = uniqueName("ops");
const P = uniqueName("anom");
const EVENTS = 40;
const DASHBOARDS = join(import.meta.dirname, "..", "deploy", "grafana", "dashboards");

/**
 * What prometheus-nats-exporter serves with `-varz -connz -routez -healthz -jsz=all`
 * (docker-compose.yml), from its collectors: varz/connz/routez fields become
 * `gnatsd_<endpoint>_<field>`, jsz has fixed names (collector/jsz.go). Only the ones the
 * NATS dashboard may use are listed; `up` is Prometheus's own, per target.
 */
const NATS_EXPORTER_METRICS = new Set([
  "gnatsd_varz_connections", "gnatsd_varz_total_connections", "gnatsd_varz_in_msgs", "gnatsd_varz_out_msgs", "gnatsd_varz_in_bytes", "gnatsd_varz_out_bytes",
  "gnatsd_varz_slow_consumers", "gnatsd_varz_subscriptions", "gnatsd_varz_mem", "gnatsd_varz_cpu", "gnatsd_varz_routes", "gnatsd_varz_remotes",
  "gnatsd_connz_num_connections", "gnatsd_connz_total", "gnatsd_routez_num_routes",
  "jetstream_server_jetstream_disabled", "jetstream_server_total_streams", "jetstream_server_total_consumers", "jetstream_server_total_messages",
  "jetstream_server_total_message_bytes", "jetstream_server_max_memory", "jetstream_server_max_storage",
  "jetstream_stream_total_messages", "jetstream_stream_total_bytes", "jetstream_stream_first_seq", "jetstream_stream_last_seq", "jetstream_stream_consumer_count",
  "jetstream_consumer_delivered_consumer_seq", "jetstream_consumer_delivered_stream_seq", "jetstream_consumer_num_ack_pending", "jetstream_consumer_num_redelivered",
  "jetstream_consumer_num_waiting", "jetstream_consumer_num_pending", "jetstream_consumer_ack_floor_stream_seq", "jetstream_consumer_ack_floor_consumer_seq",
]);
const PROMETHEUS_METRICS = new Set(["up"]);

// The one place this file hands the server to FlexCore (the lead adapts it when NATS auth changes).
function natsEnvironment(n: TestNats): Record<string, string> {
  return { ...n.env };
}

async function http(method: string, path: string, body?: unknown) {
  const res = await fetch(`${base}${path}`, { method, headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "content-type": "application/json" }) }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers };
}

async function scrape(): Promise<{ text: string; samples: Sample[] }> {
  const res = await fetch(`${base}/metrics`);
  expect(res.status).toBe(200);
  const text = await res.text();
  return { text, samples: parseMetrics(text) };
}

async function until<T>(what: string, read: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await read();
    if (ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`${what}: still ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function runEnds(runId: string): Promise<string> {
  const r = await until(`run ${runId}`, () => http("GET", `/v1/runs/${encodeURIComponent(runId)}`), (x) => x.status === 200 && x.json.status !== "running" && x.json.status !== "pending");
  return r.json.status as string;
}

beforeAll(async () => {
  nats = await startTestNats();
  dir = await mkdtemp(join(tmpdir(), "flexcore-ops-"));
  Object.assign(process.env, natsEnvironment(nats), { FLEXCORE_DATA: dir, FLEXCORE_GATEWAY_PORT: "0" });
  const config = join(dir, "flexcore.yaml");
  await writeFile(config, `
runtime:
  threads: 1
  metrics_interval: 60s
processors:
  - name: ${P}
    kind: anomaly
    subjects: ["evt.${T}.sensor.*"]
    max_deliver: 2
    backoff: [50ms]
    options: { method: zscore, field: value, emit: all, min_points: 2 }
workflows:
  runner: true
  definitions: []
`);
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split("\n").filter(Boolean)) {
        raw.push(l);
        lines.push(JSON.parse(l) as Record<string, unknown>);
      }
      done();
    },
  });
  // NATS_URL and the credentials come from the environment, as in a container.
  pipeline = await startPipeline({ configFile: config, logger: pino({ level: "info" }, sink) });
  gateway = (pipeline.components.find((c) => c.name === "gateway") as unknown as { gateway: Gateway }).gateway;
  base = gateway.url!;
  token = (await gateway.issuer!.issueAccess({ tenant: T, subject: "ops", roles: [...ROLES] })).token;

  // Work: events through the gateway (processed by the processor, applied by projections),
  // a run that succeeds with a skipped step, a run that fails.
  const ingest = await http("POST", "/v1/events", { events: Array.from({ length: EVENTS }, (_, i) => ({ category: "sensor", stream: `s${i % 4}`, type: "Reading", id: `r${i}`, data: { value: i % 7 === 0 ? 500 : 10 + (i % 3) } })) });
  expect(ingest.status, JSON.stringify(ingest.json)).toBe(200);
  expect(ingest.json.accepted).toBe(EVENTS);
  // One event the processor cannot read: it fails twice and is dead-lettered.
  const poison = await http("POST", "/v1/streams/sensor/bad", { type: "Reading", id: "poison", data: { value: "not a number" } });
  expect(poison.status, JSON.stringify(poison.json)).toBe(201);
  const ok = await http("POST", "/v1/workflows", {
    name: "ok",
    steps: [
      { id: "score", kind: "processor", processor: "anomaly", options: { emit: "all", min_points: 2 }, input: { value: "${{ input.v }}" } },
      { id: "only_on_failure", needs: ["score"], kind: "processor", processor: "anomaly", options: { emit: "all", min_points: 2 }, when: 'steps.score.status == "failed"', input: { value: 1 } },
    ],
  });
  expect(ok.status, JSON.stringify(ok.json)).toBe(201);
  const bad = await http("POST", "/v1/workflows", { name: "bad", steps: [{ id: "boom", kind: "script", language: "bash", source: "exit 3", retry: { max_attempts: 1 } }] });
  expect(bad.status, JSON.stringify(bad.json)).toBe(201);
  expect((await http("POST", "/v1/workflows/ok/runs", { runId: "ok-1", input: { v: 3 } })).status).toBe(201);
  expect((await http("POST", "/v1/workflows/bad/runs", { runId: "bad-1" })).status).toBe(201);
  expect(await runEnds("ok-1")).toBe("succeeded");
  expect(await runEnds("bad-1")).toBe("failed");
}, 120_000);

afterAll(async () => {
  await pipeline?.close();
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("flexcore up, seen by an operator", () => {
  it("/metrics reports each area's work: processor throughput, redeliveries and DLQ, projections applied, publisher acks, workflow outcomes, NATS state", async () => {
    const { samples: s } = await until("processor caught up", scrape, (x) => (sumOf(x.samples, "flexcore_processor_events_total", { processor: P }) ?? 0) >= EVENTS + 1 && (sumOf(x.samples, "flexcore_projection_applied_total") ?? 0) >= EVENTS && sumOf(x.samples, "flexcore_consumer_lag_events") === 0);
    expect(sumOf(s, "flexcore_processor_events_total", { processor: P, kind: "anomaly" })).toBe(EVENTS + 1);
    // emit: all — one output per readable event.
    expect(sumOf(s, "flexcore_processor_outputs_total", { processor: P })).toBe(EVENTS);
    expect(sumOf(s, "flexcore_processor_redeliveries_total", { processor: P })).toBeGreaterThanOrEqual(0);
    expect(sumOf(s, "flexcore_processor_dead_lettered_total", { processor: P })).toBe(1);
    expect(sumOf(s, "flexcore_processor_errors_total", { processor: P })).toBeGreaterThanOrEqual(1);
    expect(sumOf(s, "flexcore_processor_owner", { processor: P })).toBe(1);
    expect(sumOf(s, "flexcore_processor_latency_seconds", { processor: P, quantile: "0.99" })).toBeGreaterThan(0);
    expect(sumOf(s, "flexcore_consumer_lag_events")).toBe(0);
    expect(sumOf(s, "flexcore_stream_messages", { stream: "FLEX_EVENTS" })).toBeGreaterThanOrEqual(EVENTS);
    expect(sumOf(s, "flexcore_stream_messages", { stream: "FLEX_DLQ" })).toBe(1);
    expect(sumOf(s, "flexcore_projection_state", { state: "live" })).toBeGreaterThan(0);
    // The gateway's publisher stored the events; the processors' their outputs, the dead letter and the key checkpoints.
    expect(sumOf(s, "flexcore_publisher_acks_total", { publisher: "gateway" })).toBeGreaterThanOrEqual(EVENTS);
    expect(sumOf(s, "flexcore_publisher_acks_total", { publisher: "processors" })).toBeGreaterThanOrEqual(EVENTS + 1);
    expect(sumOf(s, "flexcore_publisher_retries_total", { publisher: "gateway" })).toBe(0);
    expect(sumOf(s, "flexcore_gateway_events_total", { route: "batch", result: "stored" })).toBe(EVENTS);
    expect(sumOf(s, "flexcore_workflow_runs_total", { outcome: "succeeded" })).toBe(1);
    expect(sumOf(s, "flexcore_workflow_runs_total", { outcome: "failed" })).toBe(1);
    expect(sumOf(s, "flexcore_workflow_steps_total", { outcome: "succeeded" })).toBe(1);
    expect(sumOf(s, "flexcore_workflow_steps_total", { outcome: "skipped" })).toBe(1);
    expect(sumOf(s, "flexcore_workflow_steps_total", { outcome: "failed" })).toBe(1);
    expect(sumOf(s, "flexcore_workflow_steps_total", { outcome: "started" })).toBe(2);
    expect(sumOf(s, "flexcore_nats_connected")).toBe(1);
    expect(sumOf(s, "flexcore_nats_messages_total", { direction: "out" })).toBeGreaterThan(0);
    expect(sumOf(s, "flexcore_http_request_duration_seconds_count", { route: "/v1/events", status: "200" })).toBe(1);
  });

  it("every metric a Grafana dashboard panel queries exists: FlexCore's in this live /metrics, NATS's in the exporter's set", async () => {
    const { samples } = await scrape();
    const served = metricNames(samples);
    const files = (await readdir(DASHBOARDS)).filter((f) => f.endsWith(".json")).sort();
    expect(files).toEqual(["gateway.json", "ingest.json", "nats.json", "overview.json", "processors.json", "projections.json", "workflows.json"]);
    const missing: string[] = [];
    let exprs = 0;
    for (const file of files) {
      const board = JSON.parse(await readFile(join(DASHBOARDS, file), "utf8")) as { uid: string; panels: Array<{ title: string; targets?: Array<{ expr: string }> }> };
      expect(board.uid).toMatch(/^flexcore-/u);
      for (const panel of board.panels) {
        expect(panel.targets?.length, `${file}: ${panel.title}`).toBeGreaterThan(0);
        for (const { expr } of panel.targets ?? []) {
          exprs += 1;
          const names = promqlMetricNames(expr);
          expect(names.size, `${file}: ${panel.title}: ${expr}`).toBeGreaterThan(0);
          for (const name of names) {
            const known = name.startsWith("flexcore_") ? served.has(name) : NATS_EXPORTER_METRICS.has(name) || PROMETHEUS_METRICS.has(name);
            if (!known) missing.push(`${file} / ${panel.title}: ${name}`);
          }
        }
      }
    }
    expect(missing).toEqual([]);
    expect(exprs).toBeGreaterThan(40);
  });

  it("/metrics is public, so it names no tenant, stream key or event id", async () => {
    const { text } = await scrape();
    expect(text).not.toContain(T);
    expect(text).not.toMatch(/\bs[0-3]\b|"r\d+"/u);
  });

  it("/readyz checks the processors and the workflow runner", async () => {
    const res = await fetch(`${base}/readyz`);
    const body = (await res.json()) as { ready: boolean; checks: Record<string, { ok: boolean; detail?: unknown }> };
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body.checks.processors).toEqual({ ok: true, detail: { running: 1, owned: 1 } });
    expect(body.checks.workflows?.ok).toBe(true);
    expect(body.checks.nats?.ok).toBe(true);
  });

  it("logs JSON lines through one logger, each area through its child, and never the bearer token", () => {
    const areas = new Set(lines.map((l) => l.area));
    // processors: the dead-lettered event is reported there.
    for (const area of ["up", "processors", "gateway"]) expect(areas, [...areas].join(",")).toContain(area);
    const gatewayAt = lines.find((l) => l.area === "gateway" && typeof l.msg === "string" && l.msg.startsWith("gateway at "));
    expect(gatewayAt).toMatchObject({ level: 30 });
    expect(typeof gatewayAt?.time).toBe("number");
    // An area's warning is logged as one: the dead letter, by the processors.
    expect(lines.find((l) => l.area === "processors" && typeof l.msg === "string" && l.msg.includes("dead-lettered to"))).toMatchObject({ level: 40 });
    // The `flexcore: ` prefix of the areas' lines is gone: `area` says who wrote them.
    expect(lines.filter((l) => typeof l.msg === "string" && l.msg.startsWith("flexcore: "))).toEqual([]);
    expect(raw.join("\n")).not.toContain(token);
  });
});
