import { STREAMS, WORKFLOW_CATEGORY, WORKFLOW_EVENT_TYPES } from "../../streams/index.js";
import type { Projection } from "../projection.js";
import { durationMs, errorInfo, objectData, optionalNumber, optionalString, requiredNumber, requiredString, tokens } from "./fields.js";

const T = WORKFLOW_EVENT_TYPES;

/**
 * `workflow_history`: per run (workflow, version, status, started, ended, duration, error)
 * and per step (status, attempts, error, output summary), from `evt.<tenant>.workflow.<runId>`.
 */
export function workflowHistoryProjection(): Projection {
  return {
    name: "workflow_history",
    version: 1,
    description: "Workflow runs and their steps: status, timing, attempts, errors",
    sources: [{ stream: STREAMS.events, subjects: [`evt.*.${WORKFLOW_CATEGORY}.*`] }],
    readers: {
      runs: {
        description: "One row per run; status running, succeeded, failed or cancelled",
        from: "workflow_runs",
        columns: {
          tenant: "text", run_id: "text", workflow: "text", version: "text", status: "text", trigger: "text", started_at: "text",
          ended_at: "text", duration_ms: "integer", error: "text", output_summary: "text", steps: "integer", last_seq: "integer",
        },
        key: ["run_id"],
        defaultSort: "-started_at",
      },
      steps: {
        description: "One row per step of a run; status running, retrying, succeeded, failed or skipped",
        from: "workflow_steps",
        columns: {
          tenant: "text", run_id: "text", step: "text", status: "text", attempts: "integer", started_at: "text",
          ended_at: "text", duration_ms: "integer", error: "text", output_summary: "text",
        },
        key: ["run_id", "step"],
        defaultSort: "started_at",
      },
    },
    init(db) {
      db.exec(`
        CREATE TABLE workflow_runs (
          tenant TEXT NOT NULL, run_id TEXT NOT NULL, workflow TEXT, version TEXT, status TEXT NOT NULL, trigger TEXT,
          started_at TEXT, ended_at TEXT, duration_ms INTEGER, error TEXT, output_summary TEXT, steps INTEGER NOT NULL DEFAULT 0,
          last_seq INTEGER NOT NULL,
          PRIMARY KEY (tenant, run_id)) WITHOUT ROWID;
        CREATE INDEX workflow_runs_by_workflow ON workflow_runs (tenant, workflow, started_at);
        CREATE INDEX workflow_runs_by_status ON workflow_runs (tenant, status, started_at);
        CREATE TABLE workflow_steps (
          tenant TEXT NOT NULL, run_id TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
          started_at TEXT, ended_at TEXT, duration_ms INTEGER, error TEXT, output_summary TEXT,
          PRIMARY KEY (tenant, run_id, step)) WITHOUT ROWID;
      `);
    },
    apply(db, events) {
      const run = db.prepare(`INSERT INTO workflow_runs (tenant, run_id, status, last_seq) VALUES (?, ?, 'running', ?)
        ON CONFLICT (tenant, run_id) DO UPDATE SET last_seq = excluded.last_seq`);
      const started = db.prepare(`UPDATE workflow_runs SET workflow = ?, version = ?, trigger = ?, started_at = ?, status = 'running' WHERE tenant = ? AND run_id = ?`);
      const ended = db.prepare(`UPDATE workflow_runs SET status = ?, ended_at = ?, duration_ms = ?, error = ?, output_summary = ? WHERE tenant = ? AND run_id = ?`);
      const startedAt = db.prepare(`SELECT started_at FROM workflow_runs WHERE tenant = ? AND run_id = ?`).pluck();
      const stepStart = db.prepare(`INSERT INTO workflow_steps (tenant, run_id, step, status, attempts, started_at) VALUES (?, ?, ?, 'running', ?, ?)
        ON CONFLICT (tenant, run_id, step) DO UPDATE SET status = 'running', attempts = max(attempts, excluded.attempts), ended_at = NULL, error = NULL`);
      const stepCount = db.prepare(`UPDATE workflow_runs SET steps = (SELECT count(*) FROM workflow_steps WHERE tenant = ? AND run_id = ?) WHERE tenant = ? AND run_id = ?`);
      const stepEnd = db.prepare(`INSERT INTO workflow_steps (tenant, run_id, step, status, attempts, started_at, ended_at, duration_ms, error, output_summary)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (tenant, run_id, step) DO UPDATE SET status = excluded.status, attempts = max(attempts, excluded.attempts),
          ended_at = excluded.ended_at, duration_ms = coalesce(excluded.duration_ms, ?), error = excluded.error, output_summary = excluded.output_summary`);
      const stepStartedAt = db.prepare(`SELECT started_at FROM workflow_steps WHERE tenant = ? AND run_id = ? AND step = ?`).pluck();
      for (const e of events) {
        const [, tenant, , runId] = tokens(e.subject);
        switch (e.type) {
          case T.runStarted: {
            const d = objectData(e);
            const workflow = requiredString(e, d, "workflow");
            const v = d.version;
            if (typeof v !== "string" && typeof v !== "number") throw new Error(`RunStarted.version must be a number or string, got ${typeof v}`);
            run.run(tenant, runId, e.seq);
            started.run(workflow, String(v), optionalString(e, d, "trigger"), e.time, tenant, runId);
            break;
          }
          case T.stepStarted: {
            const d = objectData(e);
            const step = requiredString(e, d, "step");
            const attempt = requiredNumber(e, d, "attempt", 1);
            run.run(tenant, runId, e.seq);
            stepStart.run(tenant, runId, step, attempt, e.time);
            stepCount.run(tenant, runId, tenant, runId);
            break;
          }
          case T.stepSucceeded:
          case T.stepFailed: {
            const d = objectData(e);
            const step = requiredString(e, d, "step");
            const attempt = requiredNumber(e, d, "attempt", 1);
            const failed = e.type === T.stepFailed;
            const status = failed ? (d.willRetry === true ? "retrying" : "failed") : "succeeded";
            const since = stepStartedAt.get(tenant, runId, step) as string | undefined;
            const measured = optionalNumber(e, d, "durationMs");
            run.run(tenant, runId, e.seq);
            stepEnd.run(tenant, runId, step, status, attempt, since ?? null, e.time, measured, failed ? errorInfo(e, d, "error") : null,
              failed ? null : optionalString(e, d, "output"), durationMs(since, e.time));
            stepCount.run(tenant, runId, tenant, runId);
            break;
          }
          case T.stepSkipped: {
            const d = objectData(e);
            const step = requiredString(e, d, "step");
            run.run(tenant, runId, e.seq);
            stepEnd.run(tenant, runId, step, "skipped", 0, null, e.time, null, optionalString(e, d, "reason"), null, null);
            stepCount.run(tenant, runId, tenant, runId);
            break;
          }
          case T.runSucceeded:
          case T.runFailed:
          case T.runCancelled: {
            const d = objectData(e);
            run.run(tenant, runId, e.seq);
            const since = startedAt.get(tenant, runId) as string | null | undefined;
            const status = e.type === T.runSucceeded ? "succeeded" : e.type === T.runFailed ? "failed" : "cancelled";
            const error = e.type === T.runFailed ? errorInfo(e, d, "error") : e.type === T.runCancelled ? optionalString(e, d, "reason") : null;
            ended.run(status, e.time, durationMs(since, e.time), error, e.type === T.runSucceeded ? optionalString(e, d, "output") : null, tenant, runId);
            break;
          }
          default:
            // Other event types of a run (e.g. custom progress notes) are not part of the history.
            break;
        }
      }
    },
  };
}
