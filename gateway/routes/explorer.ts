/**
 * The event explorer's routes: `GET /v1/events` (the caller's tenant's events by category,
 * aggregate id, type and stored time, paged) and `GET /v1/events/live` (the same filter as
 * server-sent events). The subject is always built here as `evt.<token tenant>.<category|*>.<id|*>`
 * from single checked tokens, so no query can name a raw subject, a wildcard or another tenant.
 */
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import type { StoredMsg } from "@nats-io/jetstream";
import { checkToken, decodeEvent, eventFromJsMsg, STREAMS, SUBJECT_ROOTS } from "../../streams/index.js";
import type { StoredEvent } from "../../streams/index.js";
import { BadRequestError, LiveFeedLimitError } from "../errors.js";
import type { RouteContext } from "../route-context.js";
import { sseFeeds } from "../sse.js";
import { eventView } from "./streams.js";

/** Messages one `GET /v1/events` reads at most before it answers (with `next` to go on): a rare `type` in a big range costs each request no more than this. */
export const MAX_EXPLORER_SCAN = 10_000;
/** Messages per batch direct get of the explorer. */
const DIRECT_BATCH = 1_024;
/** Open `GET /v1/events/live` feeds per tenant and gateway instance (each is a JetStream consumer). */
export const MAX_LIVE_TAILS_PER_TENANT = 16;

interface ExplorerQuerystring {
  category?: string;
  id?: string;
  type?: string;
  since?: string;
  until?: string;
  limit?: number;
  cursor?: string;
}

const filterProperties = {
  category: { type: "string", minLength: 1, maxLength: 128, description: "Only this category (one subject token: no `.`, `*` or `>`)" },
  id: { type: "string", minLength: 1, maxLength: 128, description: "Only this aggregate id (one subject token)" },
  type: { type: "string", minLength: 1, maxLength: 256, description: "Only events of this type (`Flex-Type`)" },
} as const;

/** Parses an RFC 3339 time parameter; the field is named in the error. */
export function parseTime(field: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const t = Date.parse(value);
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}/u.test(value) || Number.isNaN(t)) throw new BadRequestError(field, `${field} must be an RFC 3339 time such as 2026-01-31T12:00:00Z, got ${JSON.stringify(value.slice(0, 80))}`);
  return t;
}

/** The subject filter of a query: `evt.<tenant>.<category|*>.<id|*>`, each part a checked token. */
export function explorerSubject(tenant: string, category: string | undefined, id: string | undefined): string {
  return `${SUBJECT_ROOTS.events}.${checkToken("tenant", tenant)}.${category === undefined ? "*" : checkToken("category", category)}.${id === undefined ? "*" : checkToken("id", id)}`;
}

/** An event as the explorer shows it: its aggregate (category, id) and the stored event. */
function explorerView(e: StoredEvent): Record<string, unknown> {
  const [, , category, stream] = e.subject.split(".");
  return { category, stream, ...eventView(e) };
}

export function registerExplorerRoutes(ctx: RouteContext): void {
  const { app, nc, jsm, limits, timed, revocations } = ctx;
  const feeds = sseFeeds(app);
  const js = jetstream(nc);

  app.get<{ Querystring: ExplorerQuerystring }>("/v1/events", {
    config: { policy: "stream.read" },
    schema: {
      tags: ["streams"],
      summary: "Browse your tenant's events by category, aggregate id, type and stored time, oldest first, paged",
      description:
        `Reads FLEX_EVENTS on \`evt.<your tenant>.<category or *>.<id or *>\`. \`since\`/\`until\` bound the stored time (RFC 3339, inclusive). ` +
        `A page holds up to \`limit\` events; \`next\` (pass it back as \`cursor\` with the same filter) is null at the end of the range. ` +
        `One request reads at most ${MAX_EXPLORER_SCAN} messages, so a rare \`type\` over a long range may answer fewer events than \`limit\` (even none) with a \`next\` to go on; \`scannedTo\` says how far it read.`,
      querystring: {
        type: "object",
        additionalProperties: false,
        properties: {
          ...filterProperties,
          since: { type: "string", maxLength: 64, description: "Events stored at or after this time (RFC 3339)" },
          until: { type: "string", maxLength: 64, description: "Events stored at or before this time (RFC 3339)" },
          limit: { type: "integer", minimum: 1 },
          cursor: { type: "string", maxLength: 20, description: "`next` of the previous page" },
        },
      },
    },
  }, async (req) => {
    const tenant = req.principal!.tenant;
    const q = req.query;
    const filter = explorerSubject(tenant, q.category, q.id);
    if (q.limit !== undefined && q.limit > limits.maxPageSize) throw new BadRequestError("limit", `limit must be at most ${limits.maxPageSize}, got ${q.limit}`, { max: limits.maxPageSize });
    const limit = q.limit ?? limits.defaultPageSize;
    const since = parseTime("since", q.since);
    const until = parseTime("until", q.until);
    if (since !== undefined && until !== undefined && until < since) throw new BadRequestError("until", `until (${q.until}) is before since (${q.since})`);
    let from: number | undefined;
    if (q.cursor !== undefined) {
      if (!/^[1-9]\d{0,15}$/u.test(q.cursor)) throw new BadRequestError("cursor", `cursor must be the \`next\` of a previous page (a stream sequence), got ${JSON.stringify(q.cursor)}`);
      from = Number(q.cursor);
    }
    return timed(async (signal) => {
      const events: StoredEvent[] = [];
      let scanned = 0;
      let scannedTo: number | null = null;
      let next: number | null = null;
      // The first request starts at `since` (the server finds the sequence), the rest after the last message read.
      let start: { seq: number } | { start_time: Date } = from !== undefined ? { seq: from } : since !== undefined ? { start_time: new Date(since) } : { seq: 1 };
      for (;;) {
        signal.throwIfAborted();
        // Without a type every message read is kept: read no more than the page needs.
        const want = q.type === undefined ? Math.min(DIRECT_BATCH, limit - events.length) : DIRECT_BATCH;
        const batch = Math.max(1, Math.min(want, MAX_EXPLORER_SCAN - scanned));
        let got = 0;
        let ended = false;
        try {
          for await (const m of await jsm.direct.getBatch(STREAMS.events, { ...start, next_by_subj: filter, batch } as Parameters<typeof jsm.direct.getBatch>[1])) {
            got += 1;
            if (until !== undefined && m.time.getTime() > until) {
              ended = true;
              break;
            }
            scanned += 1;
            scannedTo = m.seq;
            const e = decode(m);
            if (q.type === undefined || e.type === q.type) events.push(e);
            if (events.length === limit) break;
          }
        } catch (err) {
          // 404: nothing (more) on the subject.
          if ((err as { code?: unknown }).code !== 404) throw err;
          ended = true;
        }
        if (ended) break;
        if (got < batch && events.length < limit) break;
        if (scannedTo !== null) next = scannedTo + 1;
        if (events.length === limit || scanned >= MAX_EXPLORER_SCAN) {
          // Whether anything is left is known only by asking; a last empty page is cheaper than asking here.
          return { events: events.map(explorerView), next: String(next), scannedTo, filter: { category: q.category ?? null, id: q.id ?? null, type: q.type ?? null } };
        }
        start = { seq: next! };
      }
      return { events: events.map(explorerView), next: null, scannedTo, filter: { category: q.category ?? null, id: q.id ?? null, type: q.type ?? null } };
    });
  });

  app.get<{ Querystring: Pick<ExplorerQuerystring, "category" | "id" | "type"> }>("/v1/events/live", {
    config: { policy: "stream.read" },
    schema: {
      tags: ["streams"],
      summary: "Server-sent events: your tenant's new events as they are stored (`event: event`, `id:` its stream sequence), by category, aggregate id and type",
      description: `Each event is sent once JetStream has stored it (read through an ordered consumer, not the raw subject, so a refused append never shows). A reconnect with \`Last-Event-ID\` resumes after that sequence. The feed ends (\`event: end\` with the reason) when the token expires or is revoked, or the gateway shuts down. At most ${MAX_LIVE_TAILS_PER_TENANT} open feeds per tenant and gateway instance (429 \`FLEX_LIVE_FEEDS_EXHAUSTED\`).`,
      querystring: { type: "object", additionalProperties: false, properties: filterProperties },
    },
  }, async (req, reply) => {
    const principal = req.principal!;
    const q = req.query;
    const filter = explorerSubject(principal.tenant, q.category, q.id);
    const last = req.headers["last-event-id"];
    let after: number | undefined;
    if (last !== undefined) {
      if (typeof last !== "string" || !/^\d{1,16}$/u.test(last)) throw new BadRequestError("last-event-id", `Last-Event-ID must be the id of an event of this feed (a stream sequence), got ${JSON.stringify(last)}`);
      after = Number(last);
    }
    if (feeds.count(principal.tenant) >= MAX_LIVE_TAILS_PER_TENANT) throw new LiveFeedLimitError(MAX_LIVE_TAILS_PER_TENANT);
    // Created before the reply is hijacked, so a broker failure is still a coded error.
    const consumer = await js.consumers.get(STREAMS.events, {
      filter_subjects: filter,
      ...(after !== undefined ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: after + 1 } : { deliver_policy: DeliverPolicy.New }),
    });
    const messages = await consumer.consume({ max_messages: 256 });
    const feed = feeds.open(req, reply, principal, revocations, { filter: { category: q.category ?? null, id: q.id ?? null, type: q.type ?? null } });
    feed.onEnd(() => void messages.close().catch(() => undefined));
    void (async () => {
      try {
        for await (const m of messages) {
          if (!feed.open) break;
          const e = eventFromJsMsg(m);
          if (q.type !== undefined && e.type !== q.type) continue;
          feed.send("event", explorerView(e), e.seq);
        }
      } catch (err) {
        req.log.warn({ err }, "live event feed failed");
      }
      feed.end("feed stopped");
    })();
  });
}

function decode(m: StoredMsg): StoredEvent {
  return decodeEvent({ subject: m.subject, seq: m.seq, headers: m.header, data: m.data, storedAt: m.time.getTime() });
}
