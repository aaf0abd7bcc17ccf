import { PLUGIN_CATEGORY, PLUGIN_EVENT_TYPES, STREAMS } from "../../streams/index.js";
import type { Projection } from "../projection.js";
import { errorInfo, objectData, optionalNumber, optionalString, tokens } from "./fields.js";

const T = PLUGIN_EVENT_TYPES;

/**
 * `plugin_status`: per plugin: state (loaded, running, failed, stopped), version, last
 * health check, restarts, last error. System plugins report on `evt._system.plugin.<name>`
 * (tenant `_system`); a tenant's own plugins on `evt.<tenant>.plugin.<name>`.
 */
export function pluginStatusProjection(): Projection {
  return {
    name: "plugin_status",
    version: 1,
    description: "Per plugin: state, version, last health check, restarts, last error",
    sources: [{ stream: STREAMS.events, subjects: [`evt.*.${PLUGIN_CATEGORY}.*`] }],
    readers: {
      plugins: {
        description: "One row per plugin; state loaded, running, failed or stopped",
        from: "plugin_status",
        columns: {
          tenant: "text", plugin: "text", state: "text", version: "text", loaded_at: "text", started_at: "text", stopped_at: "text",
          last_health_at: "text", healthy: "integer", health_detail: "text", health_latency_ms: "real", restarts: "integer",
          failures: "integer", last_error: "text", last_error_at: "text", updated_at: "text",
        },
        key: ["plugin"],
      },
    },
    init(db) {
      db.exec(`CREATE TABLE plugin_status (
        tenant TEXT NOT NULL, plugin TEXT NOT NULL, state TEXT NOT NULL, version TEXT, loaded_at TEXT, started_at TEXT, stopped_at TEXT,
        last_health_at TEXT, healthy INTEGER, health_detail TEXT, health_latency_ms REAL, starts INTEGER NOT NULL DEFAULT 0,
        restarts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, last_error TEXT, last_error_at TEXT,
        updated_at TEXT NOT NULL, last_seq INTEGER NOT NULL,
        PRIMARY KEY (tenant, plugin)) WITHOUT ROWID`);
    },
    apply(db, events) {
      const ensure = db.prepare(`INSERT INTO plugin_status (tenant, plugin, state, updated_at, last_seq) VALUES (?, ?, 'loaded', ?, ?)
        ON CONFLICT (tenant, plugin) DO UPDATE SET updated_at = excluded.updated_at, last_seq = excluded.last_seq`);
      const loaded = db.prepare(`UPDATE plugin_status SET state = 'loaded', version = ?, loaded_at = ? WHERE tenant = ? AND plugin = ?`);
      const started = db.prepare(`UPDATE plugin_status SET state = 'running', version = coalesce(?, version), started_at = ?, stopped_at = NULL,
        starts = starts + 1, restarts = max(starts, 0) WHERE tenant = ? AND plugin = ?`);
      const failed = db.prepare(`UPDATE plugin_status SET state = 'failed', failures = failures + 1, last_error = ?, last_error_at = ? WHERE tenant = ? AND plugin = ?`);
      // A stop naming a version other than the row's is an upgrade's old version going: the new one runs.
      const stopped = db.prepare(`UPDATE plugin_status SET state = 'stopped', stopped_at = ? WHERE tenant = ? AND plugin = ? AND (? IS NULL OR version IS NULL OR version = ?)`);
      const health = db.prepare(`UPDATE plugin_status SET last_health_at = ?, healthy = ?, health_detail = ?, health_latency_ms = ? WHERE tenant = ? AND plugin = ?`);
      for (const e of events) {
        if (e.type !== T.loaded && e.type !== T.started && e.type !== T.failed && e.type !== T.stopped && e.type !== T.health) continue;
        const [, tenant, , id] = tokens(e.subject);
        const d = objectData(e);
        const plugin = typeof d.plugin === "string" && d.plugin ? d.plugin : id;
        ensure.run(tenant, plugin, e.time, e.seq);
        switch (e.type) {
          case T.loaded:
            loaded.run(optionalString(e, d, "version"), e.time, tenant, plugin);
            break;
          case T.started:
            // restarts = starts before this one: the first start is not a restart.
            started.run(optionalString(e, d, "version"), e.time, tenant, plugin);
            break;
          case T.failed:
            failed.run(errorInfo(e, d, "error"), e.time, tenant, plugin);
            break;
          case T.stopped: {
            const version = optionalString(e, d, "version");
            stopped.run(e.time, tenant, plugin, version, version);
            break;
          }
          case T.health: {
            if (typeof d.ok !== "boolean") throw new Error(`PluginHealth.ok must be a boolean, got ${typeof d.ok}`);
            health.run(e.time, d.ok ? 1 : 0, optionalString(e, d, "detail"), optionalNumber(e, d, "latencyMs"), tenant, plugin);
            break;
          }
        }
      }
    },
  };
}
