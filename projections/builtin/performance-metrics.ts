import { InvalidEventError, METRICS_CATEGORY, METRICS_EVENT_TYPES, STREAMS } from "../../streams/index.js";
import type { Projection } from "../projection.js";
import { objectData, optionalNumber, requiredNumber, requiredString, tokens } from "./fields.js";

const MINUTE_MS = 60_000;

/**
 * `performance_metrics`: per component (processor, projection, gateway route, ...) per
 * minute: count, errors, p50/p95/p99 latency and throughput, from `MetricsReported` on
 * `evt._system.metrics.<component>` (or a tenant's `evt.<tenant>.metrics.<component>`).
 */
export function performanceMetricsProjection(): Projection {
  return {
    name: "performance_metrics",
    version: 1,
    description: "Per component and minute: count, errors, p50/p95/p99 latency, throughput",
    sources: [{ stream: STREAMS.events, subjects: [`evt.*.${METRICS_CATEGORY}.*`] }],
    readers: {
      minutes: {
        description: "One row per component and minute (minute = RFC 3339 start of the minute)",
        from: "performance_metrics",
        columns: {
          tenant: "text", component: "text", kind: "text", minute: "text", count: "integer", errors: "integer",
          p50_ms: "real", p95_ms: "real", p99_ms: "real", throughput: "real", reports: "integer",
        },
        key: ["component", "minute"],
        defaultSort: "-minute",
      },
    },
    init(db) {
      db.exec(`
        CREATE TABLE performance_metrics (
          tenant TEXT NOT NULL, component TEXT NOT NULL, kind TEXT NOT NULL, minute TEXT NOT NULL,
          count INTEGER NOT NULL, errors INTEGER NOT NULL, p50_ms REAL, p95_ms REAL, p99_ms REAL, throughput REAL NOT NULL,
          reports INTEGER NOT NULL,
          PRIMARY KEY (tenant, component, minute)) WITHOUT ROWID;
        CREATE INDEX performance_metrics_by_minute ON performance_metrics (tenant, minute);
      `);
    },
    apply(db, events) {
      // Several reports of one minute (several instances) merge: counts add up, latency
      // percentiles are averaged weighted by count.
      const upsert = db.prepare(`INSERT INTO performance_metrics (tenant, component, kind, minute, count, errors, p50_ms, p95_ms, p99_ms, throughput, reports)
        VALUES (@tenant, @component, @kind, @minute, @count, @errors, @p50, @p95, @p99, @throughput, 1)
        ON CONFLICT (tenant, component, minute) DO UPDATE SET
          p50_ms = CASE WHEN excluded.p50_ms IS NULL OR excluded.count = 0 THEN p50_ms WHEN p50_ms IS NULL OR count = 0 THEN excluded.p50_ms
            ELSE (p50_ms * count + excluded.p50_ms * excluded.count) / (count + excluded.count) END,
          p95_ms = CASE WHEN excluded.p95_ms IS NULL OR excluded.count = 0 THEN p95_ms WHEN p95_ms IS NULL OR count = 0 THEN excluded.p95_ms
            ELSE (p95_ms * count + excluded.p95_ms * excluded.count) / (count + excluded.count) END,
          p99_ms = CASE WHEN excluded.p99_ms IS NULL OR excluded.count = 0 THEN p99_ms WHEN p99_ms IS NULL OR count = 0 THEN excluded.p99_ms
            ELSE (p99_ms * count + excluded.p99_ms * excluded.count) / (count + excluded.count) END,
          count = count + excluded.count, errors = errors + excluded.errors, throughput = throughput + excluded.throughput,
          kind = excluded.kind, reports = reports + 1`);
      for (const e of events) {
        if (e.type !== METRICS_EVENT_TYPES.reported) continue;
        const [, tenant] = tokens(e.subject);
        const d = objectData(e);
        const minuteText = requiredString(e, d, "minute");
        const t = Date.parse(minuteText);
        if (Number.isNaN(t)) throw new InvalidEventError(`${e.type}.minute`, minuteText, "an RFC 3339 time");
        upsert.run({
          tenant,
          component: requiredString(e, d, "component"),
          kind: requiredString(e, d, "kind"),
          // Normalised so reports of the same minute meet whatever their formatting.
          minute: new Date(Math.floor(t / MINUTE_MS) * MINUTE_MS).toISOString(),
          count: requiredNumber(e, d, "count"),
          errors: requiredNumber(e, d, "errors"),
          // No latency when nothing completed in the minute.
          p50: optionalNumber(e, d, "p50Ms"),
          p95: optionalNumber(e, d, "p95Ms"),
          p99: optionalNumber(e, d, "p99Ms"),
          throughput: requiredNumber(e, d, "throughput"),
        });
      }
    },
  };
}
