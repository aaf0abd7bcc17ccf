import { checkToken } from "../../streams/index.js";
import type { WorkflowClient } from "../../workflows/index.js";
import { BadRequestError, UnavailableError } from "../errors.js";
import type { RouteContext } from "../route-context.js";
import { eventView } from "./streams.js";

/** Media types a workflow definition may be sent as. */
export const DEFINITION_MEDIA_TYPES = ["application/json", "application/yaml", "application/x-yaml", "text/yaml"] as const;

const nameParams = { type: "object", required: ["name"], properties: { name: { type: "string", minLength: 1, maxLength: 128 } } } as const;
const runParams = { type: "object", required: ["runId"], properties: { runId: { type: "string", minLength: 1, maxLength: 128 } } } as const;

function need(client: WorkflowClient | undefined): WorkflowClient {
  if (!client) throw new UnavailableError("The workflow client");
  return client;
}

/** `/v1/workflows` (definitions, starting runs) and `/v1/runs` (run state, events, cancel), all in the caller's tenant. */
export function registerWorkflowRoutes(ctx: RouteContext): void {
  const { app, timed } = ctx;
  // YAML definitions arrive as text; JSON ones are parsed by Fastify.
  app.addContentTypeParser(["application/yaml", "application/x-yaml", "text/yaml"], { parseAs: "string" }, (_req, body, done) => done(null, body));

  app.get("/v1/workflows", {
    config: { policy: "workflow.list" },
    schema: { tags: ["workflows"], summary: "Workflow definitions of your tenant (latest versions)" },
  }, async (req) => {
    const list = await timed(() => need(ctx.workflows).list(req.principal!.tenant));
    return { workflows: list.map(({ name, version, storedAt, definition }) => ({ name, version, storedAt, definition })) };
  });

  app.post<{ Body: unknown }>("/v1/workflows", {
    config: { policy: "workflow.define", accepts: DEFINITION_MEDIA_TYPES },
    schema: { tags: ["workflows"], summary: "Store a workflow definition (JSON or YAML) as its next version" },
  }, async (req, reply) => {
    const body = req.body;
    if (body === null || (typeof body !== "string" && typeof body !== "object") || Array.isArray(body)) throw new BadRequestError("body", "The body must be a workflow definition (a JSON object or YAML text)");
    const stored = await timed(() => need(ctx.workflows).put(req.principal!.tenant, body as string | object));
    return reply.code(201).send({ name: stored.name, version: stored.version, storedAt: stored.storedAt });
  });

  app.get<{ Params: { name: string } }>("/v1/workflows/:name", {
    config: { policy: "workflow.list" },
    schema: { tags: ["workflows"], summary: "One definition (latest version)", params: nameParams },
  }, async (req) => {
    const name = checkToken("workflow", req.params.name);
    const w = await timed(() => need(ctx.workflows).get(req.principal!.tenant, name));
    return { name: w.name, version: w.version, storedAt: w.storedAt, definition: w.definition, source: w.source };
  });

  app.post<{ Params: { name: string }; Body: { input?: unknown; runId?: string } | undefined }>("/v1/workflows/:name/runs", {
    config: { policy: "workflow.run", accepts: ["application/json"] },
    schema: {
      tags: ["workflows"],
      summary: "Start a run; a runner picks it up. `runId` makes the start idempotent",
      params: nameParams,
      body: { type: "object", properties: { input: {}, runId: { type: "string", minLength: 1, maxLength: 128 } } },
    },
  }, async (req, reply) => {
    const name = checkToken("workflow", req.params.name);
    const body = req.body ?? {};
    if (body.runId !== undefined) checkToken("runId", body.runId);
    const started = await timed(() => need(ctx.workflows).start(req.principal!.tenant, name, {
      ...(body.input !== undefined ? { input: body.input } : {}),
      ...(body.runId !== undefined ? { runId: body.runId } : {}),
      trigger: { kind: "manual" },
    }));
    return reply.code(started.created ? 201 : 200).send(started);
  });

  // The console's run list: the workflow_history read model's runs of the caller's tenant.
  app.get<{ Querystring: { workflow?: string; status?: string; limit?: number; cursor?: string } }>("/v1/runs", {
    config: { policy: "run.read" },
    schema: {
      tags: ["workflows"],
      summary: "Runs of your tenant, newest first (from the workflow_history read model), optionally of one workflow or status",
      querystring: {
        type: "object",
        additionalProperties: false,
        properties: {
          workflow: { type: "string", minLength: 1, maxLength: 128 },
          status: { type: "string", enum: ["running", "succeeded", "failed", "cancelled"] },
          limit: { type: "integer", minimum: 1 },
          cursor: { type: "string", maxLength: 4096 },
        },
      },
    },
  }, async (req) => {
    const q = req.query;
    if (q.limit !== undefined && q.limit > ctx.limits.maxPageSize) throw new BadRequestError("limit", `limit must be at most ${ctx.limits.maxPageSize}, got ${q.limit}`, { max: ctx.limits.maxPageSize });
    if (!ctx.readModels) throw new UnavailableError("The workflow_history read model");
    const filter: Record<string, unknown> = {};
    if (q.workflow !== undefined) filter.workflow = checkToken("workflow", q.workflow);
    if (q.status !== undefined) filter.status = q.status;
    const page = await ctx.deadline(Promise.resolve(ctx.readModels.query("workflow_history", {
      tenant: req.principal!.tenant,
      reader: "runs",
      filter,
      sort: "-started_at",
      limit: q.limit ?? ctx.limits.defaultPageSize,
      ...(q.cursor !== undefined ? { cursor: q.cursor } : {}),
    })));
    return {
      runs: page.rows.map((r) => ({ runId: r.run_id, workflow: r.workflow, version: r.version, status: r.status, trigger: r.trigger, startedAt: r.started_at, endedAt: r.ended_at, durationMs: r.duration_ms, error: r.error, steps: r.steps })),
      ...(page.nextCursor !== undefined ? { nextCursor: page.nextCursor } : {}),
    };
  });

  app.get<{ Params: { runId: string } }>("/v1/runs/:runId", {
    config: { policy: "run.read" },
    schema: { tags: ["workflows"], summary: "A run's state (status, steps, output)", params: runParams },
  }, async (req) => {
    const runId = checkToken("runId", req.params.runId);
    const { revision: _revision, definition: _definition, ...state } = await timed(() => need(ctx.workflows).status(req.principal!.tenant, runId));
    return state;
  });

  app.get<{ Params: { runId: string } }>("/v1/runs/:runId/events", {
    config: { policy: "run.read" },
    schema: { tags: ["workflows"], summary: "A run's events in order (step starts, outputs, logs)", params: runParams },
  }, async (req) => {
    const runId = checkToken("runId", req.params.runId);
    const events = await timed(() => need(ctx.workflows).events(req.principal!.tenant, runId));
    return { events: events.map(eventView) };
  });

  app.post<{ Params: { runId: string }; Body: { reason?: string } | undefined }>("/v1/runs/:runId/cancel", {
    config: { policy: "workflow.run", accepts: ["application/json"] },
    schema: { tags: ["workflows"], summary: "Cancel a run", params: runParams, body: { type: "object", properties: { reason: { type: "string", maxLength: 1024 } } } },
  }, async (req) => {
    const runId = checkToken("runId", req.params.runId);
    const p = req.principal!;
    const { revision: _revision, definition: _definition, ...state } = await timed(() => need(ctx.workflows).cancel(p.tenant, runId, { by: p.subject, ...(req.body?.reason ? { reason: req.body.reason } : {}) }));
    return state;
  });
}
