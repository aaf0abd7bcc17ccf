import { encodeEvent, eventSubject, FlexError, isReservedCategory, RESERVED_CATEGORIES } from "../../streams/index.js";
import type { OutgoingMessage } from "../../streams/index.js";
import { BadRequestError, CategoryReservedError, InvalidJsonError } from "../errors.js";
import type { RouteContext } from "../route-context.js";
import { pickEvent } from "./streams.js";

/** Media types `POST /v1/events` accepts. */
export const BATCH_MEDIA_TYPES = ["application/json", "application/x-ndjson", "application/ndjson"] as const;

/** The result of one event of a batch, in request order. */
export type BatchResult =
  | { readonly index: number; readonly id: string; readonly seq: number; readonly duplicate: boolean }
  | { readonly index: number; readonly id: string; readonly seq: number; readonly batched: true }
  | { readonly index: number; readonly id: string | null; readonly error: { readonly code: string; readonly message: string } };

/** Parses NDJSON: one JSON value per line; blank lines are skipped. */
export function parseNdjson(text: string): unknown[] {
  const out: unknown[] = [];
  let start = 0;
  let line = 0;
  while (start <= text.length) {
    let end = text.indexOf("\n", start);
    if (end === -1) end = text.length;
    line += 1;
    const chunk = text.slice(start, end).trim();
    if (chunk.length > 0) {
      try {
        out.push(JSON.parse(chunk));
      } catch (err) {
        throw new InvalidJsonError(`line ${line}: ${(err as Error).message}`, { line });
      }
    }
    start = end + 1;
  }
  return out;
}

function errorOf(err: unknown): { code: string; message: string } {
  if (err instanceof FlexError) return { code: err.code, message: err.message };
  return { code: "FLEX_INTERNAL", message: "Internal error; see the gateway log" };
}

/** `POST /v1/events`: batch ingest through the pipelined publisher. */
export function registerEventRoutes(ctx: RouteContext): void {
  const { app, publisher, limits, metrics, deadline } = ctx;

  app.post<{ Body: unknown }>("/v1/events", {
    config: { policy: "events.ingest", accepts: BATCH_MEDIA_TYPES },
    bodyLimit: limits.batchBodyLimit,
    schema: {
      tags: ["streams"],
      summary: "Batch ingest: many events for many aggregates, each acknowledged by JetStream",
      description:
        "Body: a JSON array, `{ \"events\": [...] }`, or NDJSON (`application/x-ndjson`, one event per line). " +
        "Each event: `category`, `stream` (the aggregate id), `type`, `data`, and optionally `id` (event id: a retry with the same id is stored once), `time`, `correlationId`, `causationId`, `schema`. " +
        "No optimistic concurrency (use `POST /v1/streams/:category/:id` for that). Events for the categories FlexCore writes itself (`workflow`, `plugin`, `metrics`) are rejected with `FLEX_CATEGORY_RESERVED`. The answer lists a result per event, in order: `seq` and `duplicate`, or an `error` with a code; an invalid event does not stop the others. With fast-ingest batching on (`ingestBatching`), a stored event has `batched: true` and `seq` is its batch's last sequence (it is stored at or before it); whether it was a duplicate is not known.",
      response: {
        200: {
          type: "object",
          properties: {
            accepted: { type: "integer" },
            duplicates: { type: "integer" },
            rejected: { type: "integer" },
            // Exact item shape, so fast-json-stringify writes the (up to 10,000) results without JSON.stringify.
            results: {
              type: "array",
              items: {
                type: "object",
                additionalProperties: false,
                properties: {
                  index: { type: "integer" },
                  id: { type: ["string", "null"] },
                  seq: { type: "integer" },
                  duplicate: { type: "boolean" },
                  batched: { type: "boolean" },
                  error: { type: "object", additionalProperties: false, properties: { code: { type: "string" }, message: { type: "string" } } },
                },
              },
            },
          },
        },
      },
    },
  }, async (req) => {
    const tenant = req.principal!.tenant;
    const body = req.body;
    let items: unknown[];
    if (typeof body === "string") items = parseNdjson(body);
    else if (Array.isArray(body)) items = body;
    else if (body !== null && typeof body === "object" && Array.isArray((body as { events?: unknown }).events)) items = (body as { events: unknown[] }).events;
    else throw new BadRequestError("body", "The body must be a JSON array of events, { \"events\": [...] }, or NDJSON");
    if (items.length === 0) throw new BadRequestError("events", "The batch is empty");
    if (items.length > limits.maxBatchEvents) throw new BadRequestError("events", `A batch holds at most ${limits.maxBatchEvents} events, got ${items.length}`, { max: limits.maxBatchEvents });

    const results: BatchResult[] = new Array<BatchResult>(items.length);
    // The valid events, published as one batch: their indexes in the request and ids.
    const messages: OutgoingMessage[] = [];
    const indexes: number[] = [];
    const ids: string[] = [];
    let accepted = 0;
    let duplicates = 0;
    let rejected = 0;
    // Batches usually repeat aggregates: check each category/stream pair once.
    const subjects = new Map<string, string>();
    for (let i = 0; i < items.length; i++) {
      const raw = items[i];
      try {
        if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new BadRequestError(`events[${i}]`, `events[${i}] must be an object with category, stream, type and data`);
        const r = raw as Record<string, unknown>;
        const pair = typeof r.category === "string" && typeof r.stream === "string" ? `${r.category}\u0000${r.stream}` : undefined;
        let subject = pair === undefined ? undefined : subjects.get(pair);
        if (subject === undefined) {
          subject = eventSubject(tenant, r.category as string, r.stream as string);
          if (isReservedCategory(r.category as string)) throw new CategoryReservedError(r.category as string, RESERVED_CATEGORIES);
          if (pair !== undefined) subjects.set(pair, subject);
        }
        const encoded = encodeEvent(pickEvent(r), `events[${i}].`);
        messages.push({ subject, data: encoded.data, headers: encoded.headers });
        indexes.push(i);
        ids.push(encoded.id);
      } catch (err) {
        const id = raw !== null && typeof raw === "object" && typeof (raw as { id?: unknown }).id === "string" ? (raw as { id: string }).id : null;
        results[i] = { index: i, id, error: errorOf(err) };
        rejected += 1;
      }
    }
    const outcomes = await deadline(publisher.publishAll(messages));
    for (let k = 0; k < outcomes.length; k++) {
      const index = indexes[k]!;
      const outcome = outcomes[k]!;
      if (outcome instanceof Error) {
        results[index] = { index, id: ids[k]!, error: errorOf(outcome) };
        rejected += 1;
      } else {
        if (outcome.batched) results[index] = { index, id: ids[k]!, seq: outcome.seq, batched: true };
        else results[index] = { index, id: ids[k]!, seq: outcome.seq, duplicate: outcome.duplicate };
        if (outcome.duplicate) duplicates += 1;
        else accepted += 1;
      }
    }
    if (accepted) metrics.ingestedEvents.inc({ route: "batch", result: "stored" }, accepted);
    if (duplicates) metrics.ingestedEvents.inc({ route: "batch", result: "duplicate" }, duplicates);
    if (rejected) metrics.ingestedEvents.inc({ route: "batch", result: "rejected" }, rejected);
    return { accepted, duplicates, rejected, results };
  });
}
