import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { NatsConnection } from "@nats-io/transport-node";
import type { ProcessorMetrics } from "../processors/index.js";

/** A named lag figure (projection or consumer) reported on `/metrics`. */
export interface LagReading {
  readonly name: string;
  /** Events not yet applied / acknowledged. */
  readonly lag: number;
}

/** Sources of the lag gauges, read when Prometheus scrapes. */
export interface LagSources {
  readonly projections?: () => Promise<readonly LagReading[]> | readonly LagReading[];
  readonly consumers?: () => Promise<readonly LagReading[]> | readonly LagReading[];
}

/** One processor's figures: what the processor runtime's `metrics()` gives (counters since start). */
export type ProcessorReading = Pick<ProcessorMetrics, "processor" | "kind" | "owner" | "processed" | "outputs" | "errors" | "redelivered" | "deadLettered" | "inFlight" | "queueDepth" | "p50" | "p95" | "p99"> & Partial<Pick<ProcessorMetrics, "partitions" | "throughput">>;

/** One projection's status, as the projection engine's `status()` gives it. */
export interface ProjectionReading {
  readonly name: string;
  readonly state: string;
  /** Events applied by this process. */
  readonly applied: number;
  readonly failures: { readonly count: number };
}

/** A publisher's counters (`Publisher.stats`). */
export interface PublisherReading {
  readonly acked: number;
  readonly failed: number;
  readonly retries: number;
  readonly inFlight: number;
}

/** The workflow runner's figures (`WorkflowRunner.stats` and `active`). */
export interface WorkflowReading {
  readonly active: number;
  readonly runs: Readonly<Record<string, number>>;
  readonly steps: Readonly<Record<string, number>>;
}

/** A JetStream stream's size (`FLEX_DLQ`'s is the dead-letter count of the whole deployment). */
export interface StreamReading {
  readonly stream: string;
  readonly messages: number;
  readonly bytes: number;
}

/** Dead letters stored for one source of one tenant (`DeadLetters.list` of `streams/`). */
export interface DeadLetterReading {
  readonly tenant: string;
  readonly source: string;
  readonly count: number;
  readonly redrivePending: number;
}

/** One plugin's call figures (the plugin host's `metrics()`, counters since start). */
export interface PluginReading {
  readonly plugin: string;
  /** Calls answered without error. */
  readonly calls: number;
  /** Failed calls by error code. */
  readonly errors: Readonly<Record<string, number>>;
  /** Call latency in ms over the last calls. */
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  /** Process failures (restarts, or a crash loop) the supervisor saw. */
  readonly restarts: number;
  readonly state: string;
}

/** The sinks' and sources' counters (the plugin drivers' `metrics()`), by configured name. */
export interface PluginEndpointReading {
  readonly sinks: ReadonlyArray<{ readonly name: string; readonly delivered: number; readonly failed: number; readonly retried: number; readonly deadLettered: number }>;
  readonly sources: ReadonlyArray<{ readonly name: string; readonly polls: number; readonly records: number; readonly appended: number; readonly duplicates: number; readonly failed: number }>;
}

/** Everything `/metrics` reads when Prometheus scrapes, besides the gateway's own figures. */
export interface MetricSources extends LagSources {
  readonly processors?: () => readonly ProcessorReading[];
  readonly projectionStatus?: () => Promise<readonly ProjectionReading[]>;
  /** Publishers by name (`gateway`, `processors`). */
  readonly publishers?: () => Readonly<Record<string, PublisherReading>>;
  /** Undefined when this instance runs no workflow runner. */
  readonly workflows?: () => WorkflowReading | undefined;
  readonly streams?: () => Promise<readonly StreamReading[]>;
  /** Dead letters per tenant and source (`FLEX_DLQ`), and redrives not yet taken back (`FLEX_REDRIVE`). */
  readonly deadLetters?: () => Promise<readonly DeadLetterReading[]>;
  /** The configured plugins' calls, errors, latency and restarts. */
  readonly plugins?: () => readonly PluginReading[];
  /** Sinks and sources of plugins (flexcore.yaml `sinks:`, `sources:`). */
  readonly pluginEndpoints?: () => PluginEndpointReading;
  /** The NATS connection whose state, reconnects and traffic are reported. */
  readonly nats?: NatsConnection;
}

/** Request latency buckets, in seconds. */
export const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The gateway's Prometheus metrics, in a registry of its own (several gateways can share a process). */
export interface GatewayMetrics {
  readonly registry: Registry;
  readonly requestDuration: Histogram<"method" | "route" | "status">;
  readonly ingestedEvents: Counter<"route" | "result">;
  /** Stops watching the NATS connection's status. */
  close(): void;
}

type Labels = Record<string, string>;
type Series = ReadonlyArray<readonly [Labels, number]>;

export function createMetrics(sources: MetricSources = {}, options: { defaultMetrics?: boolean } = {}): GatewayMetrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: "flexcore_" });
  const requestDuration = new Histogram({
    name: "flexcore_http_request_duration_seconds",
    help: "Gateway request latency by route template and status",
    labelNames: ["method", "route", "status"] as const,
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  const ingestedEvents = new Counter({
    name: "flexcore_gateway_events_total",
    help: "Events received through the gateway by route and result (stored, duplicate, rejected)",
    labelNames: ["route", "result"] as const,
    registers: [registry],
  });

  // The areas keep their own counters since start; these report them as they are at scrape
  // time. A counter that goes down means a restart, which rate() handles.
  const counter = (name: string, help: string, labelNames: readonly string[], read: () => Series | Promise<Series>): void => {
    new Counter({
      name, help, labelNames, registers: [registry],
      async collect() {
        const series = await read();
        this.reset();
        for (const [labels, value] of series) this.inc(labels, value);
      },
    });
  };
  const gauge = (name: string, help: string, labelNames: readonly string[], read: () => Series | Promise<Series>): void => {
    new Gauge({
      name, help, labelNames, registers: [registry],
      async collect() {
        const series = await read();
        this.reset();
        for (const [labels, value] of series) this.set(labels, value);
      },
    });
  };

  const lagGauge = (name: string, help: string, source: LagSources["projections"]): void => {
    if (!source) return;
    gauge(name, help, ["name"], async () => (await source()).map((r) => [{ name: r.name }, r.lag] as const));
  };
  lagGauge("flexcore_projection_lag_events", "Events stored but not yet applied, per projection", sources.projections);
  lagGauge("flexcore_consumer_lag_events", "Messages pending, per durable consumer", sources.consumers);

  const processors = sources.processors;
  if (processors) {
    const per = (pick: (p: ProcessorReading) => number) => (): Series => processors().map((p) => [{ processor: p.processor, kind: p.kind }, pick(p)] as const);
    const labels = ["processor", "kind"];
    counter("flexcore_processor_events_total", "Source events acknowledged by this instance (processed, skipped as already reflected, or dead-lettered)", labels, per((p) => p.processed));
    counter("flexcore_processor_outputs_total", "Derived events published", labels, per((p) => p.outputs));
    counter("flexcore_processor_errors_total", "Failed attempts (a task that threw, a worker that died)", labels, per((p) => p.errors));
    counter("flexcore_processor_redeliveries_total", "Messages JetStream delivered again (ack wait passed, nak, restart)", labels, per((p) => p.redelivered));
    counter("flexcore_processor_dead_lettered_total", "Events sent to FLEX_DLQ", labels, per((p) => p.deadLettered));
    gauge("flexcore_processor_in_flight", "Events fetched and not yet acknowledged", labels, per((p) => p.inFlight));
    gauge("flexcore_processor_queue_depth", "Events waiting in partitions plus tasks waiting for a worker", labels, per((p) => p.queueDepth));
    gauge("flexcore_processor_owner", "1 when this instance holds the processor's lease and runs it (scale: partitioned: at least one partition), 0 on standby", labels, per((p) => (p.owner ? 1 : 0)));
    gauge("flexcore_processor_throughput_events_per_second", "Source events acknowledged per second since the last MetricsReported", labels, per((p) => p.throughput ?? 0));
    // scale: partitioned: which partitions this instance consumes (their lag is flexcore_consumer_lag_events{name="proc_<name>_p<n>"}).
    gauge("flexcore_processor_partitions_held", "Partitions of a partitioned processor this instance consumes now", labels, () =>
      processors().filter((p) => p.partitions !== undefined).map((p) => [{ processor: p.processor, kind: p.kind }, p.partitions!.length] as const));
    gauge("flexcore_processor_partition_held", "1 for each partition of a partitioned processor this instance consumes now", [...labels, "partition"], () =>
      processors().flatMap((p) => (p.partitions ?? []).map((n) => [{ processor: p.processor, kind: p.kind, partition: String(n) }, 1] as const)));
    gauge("flexcore_processor_latency_seconds", "Fetch-to-ack latency over the last 8192 events, by quantile", [...labels, "quantile"], () =>
      processors().flatMap((p) => ([["0.5", p.p50], ["0.95", p.p95], ["0.99", p.p99]] as const).map(([q, ms]) => [{ processor: p.processor, kind: p.kind, quantile: q }, ms / 1000] as const)));
  }

  const plugins = sources.plugins;
  if (plugins) {
    counter("flexcore_plugin_calls_total", "Plugin calls answered without error (processor batches, steps)", ["plugin"], () => plugins().map((p) => [{ plugin: p.plugin }, p.calls] as const));
    counter("flexcore_plugin_errors_total", "Failed plugin calls by error code (FLEX_PLUGIN_TIMEOUT, _REJECTED, _FAILED, _UNAVAILABLE, _BAD_REPLY)", ["plugin", "code"], () =>
      plugins().flatMap((p) => Object.entries(p.errors).map(([code, n]) => [{ plugin: p.plugin, code }, n] as const)));
    counter("flexcore_plugin_restarts_total", "Plugin process failures the supervisor saw (each restarted unless in a crash loop)", ["plugin"], () => plugins().map((p) => [{ plugin: p.plugin }, p.restarts] as const));
    gauge("flexcore_plugin_call_latency_seconds", "Plugin call latency over the last 8192 calls, by quantile", ["plugin", "quantile"], () =>
      plugins().flatMap((p) => ([["0.5", p.p50], ["0.95", p.p95], ["0.99", p.p99]] as const).map(([q, ms]) => [{ plugin: p.plugin, quantile: q }, ms / 1000] as const)));
    gauge("flexcore_plugin_state", "1 for the plugin's current state (running, starting, restarting, standby, failed, stopped, disabled, external)", ["plugin", "state"], () => plugins().map((p) => [{ plugin: p.plugin, state: p.state }, 1] as const));
  }

  const endpoints = sources.pluginEndpoints;
  if (endpoints) {
    // By configured name, summed over tenants: no series names a tenant.
    const sum = <T extends { name: string }>(list: readonly T[], pick: (x: T) => number): Series => {
      const by = new Map<string, number>();
      for (const x of list) by.set(x.name, (by.get(x.name) ?? 0) + pick(x));
      return [...by].map(([name, v]) => [{ name }, v] as const);
    };
    counter("flexcore_sink_delivered_total", "Events a sink plugin confirmed (and that were acknowledged)", ["name"], () => sum(endpoints().sinks, (s) => s.delivered));
    counter("flexcore_sink_failed_calls_total", "Sink calls that failed", ["name"], () => sum(endpoints().sinks, (s) => s.failed));
    counter("flexcore_sink_retried_total", "Messages a sink nak'd for a later retry", ["name"], () => sum(endpoints().sinks, (s) => s.retried));
    counter("flexcore_sink_dead_lettered_total", "Events a sink refused, sent to FLEX_DLQ", ["name"], () => sum(endpoints().sinks, (s) => s.deadLettered));
    counter("flexcore_source_appended_total", "Records a source plugin returned that were stored as new events", ["name"], () => sum(endpoints().sources, (s) => s.appended));
    counter("flexcore_source_duplicates_total", "Records appended again after a re-read, dropped by the stream's dedupe", ["name"], () => sum(endpoints().sources, (s) => s.duplicates));
    counter("flexcore_source_failed_polls_total", "Source polls that failed", ["name"], () => sum(endpoints().sources, (s) => s.failed));
  }

  const status = sources.projectionStatus;
  if (status) {
    counter("flexcore_projection_applied_total", "Events applied to the read model by this instance", ["name"], async () => (await status()).map((p) => [{ name: p.name }, p.applied] as const));
    gauge("flexcore_projection_failures", "Events the projection failed to apply (kept in its failure table)", ["name"], async () => (await status()).map((p) => [{ name: p.name }, p.failures.count] as const));
    gauge("flexcore_projection_state", "1 for the projection's current state (live, catching-up, stopped, stale, read-only)", ["name", "state"], async () => (await status()).map((p) => [{ name: p.name, state: p.state }, 1] as const));
  }

  const publishers = sources.publishers;
  if (publishers) {
    const per = (pick: (p: PublisherReading) => number) => (): Series => Object.entries(publishers()).map(([name, p]) => [{ publisher: name }, pick(p)] as const);
    counter("flexcore_publisher_acks_total", "Messages JetStream acknowledged", ["publisher"], per((p) => p.acked));
    counter("flexcore_publisher_retries_total", "Publishes sent again (no ack in time, no responders)", ["publisher"], per((p) => p.retries));
    counter("flexcore_publisher_failures_total", "Publishes that failed for good", ["publisher"], per((p) => p.failed));
    gauge("flexcore_publisher_in_flight", "Publishes waiting for their ack", ["publisher"], per((p) => p.inFlight));
  }

  const workflows = sources.workflows;
  if (workflows) {
    counter("flexcore_workflow_runs_total", "Workflow runs this instance ended, by outcome", ["outcome"], () => Object.entries(workflows()?.runs ?? {}).map(([outcome, n]) => [{ outcome }, n] as const));
    counter("flexcore_workflow_steps_total", "Step attempts this instance recorded, by outcome (started, succeeded, failed, retried, interrupted, skipped)", ["outcome"], () => Object.entries(workflows()?.steps ?? {}).map(([outcome, n]) => [{ outcome }, n] as const));
    gauge("flexcore_workflow_runs_active", "Runs this instance drives now", [], () => {
      const w = workflows();
      return w ? [[{}, w.active]] : [];
    });
  }

  const streams = sources.streams;
  if (streams) {
    gauge("flexcore_stream_messages", "Messages stored in the stream (FLEX_DLQ: dead letters of the whole deployment)", ["stream"], async () => (await streams()).map((s) => [{ stream: s.stream }, s.messages] as const));
    gauge("flexcore_stream_bytes", "Bytes stored in the stream", ["stream"], async () => (await streams()).map((s) => [{ stream: s.stream }, s.bytes] as const));
  }

  const deadLetters = sources.deadLetters;
  if (deadLetters) {
    // Summed over tenants: /metrics is public and no series names a tenant (docs/gateway.md).
    const bySource = (pick: (d: DeadLetterReading) => number) => async (): Promise<Series> => {
      const sums = new Map<string, number>();
      for (const d of await deadLetters()) sums.set(d.source, (sums.get(d.source) ?? 0) + pick(d));
      return [...sums].map(([source, v]) => [{ source }, v] as const);
    };
    gauge("flexcore_dlq_messages", "Dead letters stored in FLEX_DLQ per source (processor, projection_<name>), all tenants together", ["source"], bySource((d) => d.count));
    gauge("flexcore_dlq_redrive_pending", "Dead letters redriven and not yet taken back by their source, per source", ["source"], bySource((d) => d.redrivePending));
  }

  let stopWatch = (): void => undefined;
  const nc = sources.nats;
  if (nc) {
    const seen = { connected: nc.isClosed() ? 0 : 1, disconnects: 0, reconnects: 0 };
    const status = nc.status();
    void (async () => {
      for await (const s of status) {
        if (s.type === "disconnect") {
          seen.connected = 0;
          seen.disconnects += 1;
        } else if (s.type === "reconnect") {
          seen.connected = 1;
          seen.reconnects += 1;
        } else if (s.type === "close") seen.connected = 0;
      }
    })().catch(() => undefined);
    stopWatch = () => (status as { stop?: () => void }).stop?.();
    gauge("flexcore_nats_connected", "1 while the connection to NATS is up", [], () => [[{}, nc.isClosed() ? 0 : seen.connected]]);
    counter("flexcore_nats_reconnects_total", "Reconnections to NATS", [], () => [[{}, seen.reconnects]]);
    counter("flexcore_nats_disconnects_total", "Losses of the NATS connection", [], () => [[{}, seen.disconnects]]);
    counter("flexcore_nats_messages_total", "Messages over this process's NATS connection, by direction", ["direction"], () => {
      const st = nc.stats();
      return [[{ direction: "in" }, st.inMsgs], [{ direction: "out" }, st.outMsgs]];
    });
    counter("flexcore_nats_bytes_total", "Bytes over this process's NATS connection, by direction", ["direction"], () => {
      const st = nc.stats();
      return [[{ direction: "in" }, st.inBytes], [{ direction: "out" }, st.outBytes]];
    });
  }
  return { registry, requestDuration, ingestedEvents, close: () => stopWatch() };
}
