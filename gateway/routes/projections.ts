import { checkToken } from "../../streams/index.js";
import { BadRequestError, UnavailableError } from "../errors.js";
import type { RouteContext } from "../route-context.js";
import type { ReadModelPage, ReadModelQuery, ReadModels } from "../read-models.js";

/** Interval of SSE keep-alive comments, in ms. */
export const SSE_HEARTBEAT_MS = 15_000;
/** The `reason` of the `end` event a live feed gets when the gateway closes. */
export const SSE_SHUTDOWN_REASON = "server shutting down";

const nameParams = {
  type: "object",
  required: ["name"],
  properties: { name: { type: "string", minLength: 1, maxLength: 128 } },
} as const;

interface ProjectionQuerystring {
  filter?: string;
  sort?: string;
  cursor?: string;
  limit?: number;
  minSeq?: number;
  reader?: string;
}

/** Parses the `filter` query parameter: a JSON object of column → value or operators. */
export function parseFilter(text: string | undefined): Record<string, unknown> | undefined {
  if (text === undefined || text === "") return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new BadRequestError("filter", `filter must be a JSON object such as {"status":"open","count":{"gte":3}}, got ${JSON.stringify(text.slice(0, 80))}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new BadRequestError("filter", "filter must be a JSON object of column: value or column: { eq, ne, gt, gte, lt, lte, in, prefix }");
  return value as Record<string, unknown>;
}

function need(readModels: ReadModels | undefined): ReadModels {
  if (!readModels) throw new UnavailableError("The projection engine");
  return readModels;
}

/** `GET /v1/projections/:name` and its live feed. */
export function registerProjectionRoutes(ctx: RouteContext): void {
  const { app, limits, timed, deadline, revocations } = ctx;
  // Open live feeds: a hijacked reply is outside Fastify's bookkeeping, so closing the server
  // would wait for each client to leave. They are ended first, with the reason.
  const feeds = new Set<(reason?: string) => void>();
  app.addHook("preClose", async () => {
    for (const end of [...feeds]) end(SSE_SHUTDOWN_REASON);
  });

  app.get<{ Params: { name: string }; Querystring: ProjectionQuerystring }>("/v1/projections/:name", {
    config: { policy: "projection.query" },
    schema: {
      tags: ["projections"],
      summary: "Query a read model (your tenant's rows only)",
      params: nameParams,
      querystring: {
        type: "object",
        additionalProperties: false,
        properties: {
          filter: { type: "string", description: "JSON object: column (or jsonColumn.path) → value, or → { eq, ne, gt, gte, lt, lte, in, prefix }" },
          sort: { type: "string", description: "Comma-separated columns, `-` for descending" },
          cursor: { type: "string", maxLength: 4096, description: "`nextCursor` of the previous page" },
          limit: { type: "integer", minimum: 1 },
          minSeq: { type: "integer", minimum: 1, description: "Wait (bounded) until the projection has applied this FLEX_EVENTS sequence: read your own writes" },
          reader: { type: "string", maxLength: 128 },
        },
      },
    },
  }, async (req) => {
    const tenant = req.principal!.tenant;
    const rm = need(ctx.readModels);
    const name = checkToken("projection", req.params.name);
    const q = req.query;
    if (q.limit !== undefined && q.limit > limits.maxPageSize) throw new BadRequestError("limit", `limit must be at most ${limits.maxPageSize}, got ${q.limit}`, { max: limits.maxPageSize });
    const filter = parseFilter(q.filter);
    const query: ReadModelQuery = {
      tenant,
      limit: q.limit ?? limits.defaultPageSize,
      ...(filter ? { filter } : {}),
      ...(q.sort ? { sort: q.sort } : {}),
      ...(q.cursor ? { cursor: q.cursor } : {}),
      ...(q.reader ? { reader: q.reader } : {}),
    };
    const answer = (page: ReadModelPage) => ({ rows: page.rows, nextCursor: page.nextCursor ?? null });
    if (q.minSeq === undefined) {
      // The common read: nothing to abort, so only a deadline (no AbortController), and none
      // at all when the read model answers synchronously.
      const page = rm.query(name, query);
      return page instanceof Promise ? answer(await deadline(page)) : answer(page);
    }
    const minSeq = q.minSeq;
    return timed(async (signal) => {
      await rm.waitFor(name, minSeq, { timeoutMs: Math.min(limits.maxWaitMs, limits.requestTimeoutMs), signal });
      return answer(await rm.query(name, query));
    });
  });

  app.get<{ Params: { name: string } }>("/v1/projections/:name/live", {
    config: { policy: "projection.live" },
    schema: {
      tags: ["projections"],
      summary: "Server-sent events whenever the read model changes for your tenant (`event: change`, data `{ seq }`); query again to read the rows",
      params: nameParams,
    },
  }, async (req, reply) => {
    const principal = req.principal!;
    const rm = need(ctx.readModels);
    const name = checkToken("projection", req.params.name);
    // Fails with 404 (unknown projection) before the stream starts.
    await rm.query(name, { tenant: principal.tenant, limit: 1 });
    reply.hijack();
    const raw = reply.raw;
    raw.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache, no-transform", connection: "keep-alive", "x-accel-buffering": "no" });
    raw.write(`retry: 2000\nevent: ready\ndata: ${JSON.stringify({ projection: name })}\n\n`);
    let open = true;
    const stillValid = (): boolean => principal.expiresAt * 1000 > Date.now() && !revocations.has(principal.jti) && !(principal.sid && revocations.has(principal.sid));
    const end = (reason?: string): void => {
      if (!open) return;
      open = false;
      feeds.delete(end);
      off();
      clearInterval(heartbeat);
      clearTimeout(expiry);
      if (reason) raw.write(`event: end\ndata: ${JSON.stringify({ reason })}\n\n`);
      raw.end();
    };
    const off = rm.onChange(name, (change) => {
      if (!open) return;
      if (change.tenants && !change.tenants.includes(principal.tenant)) return;
      if (!stillValid()) return end("token expired or revoked");
      raw.write(`event: change\ndata: ${JSON.stringify({ seq: change.seq ?? null })}\n\n`);
    });
    const heartbeat = setInterval(() => (stillValid() ? raw.write(": ping\n\n") : end("token expired or revoked")), SSE_HEARTBEAT_MS);
    heartbeat.unref();
    // The stream ends when the token does; the client reconnects with a fresh one.
    const expiry = setTimeout(() => end("token expired"), Math.max(0, Math.min(principal.expiresAt * 1000 - Date.now(), 2 ** 31 - 1)));
    expiry.unref();
    feeds.add(end);
    req.raw.on("close", () => end());
  });
}
