import { SYSTEM_TENANT } from "../../streams/index.js";
import { BadRequestError, UnavailableError } from "../errors.js";
import type { RouteContext } from "../route-context.js";

/** Longest history `GET /v1/processors/metrics` answers, in minutes (one day). */
export const MAX_METRICS_MINUTES = 1_440;
/** History when `minutes` is not given. */
export const DEFAULT_METRICS_MINUTES = 60;
const MINUTE_MS = 60_000;

/** One processor's figures of one UTC minute (deployment-wide: a processor serves every tenant). */
export interface ProcessorMinute {
  /** Start of the UTC minute, RFC 3339. */
  readonly minute: string;
  /** Inputs processed in the minute. */
  readonly count: number;
  readonly errors: number;
  /** Inputs per second over the minute. */
  readonly throughput: number;
  readonly p50Ms: number | null;
  readonly p95Ms: number | null;
  readonly p99Ms: number | null;
}

/**
 * `GET /v1/processors/metrics`: throughput and latency per processor and minute, from the
 * `performance_metrics` read model's rows that the processor runtime itself publishes
 * (`evt._system.metrics.<processor>`, `kind: processor`). Only those rows are read: never a
 * tenant's rows, never other kinds (gateway routes). They are the figures `/metrics` and
 * `/ops/processors` already publish, per minute.
 */
export function registerProcessorRoutes(ctx: RouteContext): void {
  const { app, deadline, limits } = ctx;
  app.get<{ Querystring: { minutes?: number } }>("/v1/processors/metrics", {
    config: { policy: "overview.read" },
    schema: {
      tags: ["ops"],
      summary: "Throughput and latency (p50/p95/p99) of every processor per minute, deployment-wide (no tenant's data)",
      querystring: { type: "object", additionalProperties: false, properties: { minutes: { type: "integer", description: `History in minutes, 1 to ${MAX_METRICS_MINUTES} (default ${DEFAULT_METRICS_MINUTES})` } } },
    },
  }, async (req) => {
    const minutes = req.query.minutes ?? DEFAULT_METRICS_MINUTES;
    if (minutes < 1 || minutes > MAX_METRICS_MINUTES) throw new BadRequestError("minutes", `minutes must be from 1 to ${MAX_METRICS_MINUTES}, got ${minutes}`, { min: 1, max: MAX_METRICS_MINUTES });
    const rm = ctx.readModels;
    if (!rm) throw new UnavailableError("The performance_metrics read model");
    const since = new Date(Math.floor((Date.now() - minutes * MINUTE_MS) / MINUTE_MS) * MINUTE_MS).toISOString();
    const per = new Map<string, ProcessorMinute[]>();
    let cursor: string | undefined;
    // Pages until the window is read; bounded by the window (processors × minutes rows).
    do {
      const page = await deadline(Promise.resolve(rm.query("performance_metrics", {
        tenant: SYSTEM_TENANT,
        reader: "minutes",
        filter: { kind: "processor", minute: { gte: since } },
        sort: "minute",
        limit: limits.maxPageSize,
        ...(cursor !== undefined ? { cursor } : {}),
      })));
      for (const r of page.rows) {
        const name = String(r.component);
        const list = per.get(name) ?? [];
        list.push({ minute: String(r.minute), count: Number(r.count), errors: Number(r.errors), throughput: Number(r.throughput), p50Ms: num(r.p50_ms), p95Ms: num(r.p95_ms), p99Ms: num(r.p99_ms) });
        per.set(name, list);
      }
      cursor = page.nextCursor;
    } while (cursor !== undefined);
    return { since, processors: [...per].sort(([a], [b]) => a.localeCompare(b)).map(([processor, points]) => ({ processor, minutes: points })) };
  });
}

function num(v: unknown): number | null {
  return typeof v === "number" ? v : null;
}
