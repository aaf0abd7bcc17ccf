import type { FastifyRequest } from "fastify";
import { checkToken, isReservedCategory, RESERVED_CATEGORIES } from "../../streams/index.js";
import type { EventInput, ExpectedRevision, Reducer, StoredEvent } from "../../streams/index.js";
import { mergePatch } from "../../projections/index.js";
import { BadRequestError, CategoryReservedError, NotFoundError, UnsupportedMediaTypeError } from "../errors.js";
import type { RouteContext } from "../route-context.js";

/** Most events one `POST /v1/streams/:category/:id` may append. */
export const MAX_APPEND_EVENTS = 100;

const streamParams = {
  type: "object",
  required: ["category", "id"],
  properties: { category: { type: "string", minLength: 1, maxLength: 128 }, id: { type: "string", minLength: 1, maxLength: 128 } },
} as const;

const eventSchema = {
  type: "object",
  required: ["type"],
  properties: {
    type: { type: "string", minLength: 1, maxLength: 256 },
    data: {},
    id: { type: "string", minLength: 1, maxLength: 256, description: "Event id (Nats-Msg-Id); the Idempotency-Key header sets it too" },
    time: { type: "string", description: "RFC 3339; default now" },
    correlationId: { type: "string" },
    causationId: { type: "string" },
    schema: { type: ["string", "integer"] },
  },
} as const;

/** The fields of an event a client may set; anything else (`tenant`, `roles`, ...) is ignored. */
export function pickEvent(raw: Record<string, unknown>): EventInput {
  const e: Record<string, unknown> = { type: raw.type, data: raw.data === undefined ? null : raw.data };
  for (const k of ["id", "time", "correlationId", "causationId", "schema"] as const) if (raw[k] !== undefined) e[k] = raw[k];
  return e as unknown as EventInput;
}

/** The JSON shape of a stored event returned by the API (no subject: the tenant is implied). */
export function eventView(e: StoredEvent): Record<string, unknown> {
  return {
    id: e.id, type: e.type, data: e.data, time: e.time, correlationId: e.correlationId ?? null, causationId: e.causationId ?? null,
    schema: e.schema, seq: e.seq, revision: e.revision ?? null, storedAt: new Date(e.storedAt).toISOString(),
  };
}

function expectedRevision(req: FastifyRequest): ExpectedRevision {
  const ifMatch = req.headers["if-match"];
  const ifNoneMatch = req.headers["if-none-match"];
  if (ifMatch !== undefined && ifNoneMatch !== undefined) throw new BadRequestError("if-match", "Send If-Match or If-None-Match, not both");
  if (ifNoneMatch !== undefined) {
    if (ifNoneMatch.trim() !== "*") throw new BadRequestError("if-none-match", `If-None-Match accepts only \`*\` (the stream must not exist), got ${JSON.stringify(ifNoneMatch)}`);
    return "no_stream";
  }
  if (ifMatch === undefined) return "any";
  const v = ifMatch.trim();
  if (v === "*") return "exists";
  const m = /^(?:W\/)?"?(\d{1,15})"?$/u.exec(v);
  if (!m) throw new BadRequestError("if-match", `If-Match must be the expected revision (an integer, e.g. "3") or *, got ${JSON.stringify(ifMatch)}`);
  return Number(m[1]);
}

/** Folds an aggregate as the `generic` read model does: each event's data merged (RFC 7396) into the state. */
export const MERGE_REDUCER: Reducer<unknown> = {
  name: "gateway-merge",
  version: 1,
  initial: () => undefined,
  apply: (state, event) => mergePatch(state, event.data),
};

/** Parses `asOf`: a stream sequence (digits) or an RFC 3339 time. */
export function parseAsOf(value: string | undefined): { seq?: number; time?: number } | undefined {
  if (value === undefined) return undefined;
  if (/^\d{1,15}$/u.test(value)) return { seq: Number(value) };
  const t = Date.parse(value);
  if (Number.isNaN(t) || !/^\d{4}-\d{2}-\d{2}/u.test(value)) throw new BadRequestError("asOf", `asOf must be a stream sequence or an RFC 3339 time, got ${JSON.stringify(value)}`);
  return { time: t };
}

/** `POST` and `GET /v1/streams/:category/:id`. */
export function registerStreamRoutes(ctx: RouteContext): void {
  const { app, store, limits, metrics, timed } = ctx;

  app.post<{ Params: { category: string; id: string }; Body: unknown }>("/v1/streams/:category/:id", {
    config: { policy: "stream.append", accepts: ["application/json"] },
    bodyLimit: limits.bodyLimit,
    schema: {
      tags: ["streams"],
      summary: "Append events to one aggregate",
      description: "Body: one event, or `{ \"events\": [...] }` (at most 100). `If-Match: \"<revision>\"` appends only at that revision (`*`: the stream exists); `If-None-Match: *` only if it does not. `Idempotency-Key` becomes the event id (`<key>:<i>` for several), so a retry is stored once. 409 on a revision conflict, with the current revision. 403 `FLEX_CATEGORY_RESERVED` for the categories FlexCore writes itself (`workflow`, `plugin`, `metrics`).",
      params: streamParams,
      headers: {
        type: "object",
        properties: { "if-match": { type: "string" }, "if-none-match": { type: "string" }, "idempotency-key": { type: "string", minLength: 1, maxLength: 200 } },
      },
      body: {
        type: "object",
        description: "One event (`type` required), or `events`: an array of them",
        properties: { ...eventSchema.properties, events: { type: "array", minItems: 1, maxItems: MAX_APPEND_EVENTS, items: eventSchema } },
      },
      response: {
        201: { type: "object", properties: { revision: { type: "integer" }, seq: { type: "integer" }, duplicates: { type: "integer" } } },
        200: { type: "object", properties: { revision: { type: "integer" }, seq: { type: "integer" }, duplicates: { type: "integer" } } },
      },
    },
  }, async (req, reply) => {
    const tenant = req.principal!.tenant;
    const { category, id } = req.params;
    checkToken("category", category);
    checkToken("id", id);
    if (isReservedCategory(category)) throw new CategoryReservedError(category, RESERVED_CATEGORIES);
    const body = req.body;
    if (typeof body === "string") throw new UnsupportedMediaTypeError(req.headers["content-type"], ["application/json"]);
    if (body === null || typeof body !== "object" || Array.isArray(body)) throw new BadRequestError("body", "The body must be one event object or { \"events\": [...] }");
    const rawEvents = Object.hasOwn(body, "events") ? (body as { events: unknown }).events : [body];
    if (!Array.isArray(rawEvents) || rawEvents.length === 0 || rawEvents.length > MAX_APPEND_EVENTS) {
      throw new BadRequestError("events", `\`events\` must be an array of 1 to ${MAX_APPEND_EVENTS} events`);
    }
    const key = req.headers["idempotency-key"];
    if (key !== undefined && (typeof key !== "string" || key.length === 0 || key.length > 200 || /[\r\n\0]/u.test(key))) {
      throw new BadRequestError("idempotency-key", "Idempotency-Key must be 1 to 200 characters without line breaks");
    }
    const events = rawEvents.map((raw: unknown, i: number) => {
      if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new BadRequestError(`events[${i}]`, `events[${i}] must be an object with \`type\` and \`data\``);
      const e = pickEvent(raw as Record<string, unknown>);
      if (key === undefined) return e;
      const derived = rawEvents.length === 1 ? key : `${key}:${i}`;
      if (e.id !== undefined && e.id !== derived) throw new BadRequestError(`events[${i}].id`, `events[${i}].id ${JSON.stringify(e.id)} differs from the Idempotency-Key ${JSON.stringify(derived)}`);
      return { ...e, id: derived };
    });
    const expected = expectedRevision(req);
    const result = await timed((signal) => store.append({ tenant, category, id }, events, { expectedRevision: expected, signal }));
    metrics.ingestedEvents.inc({ route: "append", result: "stored" }, events.length - result.duplicates);
    if (result.duplicates) metrics.ingestedEvents.inc({ route: "append", result: "duplicate" }, result.duplicates);
    void reply.header("etag", `"${result.revision}"`).header("location", `/v1/streams/${encodeURIComponent(category)}/${encodeURIComponent(id)}`);
    return reply.code(result.duplicates === events.length ? 200 : 201).send(result);
  });

  app.get<{ Params: { category: string; id: string }; Querystring: { from?: number; limit?: number; asOf?: string; direction?: "forward" | "backward"; view?: "events" | "state" } }>("/v1/streams/:category/:id", {
    config: { policy: "stream.read" },
    schema: {
      tags: ["streams"],
      summary: "Read one aggregate's events, optionally as of a stream sequence or time",
      params: streamParams,
      querystring: {
        type: "object",
        additionalProperties: false,
        properties: {
          from: { type: "integer", minimum: 1, description: "First revision (forward) or the one to start from (backward)" },
          limit: { type: "integer", minimum: 1, description: `Events per page; at most the gateway's max page size` },
          asOf: { type: "string", description: "Only events up to this stream sequence (digits) or stored time (RFC 3339): the aggregate as it was then" },
          direction: { type: "string", enum: ["forward", "backward"] },
          view: { type: "string", enum: ["events", "state"], description: "`state`: the aggregate's state (RFC 7396 merge of its events' data, as the `generic` read model folds it) instead of its events; with asOf, the state as it was then" },
        },
      },
    },
  }, async (req) => {
    const tenant = req.principal!.tenant;
    const { category, id } = req.params;
    checkToken("category", category);
    checkToken("id", id);
    const q = req.query;
    if (q.limit !== undefined && q.limit > limits.maxPageSize) throw new BadRequestError("limit", `limit must be at most ${limits.maxPageSize}, got ${q.limit}`, { max: limits.maxPageSize });
    const limit = q.limit ?? limits.defaultPageSize;
    const asOf = parseAsOf(q.asOf);
    const ref = { tenant, category, id };
    if (q.view === "state") {
      if (q.from !== undefined || q.limit !== undefined || q.direction !== undefined) throw new BadRequestError("view", "view=state takes asOf only (not from, limit or direction)");
      const at = asOf ? (asOf.seq !== undefined ? asOf.seq : new Date(asOf.time!)) : undefined;
      const folded = await timed((signal) => store.aggregate(ref, MERGE_REDUCER, { ...(at !== undefined ? { asOf: at } : {}), signal }));
      if (folded.revision === 0) throw new NotFoundError(`Stream ${category}/${id}${asOf ? " at that point" : ""}`);
      return { category, id, state: folded.state ?? null, revision: folded.revision, seq: folded.seq };
    }
    const direction = q.direction ?? "forward";
    const events = await timed(async (signal) => {
      if (asOf && direction === "backward") {
        throw new BadRequestError("direction", "asOf reads forward only");
      }
      const read = await store.read(ref, { ...(q.from !== undefined ? { from: q.from } : {}), limit, direction, signal });
      if (!asOf) return read;
      return read.filter((e) => (asOf.seq !== undefined ? e.seq <= asOf.seq : e.storedAt <= asOf.time!));
    });
    if (events.length === 0) {
      const head = await store.head(ref);
      if (head.revision === 0) throw new NotFoundError(`Stream ${category}/${id}`);
    }
    const last = events[events.length - 1];
    const more = events.length === limit && last?.revision !== undefined;
    const next = more ? (direction === "forward" ? last!.revision! + 1 : last!.revision! - 1) : null;
    return { category, id, events: events.map(eventView), next: next !== null && next >= 1 ? next : null };
  });
}
