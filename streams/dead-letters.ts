import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamClient, JetStreamManager, StoredMsg } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import type { MsgHdrs, NatsConnection } from "@nats-io/transport-node";
import type { DeadLetter, DeadLetterCount, DeadLetterPage, PurgeReport, RedriveReport } from "./api-types.js";
import { DeadLetterNotFoundError, InvalidOptionError, PurgeNotConfirmedError, RedriveUnsupportedError } from "./errors.js";
import { HEADERS } from "./event.js";
import { checkToken, dlqSubject, parseSubject, reapplySubject, redriveSubject, SUBJECT_ROOTS } from "./subjects.js";
import { STREAMS } from "./topology.js";

/**
 * Headers of a redriven dead letter on `redrive.<tenant>.<source>` (stream `FLEX_REDRIVE`).
 * The body is the original event's JSON data; the original `Flex-Type`, `Flex-Time`,
 * `Flex-Schema` and `Content-Type` are copied. `Nats-Msg-Id` is `redrive:<tenant>:<source>:<dlq seq>`.
 */
export const REDRIVE_HEADERS = {
  /** Sequence in `FLEX_DLQ` of the dead letter this redrive came from. */
  dlqSeq: "Flex-Redrive-Dlq-Seq",
  /** The event's original subject (`evt.<tenant>.<category>.<id>`). */
  subject: "Flex-Redrive-Subject",
  /** The event's sequence in its original stream. */
  seq: "Flex-Redrive-Seq",
  /** JSON array of every reason the event failed so far, oldest first. */
  reasons: "Flex-Redrive-Reasons",
  /** Projections only: the stream the event was read from (`FLEX_EVENTS` or `FLEX_DERIVED`). */
  stream: "Flex-Redrive-Stream",
} as const;

/** What a redrive (or reapply) message's headers say; numbers are NaN and strings empty when missing. */
export interface RedriveInfo {
  readonly subject: string;
  readonly seq: number;
  readonly dlqSeq: number;
  /** Every earlier failure, oldest first (malformed JSON reads as none). */
  readonly reasons: string[];
  /** Projections only: the stream the event was read from. */
  readonly stream: string;
}

/** Reads {@link REDRIVE_HEADERS} from a redrive message's headers (the processor's, the projection's and the trigger's readers). */
export function readRedriveHeaders(h: { get(name: string): string } | undefined): RedriveInfo {
  let reasons: string[] = [];
  try {
    const r = JSON.parse(h?.get(REDRIVE_HEADERS.reasons) || "[]") as unknown;
    if (Array.isArray(r)) reasons = r.filter((x): x is string => typeof x === "string");
  } catch {
    reasons = [];
  }
  return {
    subject: h?.get(REDRIVE_HEADERS.subject) ?? "",
    seq: Number(h?.get(REDRIVE_HEADERS.seq)),
    dlqSeq: Number(h?.get(REDRIVE_HEADERS.dlqSeq)),
    reasons,
    stream: h?.get(REDRIVE_HEADERS.stream) ?? "",
  };
}

/** Headers a dead letter carries besides the event headers (`Nats-Msg-Id`, `Flex-Type`, ...). */
export const DLQ_HEADERS = {
  /** Sequence of the failed message in its own stream. */
  sourceSeq: "Flex-Source-Seq",
  /** Subject of the failed message. */
  sourceSubject: "Flex-Source-Subject",
  /** The reason, on one line, at most {@link MAX_DLQ_ERROR_HEADER} characters (the body has it whole). */
  error: "Flex-Error",
} as const;

/** Longest reason kept in the `Flex-Error` header. */
export const MAX_DLQ_ERROR_HEADER = 1_024;

/** What {@link deadLetterHeaders} needs. */
export interface DeadLetterHeaderInput {
  /** The dead letter's own event id (deterministic, so a repeated dead-lettering is stored once). */
  readonly id: string;
  /** Its event type, e.g. `ProcessingFailed`. */
  readonly type: string;
  /** Id of the event that failed, when known. */
  readonly causationId?: string | undefined;
  readonly sourceSeq: number;
  readonly sourceSubject: string;
  readonly reason: string;
}

/**
 * The headers of a dead letter on `dlq.<tenant>.<source>`, as every component that
 * dead-letters writes them and {@link readDeadLetter} reads them back.
 */
export function deadLetterHeaders(input: DeadLetterHeaderInput): MsgHdrs {
  const h = natsHeaders();
  h.set(HEADERS.msgId, input.id);
  h.set(HEADERS.type, input.type);
  h.set(HEADERS.time, new Date().toISOString());
  if (input.causationId) h.set(HEADERS.causationId, input.causationId);
  h.set(HEADERS.schema, "1");
  h.set(HEADERS.contentType, "application/json");
  h.set(DLQ_HEADERS.sourceSeq, String(input.sourceSeq));
  h.set(DLQ_HEADERS.sourceSubject, input.sourceSubject);
  h.set(DLQ_HEADERS.error, input.reason.replace(/[\r\n]+/g, " ").slice(0, MAX_DLQ_ERROR_HEADER));
  return h;
}

/** Dead letters read per call by default. */
export const DEFAULT_DLQ_PAGE = 100;
/** Most dead letters one call reads, redrives or purges; the answer says when more are left. */
export const MAX_DLQ_BATCH = 10_000;
/** Longest `reason` filter, in characters. */
export const MAX_REASON_FILTER = 256;
// Reasons carried on a redrive header: the newest ones within this many characters.
const MAX_REASONS_HEADER = 4_096;
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/u;

/**
 * Which dead letters of a tenant: one by `seq`, or those of a `source`, optionally stored
 * within [`since`, `until`] and whose reason contains `reason` (case-insensitive).
 */
export interface DeadLetterFilter {
  readonly seq?: number | string;
  readonly source?: string;
  /** RFC 3339 time or Date. */
  readonly since?: string | Date;
  readonly until?: string | Date;
  readonly reason?: string;
  /** Most dead letters returned by `find`. @default 100 */
  readonly limit?: number | string;
}

/** Reading, redriving and purging dead letters, always inside one tenant (`dlq.<tenant>.>`). */
export interface DeadLetters {
  /** Dead letters per source of `tenant`, or of every tenant when it is undefined (operators). */
  list(tenant: string | undefined, signal?: AbortSignal): Promise<DeadLetterCount[]>;
  /** @throws DeadLetterNotFoundError when `seq` is not a dead letter of `tenant` */
  show(tenant: string, seq: number | string): Promise<DeadLetter>;
  /** Dead letters matching `filter`, oldest first. */
  find(tenant: string, filter: DeadLetterFilter, signal?: AbortSignal): Promise<DeadLetterPage>;
  /**
   * Sends the selected dead letters back to the component that failed them
   * (`redrive.<tenant>.<source>`) and removes them from `FLEX_DLQ`. Needs `seq` or `source`.
   * @throws RedriveUnsupportedError for a dead letter FlexCore did not write, or whose original subject is not of `tenant`
   */
  redrive(tenant: string, filter: DeadLetterFilter, signal?: AbortSignal): Promise<RedriveReport>;
  /** Deletes the selected dead letters; needs `seq` or `source`, and `confirm === true`. */
  purge(tenant: string, filter: DeadLetterFilter, confirm: boolean, signal?: AbortSignal): Promise<PurgeReport>;
}

interface Selection {
  readonly seq: number | undefined;
  readonly source: string | undefined;
  readonly since: number | undefined;
  readonly until: number | undefined;
  readonly reason: string | undefined;
  readonly limit: number;
}

function checkTime(field: string, v: unknown): number | undefined {
  if (v === undefined) return undefined;
  if (v instanceof Date && !Number.isNaN(v.getTime())) return v.getTime();
  if (typeof v === "string" && RFC3339.test(v) && !Number.isNaN(Date.parse(v))) return Date.parse(v);
  throw new InvalidOptionError(field, v, "an RFC 3339 time such as 2026-01-01T00:00:00Z");
}

function checkSeq(v: unknown): number {
  const n = typeof v === "string" && /^\d{1,15}$/u.test(v) ? Number(v) : v;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 1) throw new InvalidOptionError("seq", v, "a dead letter's sequence: an integer from 1 up");
  return n;
}

/** Checks a filter as a user gave it (strings from a query string or the command line). */
export function checkDeadLetterFilter(filter: DeadLetterFilter, maxLimit = MAX_DLQ_BATCH): Selection {
  const known = new Set(["seq", "source", "since", "until", "reason", "limit"]);
  for (const k of Object.keys(filter)) if (!known.has(k)) throw new InvalidOptionError(k, (filter as Record<string, unknown>)[k], `absent (known filters: ${[...known].join(", ")})`);
  const seq = filter.seq === undefined ? undefined : checkSeq(filter.seq);
  const source = filter.source === undefined ? undefined : checkToken("source", filter.source);
  const since = checkTime("since", filter.since);
  const until = checkTime("until", filter.until);
  if (since !== undefined && until !== undefined && until < since) throw new InvalidOptionError("until", filter.until, `a time not before since (${new Date(since).toISOString()})`);
  const reason = filter.reason;
  if (reason !== undefined && (typeof reason !== "string" || reason.length === 0 || reason.length > MAX_REASON_FILTER)) {
    throw new InvalidOptionError("reason", reason, `a non-empty text of at most ${MAX_REASON_FILTER} characters`);
  }
  let limit = DEFAULT_DLQ_PAGE;
  if (filter.limit !== undefined) {
    const n = typeof filter.limit === "string" && /^\d{1,6}$/u.test(filter.limit) ? Number(filter.limit) : filter.limit;
    if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 1 || n > maxLimit) throw new InvalidOptionError("limit", filter.limit, `an integer from 1 to ${maxLimit}`);
    limit = n;
  }
  return { seq, source, since, until, reason: reason?.toLowerCase(), limit };
}

function headerRecord(h: MsgHdrs | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of h?.keys() ?? []) out[k] = h!.get(k);
  return out;
}

function parseJson(bytes: Uint8Array): unknown {
  const text = new TextDecoder().decode(bytes);
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function reasonsOf(previous: unknown, last: string): string[] {
  const prior = Array.isArray(previous) ? previous.filter((x): x is string => typeof x === "string") : [];
  return [...prior, last];
}

/** Reads a stored dead letter of either format (processor: JSON envelope; projection: headers). */
export function readDeadLetter(subject: string, seq: number, storedAt: number, h: MsgHdrs | undefined, data: Uint8Array): DeadLetter {
  const parsed = parseSubject(subject);
  if (parsed.kind !== "dlq") throw new InvalidOptionError("subject", subject, "a dlq.<tenant>.<source> subject");
  const headers = headerRecord(h);
  const base = { seq, tenant: parsed.tenant, source: parsed.source, storedAt: new Date(storedAt).toISOString(), headers };
  if (headers["Flex-Dlq-Source"] !== undefined) {
    const reason = headers["Flex-Dlq-Reason"] ?? "unknown";
    const previous = headers["Flex-Dlq-Previous-Reasons"];
    return {
      ...base,
      kind: "projection",
      reason,
      reasons: reasonsOf(previous ? safeJson(previous) : [], reason),
      errorCode: headers["Flex-Dlq-Error-Code"] ?? null,
      attempts: null,
      originalSubject: headers["Flex-Dlq-Subject"] ?? null,
      originalSeq: numberOrNull(headers["Flex-Dlq-Seq"]),
      eventType: headers[HEADERS.type] ?? null,
      eventTime: headers[HEADERS.time] ?? null,
      data: parseJson(data),
    };
  }
  const body = parseJson(data) as Record<string, unknown> | string;
  if (headers[DLQ_HEADERS.sourceSubject] !== undefined && typeof body === "object" && body !== null) {
    const error = body.error as { code?: unknown } | undefined;
    const reason = typeof body.reason === "string" ? body.reason : (headers[DLQ_HEADERS.error] ?? "unknown");
    return {
      ...base,
      // A workflow trigger writes the processor's envelope, typed `TriggerFailed`.
      kind: headers[HEADERS.type] === "TriggerFailed" ? "trigger" : "processor",
      reason,
      reasons: reasonsOf(body.previousReasons, reason),
      errorCode: typeof error?.code === "string" ? error.code : null,
      attempts: typeof body.attempts === "number" ? body.attempts : null,
      originalSubject: headers[DLQ_HEADERS.sourceSubject] ?? null,
      originalSeq: numberOrNull(headers[DLQ_HEADERS.sourceSeq]),
      eventType: typeof body.type === "string" ? body.type : null,
      eventTime: typeof body.time === "string" ? body.time : null,
      data: body.data,
    };
  }
  return { ...base, kind: "unknown", reason: "unknown", reasons: ["unknown"], errorCode: null, attempts: null, originalSubject: null, originalSeq: null, eventType: null, eventTime: null, data: body };
}

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return [];
  }
}

function numberOrNull(s: string | undefined): number | null {
  const n = s === undefined ? NaN : Number(s);
  return Number.isSafeInteger(n) ? n : null;
}

function matches(d: DeadLetter, s: Selection): boolean {
  const t = Date.parse(d.storedAt);
  if (s.since !== undefined && t < s.since) return false;
  if (s.until !== undefined && t > s.until) return false;
  if (s.reason !== undefined && !d.reasons.some((r) => r.toLowerCase().includes(s.reason!))) return false;
  return true;
}

/**
 * The redrive message of a dead letter, or why its source cannot take it back: a
 * processor's goes to `redrive.<tenant>.<processor>` (`FLEX_REDRIVE`), a projection's to
 * `reapply.<tenant>.projection_<name>` (`FLEX_REAPPLY`), read by every copy of it.
 */
export function redriveMessage(d: DeadLetter): { subject: string; data: Uint8Array; headers: MsgHdrs; stream: string } {
  if (d.kind === "unknown") throw new RedriveUnsupportedError(d.source, "it is not a dead letter FlexCore wrote");
  const projectionStream = d.headers["Flex-Dlq-Stream"];
  if (d.kind === "projection" && projectionStream !== STREAMS.events && projectionStream !== STREAMS.derived) {
    throw new RedriveUnsupportedError(d.source, `its stream ${JSON.stringify(projectionStream ?? null)} is not ${STREAMS.events} or ${STREAMS.derived}`);
  }
  // The envelope comes from FlexCore's own runtime, but the tenant is decided by the DLQ subject.
  const original = d.originalSubject === null ? undefined : (() => {
    try {
      return parseSubject(d.originalSubject);
    } catch {
      return undefined;
    }
  })();
  // A projection also reads processors' outputs (FLEX_DERIVED); a processor reads events only.
  const kindOk = original?.kind === "event" || (d.kind === "projection" && original?.kind === "derived" && projectionStream === STREAMS.derived);
  if (!original || !kindOk || original.tenant !== d.tenant || d.originalSeq === null) {
    throw new RedriveUnsupportedError(d.source, `its original subject ${JSON.stringify(d.originalSubject)} is not an event of tenant ${d.tenant}`);
  }
  const h = natsHeaders();
  h.set(HEADERS.msgId, `redrive:${d.tenant}:${d.source}:${d.seq}`);
  h.set(HEADERS.type, d.eventType ?? "unknown");
  h.set(HEADERS.time, d.eventTime ?? d.storedAt);
  const causation = d.headers[HEADERS.causationId];
  if (causation) h.set(HEADERS.causationId, causation);
  h.set(HEADERS.schema, "1");
  h.set(HEADERS.contentType, "application/json");
  h.set(REDRIVE_HEADERS.dlqSeq, String(d.seq));
  h.set(REDRIVE_HEADERS.subject, d.originalSubject!);
  h.set(REDRIVE_HEADERS.seq, String(d.originalSeq));
  let reasons = [...d.reasons];
  while (reasons.length > 1 && JSON.stringify(reasons).length > MAX_REASONS_HEADER) reasons = reasons.slice(1);
  h.set(REDRIVE_HEADERS.reasons, JSON.stringify(reasons).replace(/[\r\n]+/gu, " ").slice(0, MAX_REASONS_HEADER));
  const data = new TextEncoder().encode(JSON.stringify(d.data ?? null));
  if (d.kind === "projection") {
    h.set(REDRIVE_HEADERS.stream, projectionStream!);
    const correlation = d.headers[HEADERS.correlationId];
    if (correlation) h.set(HEADERS.correlationId, correlation);
    return { subject: reapplySubject(d.tenant, d.source), data, headers: h, stream: STREAMS.reapply };
  }
  return { subject: redriveSubject(d.tenant, d.source), data, headers: h, stream: STREAMS.redrive };
}

class DeadLetterService implements DeadLetters {
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  #jsm: JetStreamManager | undefined;

  constructor(nc: NatsConnection) {
    this.#nc = nc;
    this.#js = jetstream(nc);
  }

  async #manager(): Promise<JetStreamManager> {
    this.#jsm ??= await jetstreamManager(this.#nc);
    return this.#jsm;
  }

  async #counts(stream: string, filter: string): Promise<Record<string, number>> {
    const jsm = await this.#manager();
    const info = await jsm.streams.info(stream, { subjects_filter: filter });
    return info.state.subjects ?? {};
  }

  async list(tenant: string | undefined): Promise<DeadLetterCount[]> {
    const t = tenant === undefined ? "*" : checkToken("tenant", tenant);
    const [dlq, redrive] = await Promise.all([
      this.#counts(STREAMS.dlq, `${SUBJECT_ROOTS.dlq}.${t}.*`),
      this.#counts(STREAMS.redrive, `${SUBJECT_ROOTS.redrive}.${t}.*`).catch(() => ({}) as Record<string, number>),
    ]);
    const rows = new Map<string, { tenant: string; source: string; count: number; redrivePending: number }>();
    const row = (subject: string) => {
      const [, tn, source] = subject.split(".");
      const key = `${tn}.${source}`;
      let r = rows.get(key);
      if (!r) rows.set(key, (r = { tenant: tn!, source: source!, count: 0, redrivePending: 0 }));
      return r;
    };
    for (const [s, n] of Object.entries(dlq)) row(s).count += n;
    for (const [s, n] of Object.entries(redrive)) row(s).redrivePending += n;
    return [...rows.values()].sort((a, b) => a.tenant.localeCompare(b.tenant) || a.source.localeCompare(b.source));
  }

  async show(tenant: string, seq: number | string): Promise<DeadLetter> {
    checkToken("tenant", tenant);
    const n = checkSeq(seq);
    const m = await this.#get(n);
    // Another tenant's dead letter is answered like a missing one: no oracle across tenants.
    if (!m || !m.subject.startsWith(`${SUBJECT_ROOTS.dlq}.${tenant}.`) || m.subject.split(".").length !== 3) throw new DeadLetterNotFoundError(n);
    return readDeadLetter(m.subject, m.seq, m.timestamp ? Date.parse(m.timestamp) : Date.now(), m.header, m.data);
  }

  async #get(seq: number): Promise<StoredMsg | null> {
    const jsm = await this.#manager();
    try {
      return await jsm.streams.getMessage(STREAMS.dlq, { seq });
    } catch (err) {
      if (/no message found|not found/iu.test(String((err as Error).message))) return null;
      throw err;
    }
  }

  // Dead letters of the selection, oldest first, at most `limit` (and whether more matched).
  async #select(tenant: string, s: Selection, limit: number, signal?: AbortSignal): Promise<DeadLetterPage> {
    checkToken("tenant", tenant);
    if (s.seq !== undefined) {
      const d = await this.show(tenant, s.seq);
      if (s.source !== undefined && d.source !== s.source) return { deadLetters: [], more: false };
      return { deadLetters: matches(d, s) ? [d] : [], more: false };
    }
    const filter = s.source !== undefined ? dlqSubject(tenant, s.source) : `${SUBJECT_ROOTS.dlq}.${tenant}.*`;
    const total = Object.values(await this.#counts(STREAMS.dlq, filter)).reduce((a, b) => a + b, 0);
    if (total === 0) return { deadLetters: [], more: false };
    const consumer = await this.#js.consumers.get(STREAMS.dlq, {
      filter_subjects: filter,
      ...(s.since !== undefined ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(s.since).toISOString() } : { deliver_policy: DeliverPolicy.All }),
    });
    const out: DeadLetter[] = [];
    let more = false;
    const messages = await consumer.consume({ max_messages: Math.min(1_000, limit + 1) });
    const stop = (): void => void messages.stop();
    signal?.addEventListener("abort", stop, { once: true });
    try {
      for await (const m of messages) {
        const storedAt = Math.floor(m.info.timestampNanos / 1e6);
        if (s.until !== undefined && storedAt > s.until) break;
        const d = readDeadLetter(m.subject, m.seq, storedAt, m.headers, m.data);
        if (matches(d, s)) {
          if (out.length >= limit) {
            more = true;
            break;
          }
          out.push(d);
        }
        if (m.info.pending === 0) break;
      }
    } finally {
      signal?.removeEventListener("abort", stop);
      await messages.close().catch(() => undefined);
    }
    return { deadLetters: out, more };
  }

  async find(tenant: string, filter: DeadLetterFilter, signal?: AbortSignal): Promise<DeadLetterPage> {
    const s = checkDeadLetterFilter(filter, 1_000);
    return this.#select(tenant, s, s.limit, signal);
  }

  #targeted(s: Selection): void {
    if (s.seq === undefined && s.source === undefined) throw new InvalidOptionError("source", undefined, "a source name (redrive and purge act on one source at a time), or give seq");
  }

  async redrive(tenant: string, filter: DeadLetterFilter, signal?: AbortSignal): Promise<RedriveReport> {
    const s = checkDeadLetterFilter({ ...filter, limit: filter.limit ?? MAX_DLQ_BATCH });
    this.#targeted(s);
    const { deadLetters, more } = await this.#select(tenant, s, s.limit, signal);
    // Every message is built first: one that cannot go back stops the call before anything moved.
    const outgoing = deadLetters.map((d) => ({ d, msg: redriveMessage(d) }));
    const jsm = await this.#manager();
    const redriven: number[] = [];
    let duplicates = 0;
    for (const { d, msg } of outgoing) {
      if (signal?.aborted) break;
      // Publish, then delete: a crash in between leaves the dead letter, and redriving it
      // again publishes the same Nats-Msg-Id, which the server drops as a duplicate.
      const ack = await this.#js.publish(msg.subject, msg.data, { headers: msg.headers, expect: { streamName: msg.stream } });
      if (ack.duplicate) duplicates += 1;
      await jsm.streams.deleteMessage(STREAMS.dlq, d.seq, false).catch((err: unknown) => {
        if (!/no message found|not found/iu.test(String((err as Error).message))) throw err;
      });
      redriven.push(d.seq);
    }
    return { redriven, duplicates, more };
  }

  async purge(tenant: string, filter: DeadLetterFilter, confirm: boolean, signal?: AbortSignal): Promise<PurgeReport> {
    const s = checkDeadLetterFilter({ ...filter, limit: filter.limit ?? MAX_DLQ_BATCH });
    this.#targeted(s);
    const jsm = await this.#manager();
    const whole = s.seq === undefined && s.since === undefined && s.until === undefined && s.reason === undefined && filter.limit === undefined;
    if (whole) {
      const subject = dlqSubject(tenant, s.source!);
      if (confirm !== true) {
        const n = Object.values(await this.#counts(STREAMS.dlq, subject)).reduce((a, b) => a + b, 0);
        throw new PurgeNotConfirmedError(n);
      }
      const r = await jsm.streams.purge(STREAMS.dlq, { filter: subject });
      return { purged: r.purged, more: false };
    }
    const { deadLetters, more } = await this.#select(tenant, s, s.limit, signal);
    if (confirm !== true) throw new PurgeNotConfirmedError(deadLetters.length);
    let purged = 0;
    for (const d of deadLetters) {
      if (signal?.aborted) break;
      if (await jsm.streams.deleteMessage(STREAMS.dlq, d.seq, false).catch(() => false)) purged += 1;
    }
    return { purged, more };
  }
}

/** The dead-letter service on `nc` (which needs rights on `FLEX_DLQ` and `FLEX_REDRIVE`). */
export function createDeadLetters(nc: NatsConnection): DeadLetters {
  return new DeadLetterService(nc);
}
