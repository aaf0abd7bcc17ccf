import { createDeadLetters } from "../../streams/index.js";
import type { DeadLetterFilter } from "../../streams/index.js";
import type { DeadLetterSources } from "../api-types.js";
import { BadRequestError } from "../errors.js";
import type { RouteContext } from "../route-context.js";

const filterProperties = {
  seq: { type: ["integer", "string"], description: "One dead letter by its FLEX_DLQ sequence" },
  source: { type: "string", description: "Processor (or `projection_<name>`) that dead-lettered them" },
  since: { type: "string", description: "Stored at or after this RFC 3339 time" },
  until: { type: "string", description: "Stored at or before this RFC 3339 time" },
  reason: { type: "string", description: "Reason contains this text (case-insensitive)" },
} as const;

// A body field FlexCore does not know is refused by the service (never silently dropped:
// a misspelt filter would otherwise widen a redrive or a purge).
function filterOf(body: unknown, field = "body"): Record<string, unknown> {
  if (body === undefined || body === null) return {};
  if (typeof body !== "object" || Array.isArray(body)) throw new BadRequestError(field, "The body must be a JSON object of filters (seq, or source with since, until, reason)");
  return { ...(body as Record<string, unknown>) };
}

/**
 * `/v1/dlq`: the caller's tenant's dead letters (`dlq.<tenant>.>` only): counts per
 * source, one or a filtered page of them, redrive back to the source that failed them,
 * purge (with `confirm: true`). See docs/dlq.md.
 */
export function registerDlqRoutes(ctx: RouteContext): void {
  const { app, nc, timed } = ctx;
  const dlq = createDeadLetters(nc);

  app.get("/v1/dlq", {
    config: { policy: "dlq.read" },
    schema: { tags: ["dlq"], summary: "Dead letters of your tenant per source, with the redrives not yet taken back" },
  }, async (req): Promise<DeadLetterSources> => {
    const rows = await timed((signal) => dlq.list(req.principal!.tenant, signal));
    return { sources: rows.map(({ source, count, redrivePending }) => ({ source, count, redrivePending })) };
  });

  app.get<{ Querystring: Record<string, unknown> }>("/v1/dlq/messages", {
    config: { policy: "dlq.read" },
    schema: {
      tags: ["dlq"],
      summary: "Dead letters of your tenant, oldest first, by source, time range and reason",
      querystring: { type: "object", properties: { ...filterProperties, limit: { type: ["integer", "string"] } } },
    },
  }, async (req) => {
    const page = await timed((signal) => dlq.find(req.principal!.tenant, req.query as DeadLetterFilter, signal));
    return page;
  });

  app.get<{ Params: { seq: string } }>("/v1/dlq/messages/:seq", {
    config: { policy: "dlq.read" },
    schema: { tags: ["dlq"], summary: "One dead letter: reason(s), attempts, original subject, headers and body", params: { type: "object", required: ["seq"], properties: { seq: { type: "string", maxLength: 20 } } } },
  }, async (req) => timed(() => dlq.show(req.principal!.tenant, req.params.seq)));

  app.post<{ Body: unknown }>("/v1/dlq/redrive", {
    config: { policy: "dlq.redrive", accepts: ["application/json"] },
    schema: {
      tags: ["dlq"],
      summary: "Send dead letters back to the processor that failed them (by seq, or a source with optional since/until/reason); repeats are harmless",
      body: { type: "object", properties: filterProperties },
    },
  }, async (req) => timed((signal) => dlq.redrive(req.principal!.tenant, filterOf(req.body) as DeadLetterFilter, signal)));

  app.post<{ Body: unknown }>("/v1/dlq/purge", {
    config: { policy: "dlq.purge", accepts: ["application/json"] },
    schema: {
      tags: ["dlq"],
      summary: "Delete dead letters (by seq, or a source with optional since/until/reason); needs `confirm: true`",
      body: { type: "object", properties: { ...filterProperties, confirm: { type: "boolean" } } },
    },
  }, async (req) => {
    const { confirm, ...filter } = filterOf(req.body);
    return timed((signal) => dlq.purge(req.principal!.tenant, filter as DeadLetterFilter, confirm === true, signal));
  });
}
