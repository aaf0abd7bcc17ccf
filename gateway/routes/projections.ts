import { checkToken, FlexError } from "../../streams/index.js";
import { InstanceRebuildError, REBUILD_SUBJECT, startRebuild } from "../../projections/index.js";
import type { DeploymentRebuildProgress } from "../../projections/index.js";
import { BadRequestError, EngineUnreachableError, UnavailableError } from "../errors.js";
import type { RouteContext } from "../route-context.js";
import type { ReadModelPage, ReadModelQuery, ReadModels } from "../read-models.js";
import { sseFeeds } from "../sse.js";

export { SSE_HEARTBEAT_MS, SSE_SHUTDOWN_REASON } from "../sse.js";

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
  const feeds = sseFeeds(app);

  // The console's list of read models: what a tenant can query, and how far behind each is.
  app.get("/v1/projections", {
    config: { policy: "projection.query" },
    schema: {
      tags: ["projections"],
      summary: "The read models you can query: readers with their columns, key and default sort, and each projection's state, lag and generation (deployment-wide: a projection serves every tenant)",
    },
  }, async () => {
    const rm = need(ctx.readModels);
    if (!rm.catalog) throw new UnavailableError("The projection catalog");
    return { projections: await deadline(Promise.resolve(rm.catalog())) };
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
    const feed = feeds.open(req, reply, principal, revocations, { projection: name });
    const off = rm.onChange(name, (change) => {
      if (change.tenants && !change.tenants.includes(principal.tenant)) return;
      feed.send("change", { seq: change.seq ?? null });
    });
    feed.onEnd(off);
  });
}

/** `POST /v1/projections/:name/rebuild`: the operator's rebuild, asked of the running engine over NATS, progress as server-sent events. */
export function registerProjectionRebuildRoute(ctx: RouteContext): void {
  const { app, nc, revocations } = ctx;
  const feeds = sseFeeds(app);
  app.post<{ Params: { name: string } }>("/v1/projections/:name/rebuild", {
    config: { policy: "projection.rebuild" },
    schema: {
      tags: ["projections"],
      summary: "Rebuild a projection beside the served copy on every running instance (operator: it replaces the read model of every tenant). Server-sent events: `ready`, `progress` ({done, total, eventsPerSecond, etaSeconds, phase} of the slowest instance, and `instances`: [{instance, state, done, total, phase}]), then `done` once every instance swapped its copy ({projection, generation, events, durationMs, copies, instances: [{instance, generation, events, durationMs}]}) or `error` ({code, message, instance, instances: [{instance, swapped, code}]}: an instance refused, failed or fell silent). When no instance accepts, the refusal comes before the stream: 404 unknown projection, 409 FLEX_REBUILD_IN_PROGRESS, 503 FLEX_REBUILD_ENGINE_UNANSWERED (the instances listed as running did not answer); 503 FLEX_ENGINE_UNREACHABLE when no engine is listed (membership keys in flex_leases)",
      params: nameParams,
    },
  }, async (req, reply) => {
    const principal = req.principal!;
    const name = checkToken("projection", req.params.name);
    const ac = new AbortController();
    // Progress that arrives before the feed opens (a small store) is kept and sent first.
    const early: DeploymentRebuildProgress[] = [];
    let onProgress = (p: DeploymentRebuildProgress): void => void early.push(p);
    const accepted = await startRebuild(nc, [name], { onProgress: (p) => onProgress(p), signal: ac.signal });
    if (!accepted) throw new EngineUnreachableError(REBUILD_SUBJECT);
    req.log.info({ tenant: principal.tenant, subject: principal.subject, projection: name, instances: accepted.instances }, "projection rebuild started by an operator");
    const feed = feeds.open(req, reply, principal, revocations, { projection: name });
    // A client that leaves stops listening; the rebuild itself goes on in the engines and each swaps when done.
    feed.onEnd(() => ac.abort());
    // Overall = the slowest instance's progress, so 100% means every copy has caught up.
    const progress = ({ overall: p, instances }: DeploymentRebuildProgress): void => feed.send("progress", {
      done: p.done, total: p.total, eventsPerSecond: p.eventsPerSecond, etaSeconds: p.etaSeconds ?? null, phase: p.phase,
      instances: instances.map((i) => ({ instance: i.instance, state: i.state, done: i.progress?.done ?? 0, total: i.progress?.total ?? null, phase: i.progress?.phase ?? null })),
    });
    for (const p of early) progress(p);
    onProgress = progress;
    try {
      const { instances } = await accepted.done;
      const copies = instances.map(({ instance, result }) => ({ instance, generation: result.projections.find((p) => p.name === name)?.generation ?? null, events: result.events, durationMs: result.durationMs, eventsPerSecond: result.eventsPerSecond }));
      feed.send("done", {
        projection: name,
        // Each instance numbers its own copies; the figures below are the slowest's.
        generation: Math.max(...copies.map((c) => c.generation ?? 0)),
        events: Math.max(...copies.map((c) => c.events)),
        durationMs: Math.max(...copies.map((c) => c.durationMs)),
        eventsPerSecond: Math.min(...copies.map((c) => c.eventsPerSecond)),
        copies: copies.length,
        instances: copies,
      });
    } catch (err) {
      if (!feed.open) return;
      feed.send("error", {
        code: err instanceof FlexError ? err.code : "FLEX_INTERNAL",
        message: err instanceof FlexError ? err.message : "The rebuild failed; see the engine's log",
        ...(err instanceof InstanceRebuildError ? { instance: err.instance, instances: err.instances.map((i) => ({ instance: i.instance, swapped: i.result !== undefined, code: i.error?.code ?? null })) } : {}),
      });
    }
    feed.end();
  });
}
