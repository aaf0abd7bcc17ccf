import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";

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

/** Request latency buckets, in seconds. */
export const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The gateway's Prometheus metrics, in a registry of its own (several gateways can share a process). */
export interface GatewayMetrics {
  readonly registry: Registry;
  readonly requestDuration: Histogram<"method" | "route" | "status">;
  readonly ingestedEvents: Counter<"route" | "result">;
}

export function createMetrics(sources: LagSources = {}, options: { defaultMetrics?: boolean } = {}): GatewayMetrics {
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
  const lagGauge = (name: string, help: string, source: LagSources["projections"]): void => {
    if (!source) return;
    new Gauge({
      name,
      help,
      labelNames: ["name"] as const,
      registers: [registry],
      async collect() {
        this.reset();
        for (const r of await source()) this.set({ name: r.name }, r.lag);
      },
    });
  };
  lagGauge("flexcore_projection_lag_events", "Events stored but not yet applied, per projection", sources.projections);
  lagGauge("flexcore_consumer_lag_events", "Messages pending, per durable consumer", sources.consumers);
  return { registry, requestDuration, ingestedEvents };
}
