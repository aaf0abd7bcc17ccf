import { nuid } from "@nats-io/transport-node";
import { encodeEvent, eventSubject, METRICS_CATEGORY, METRICS_EVENT_TYPES, SYSTEM_TENANT } from "../streams/index.js";
import type { MetricsReported, Publisher } from "../streams/index.js";
import { quantileSorted } from "simple-statistics";

/** Subject of the gateway's `MetricsReported` events (`evt._system.metrics.<component>`). */
export const ROUTE_REPORT_SUBJECT = eventSubject(SYSTEM_TENANT, METRICS_CATEGORY, "gateway");
/** Latencies kept per route and window for the percentiles (a uniform reservoir). */
export const RESERVOIR_SIZE = 4_096;
const MINUTE_MS = 60_000;

interface Window {
  count: number;
  errors: number;
  seen: number;
  readonly sample: number[];
}

/**
 * Per-route request figures published as `MetricsReported` events (kind `gateway_route`),
 * the shape the `performance_metrics` read model folds: one event per route and report,
 * `minute` = the UTC minute it belongs to, throughput = count / 60 s so reports of several
 * instances add up.
 */
export interface RouteReports {
  /** Records one finished request. */
  record(route: string, status: number, ms: number): void;
  /** Publishes what was recorded since the last report (also called by the timer). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

function percentile(sorted: number[], p: number): number | null {
  return sorted.length === 0 ? null : quantileSorted(sorted, p / 100);
}

/** Starts reporting every `intervalMs` (on minute boundaries when it is whole minutes); 0 only records. */
export function createRouteReports(publisher: Publisher, intervalMs: number, log: (line: string) => void): RouteReports {
  const instance = nuid.next();
  let windows = new Map<string, Window>();
  const flush = async (): Promise<void> => {
    const current = windows;
    windows = new Map();
    const at = new Date();
    const minute = new Date(Math.floor((at.getTime() - 1) / MINUTE_MS) * MINUTE_MS).toISOString().replace(".000Z", "Z");
    for (const [route, w] of current) {
      const sorted = w.sample.sort((a, b) => a - b);
      const data: MetricsReported = {
        component: route, kind: "gateway_route", minute, count: w.count, errors: w.errors,
        p50Ms: percentile(sorted, 50), p95Ms: percentile(sorted, 95), p99Ms: percentile(sorted, 99),
        throughput: round(w.count / (MINUTE_MS / 1000)),
      };
      const event = encodeEvent({ id: `metrics:gateway:${instance}:${at.getTime()}:${route}`.slice(0, 256), type: METRICS_EVENT_TYPES.reported, time: at, data });
      await publisher.publish(ROUTE_REPORT_SUBJECT, event.data, { headers: event.headers })
        .catch((err: unknown) => log(`flexcore: gateway metrics of ${route} not published: ${(err as Error).message}`));
    }
  };
  let timer: NodeJS.Timeout | undefined;
  let first: NodeJS.Timeout | undefined;
  if (intervalMs > 0) {
    const delay = intervalMs % MINUTE_MS === 0 ? MINUTE_MS - (Date.now() % MINUTE_MS) : intervalMs;
    // A timer's flush must not reject unhandled (that ends a Node process): report it and go on.
    const tick = (): void => {
      flush().catch((err: unknown) => log(`flexcore: gateway metrics not reported: ${(err as Error).message}`));
    };
    first = setTimeout(() => {
      tick();
      timer = setInterval(tick, intervalMs);
      timer.unref();
    }, delay);
    first.unref();
  }
  return {
    record(route, status, ms) {
      let w = windows.get(route);
      if (!w) windows.set(route, (w = { count: 0, errors: 0, seen: 0, sample: [] }));
      w.count += 1;
      if (status >= 500) w.errors += 1;
      w.seen += 1;
      if (w.sample.length < RESERVOIR_SIZE) w.sample.push(ms);
      else {
        const j = Math.floor(Math.random() * w.seen);
        if (j < RESERVOIR_SIZE) w.sample[j] = ms;
      }
    },
    flush,
    async close() {
      clearTimeout(first);
      clearInterval(timer);
      if (intervalMs > 0) await flush();
    },
  };
}
