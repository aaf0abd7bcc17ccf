import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import { checkToken, decodeEvent, derivedSubject, STREAMS, SUBJECT_ROOTS } from "../../streams/index.js";
import type { StoredEvent } from "../../streams/index.js";
import { BadRequestError } from "../errors.js";
import type { RouteContext } from "../route-context.js";

interface DerivedQuerystring {
  key?: string;
  limit?: number;
}

function outputView(e: StoredEvent): Record<string, unknown> {
  const key = e.subject.split(".").slice(3).join(".");
  return { key, id: e.id, type: e.type, data: e.data, time: e.time, seq: e.seq, causationId: e.causationId ?? null, storedAt: new Date(e.storedAt).toISOString() };
}

/**
 * `GET /v1/derived/:processor`: recent outputs of a processor for the caller's tenant,
 * read from FLEX_DERIVED (`drv.<tenant>.<processor>.<key>`): the latest output of each key,
 * or the latest outputs of one `key`.
 */
export function registerDerivedRoutes(ctx: RouteContext): void {
  const { app, nc, jsm, limits, timed } = ctx;
  const js = jetstream(nc);

  app.get<{ Params: { processor: string }; Querystring: DerivedQuerystring }>("/v1/derived/:processor", {
    config: { policy: "derived.read" },
    schema: {
      tags: ["derived"],
      summary: "Recent outputs of a processor: the latest per key, or the latest `limit` of one `key`",
      params: { type: "object", required: ["processor"], properties: { processor: { type: "string", minLength: 1, maxLength: 128 } } },
      querystring: {
        type: "object",
        additionalProperties: false,
        properties: { key: { type: "string", minLength: 1, maxLength: 128 }, limit: { type: "integer", minimum: 1 } },
      },
    },
  }, async (req) => {
    const tenant = req.principal!.tenant;
    const processor = checkToken("processor", req.params.processor);
    const q = req.query;
    if (q.limit !== undefined && q.limit > limits.maxPageSize) throw new BadRequestError("limit", `limit must be at most ${limits.maxPageSize}, got ${q.limit}`, { max: limits.maxPageSize });
    const limit = q.limit ?? limits.defaultPageSize;
    const filter = q.key !== undefined ? derivedSubject(tenant, processor, q.key) : `${SUBJECT_ROOTS.derived}.${checkToken("tenant", tenant)}.${processor}.*`;
    const outputs = await timed(async (signal) => {
      const last = await jsm.streams.getMessage(STREAMS.derived, { last_by_subj: filter }).catch(() => null);
      if (!last) return [];
      const consumer = await js.consumers.get(STREAMS.derived, {
        filter_subjects: filter,
        deliver_policy: q.key !== undefined ? DeliverPolicy.All : DeliverPolicy.LastPerSubject,
      });
      const kept: StoredEvent[] = [];
      const messages = await consumer.consume({ max_messages: Math.min(1_000, limit * 2) });
      const stop = (): void => void messages.stop();
      signal.addEventListener("abort", stop, { once: true });
      try {
        for await (const m of messages) {
          kept.push(decodeEvent({ subject: m.subject, seq: m.seq, headers: m.headers, data: m.data, storedAt: Math.floor(m.info.timestampNanos / 1e6) }));
          // One key's history: keep the newest `limit`. Latest per key: the first `limit` keys.
          if (q.key !== undefined && kept.length > limit) kept.shift();
          if (q.key === undefined && kept.length >= limit) break;
          if (m.seq >= last.seq || m.info.pending === 0) break;
        }
      } finally {
        signal.removeEventListener("abort", stop);
        await messages.close().catch(() => undefined);
      }
      return kept;
    });
    const newestFirst = outputs.sort((a, b) => b.seq - a.seq);
    return { processor, outputs: newestFirst.map(outputView) };
  });
}
