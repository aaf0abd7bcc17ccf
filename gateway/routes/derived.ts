import type { StoredMsg } from "@nats-io/jetstream";
import { checkToken, decodeEvent, derivedSubject, STREAMS, SUBJECT_ROOTS } from "../../streams/index.js";
import type { StoredEvent } from "../../streams/index.js";
import { BadRequestError } from "../errors.js";
import type { RouteContext } from "../route-context.js";

/** Messages per batch direct get of one key's outputs. */
const DIRECT_BATCH = 1_024;

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
  const { app, jsm, limits, timed } = ctx;

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
    // Batch direct gets (any replica answers; no consumer to create, which took seconds on a
    // loaded cluster): the last output of every key at once, or one key's outputs in batches.
    const outputs = await timed(async (signal) => {
      const kept: StoredEvent[] = [];
      const keep = (m: StoredMsg): void => {
        kept.push(decodeEvent({ subject: m.subject, seq: m.seq, headers: m.header, data: m.data, storedAt: m.time.getTime() }));
      };
      const drain = async (batch: AsyncIterable<StoredMsg>): Promise<{ n: number; last: number }> => {
        let n = 0;
        let last = 0;
        try {
          for await (const m of batch) {
            n += 1;
            last = m.seq;
            keep(m);
            if (q.key !== undefined && kept.length > limit) kept.shift();
          }
        } catch (err) {
          // 404: nothing (more) on the subject.
          if ((err as { code?: unknown }).code !== 404) throw err;
        }
        return { n, last };
      };
      if (q.key === undefined) {
        await drain(await jsm.direct.getLastMessagesFor(STREAMS.derived, { multi_last: [filter], batch: limit }));
        return kept;
      }
      for (let from = 1; !signal.aborted; ) {
        const { n, last } = await drain(await jsm.direct.getBatch(STREAMS.derived, { seq: from, next_by_subj: filter, batch: DIRECT_BATCH }));
        if (n < DIRECT_BATCH) break;
        from = last + 1;
      }
      return kept;
    });
    const newestFirst = outputs.sort((a, b) => b.seq - a.seq);
    return { processor, outputs: newestFirst.map(outputView) };
  });
}
