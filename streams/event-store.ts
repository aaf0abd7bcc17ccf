import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { DirectBatchOptions, JetStreamClient, JetStreamManager, JsMsg, StoredMsg } from "@nats-io/jetstream";
import { errors as natsErrors, nuid } from "@nats-io/transport-node";
import type { Msg, MsgHdrs, NatsConnection } from "@nats-io/transport-node";
import {
  AbortedError,
  BatchTooLargeError,
  ConcurrencyError,
  DuplicateEventIdError,
  InvalidEventError,
  InvalidOptionError,
  PublishRejectedError,
  PublishTimeoutError,
} from "./errors.js";
import { decodeEvent, encodeEvent, eventFromMsg, HEADERS } from "./event.js";
import type { EncodedEvent, EventInput, RawMessage, StoredEvent } from "./event.js";
import { createPublisher, JS_ERR } from "./publisher.js";
import type { Publisher, PublisherOptions } from "./publisher.js";
import { openStreamReader } from "./stream-reader.js";
import type { StreamReader } from "./stream-reader.js";
import { openSnapshotStore } from "./snapshots.js";
import type { Snapshot, SnapshotStore } from "./snapshots.js";
import { checkSubjectFilter, eventSubject, parseSubject } from "./subjects.js";
import { serverFeatures } from "./server.js";
import { DEFAULT_DUPLICATE_WINDOW_MS, STREAMS } from "./topology.js";

/** Fold events into a snapshot every this many events. */
export const DEFAULT_SNAPSHOT_EVERY = 100;
/** Aggregates whose head (revision, sequence) is remembered between appends. */
export const DEFAULT_HEAD_CACHE_SIZE = 10_000;
/** Messages pulled per request when reading with a consumer. */
export const DEFAULT_READ_BATCH = 2_048;
/** Events `readAll` holds for a slow reader before it pauses the consumer. */
export const DEFAULT_READ_HIGH_WATER = 8_192;
/** Failed attempts in a row to re-create readAll's consumer (about 4 s of back-off) before it throws. */
const READ_CREATE_ATTEMPTS = 5;
// Drop the taken part of readAll's queue once it is this long, so a reader that keeps
// pace never lets it grow.
const READ_COMPACT_AT = 8_192;
// Below this many events, reading with direct gets beats creating a consumer.
const DIRECT_READ_MAX = 16;
// Subjects whose last append's sequence a store remembers for read-your-writes.
const WRITTEN_CACHE_SIZE = 10_000;
// Messages read per batch direct get, and at most in all, when looking for a retried append's events.
const DIRECT_BATCH = 1_000;
/** Messages per batch direct get when reading an aggregate (`batchReads: "auto"`). */
export const DIRECT_READ_BATCH = 1_024;
const FIND_STORED_MAX = 100_000;
const MAX_ANY_RETRIES = 64;
/** Events one append may hold: the server's atomic batch limit (`max_batch_size`, 1000 by default). */
export const MAX_APPEND_EVENTS = 1_000;
/** How long an atomic append waits for the server's answer to its commit before sending the batch again. */
export const DEFAULT_COMMIT_TIMEOUT_MS = 5_000;
// Sends of one atomic batch (a new batch id each time; the event ids keep a retry from storing twice).
const COMMIT_ATTEMPTS = 5;
const BATCH_HEADERS = { id: "Nats-Batch-Id", sequence: "Nats-Batch-Sequence", commit: "Nats-Batch-Commit", expectedLastSubjectSequence: "Nats-Expected-Last-Subject-Sequence" } as const;

/** What an append expects of the aggregate: its revision, `"no_stream"` (no events), `"exists"` (some), or `"any"`. */
export type ExpectedRevision = number | "no_stream" | "exists" | "any";

/** An aggregate: its subject `evt.<tenant>.<category>.<id>` or its parts. */
export type AggregateRef = string | { readonly tenant: string; readonly category: string; readonly id: string };

export interface AppendOptions {
  /** @default "any" */
  readonly expectedRevision?: ExpectedRevision;
  readonly signal?: AbortSignal;
}

export interface AppendResult {
  /** The aggregate's revision after the append (1-based count of its events). */
  readonly revision: number;
  /** Stream sequence of the last event. */
  readonly seq: number;
  /** How many of the events had been stored before (same ids) and were not stored again. */
  readonly duplicates: number;
}

export interface ReadOptions {
  /** First revision to return (forward) or the one to start from (backward). @default 1 / the last */
  readonly from?: number;
  /** @default all */
  readonly limit?: number;
  /** @default "forward" */
  readonly direction?: "forward" | "backward";
  readonly signal?: AbortSignal;
}

export interface ReadAllOptions {
  /** First stream sequence. @default 1 */
  readonly fromSeq?: number;
  /** Start at events stored at or after this time (instead of `fromSeq`). */
  readonly since?: Date | string;
  /** Stop after this stream sequence, or before events stored after this time. */
  readonly until?: number | Date | string;
  /** Subject filter. @default "evt.>" */
  readonly filter?: string;
  /** Keep following new events after catching up. @default true unless `until` is set */
  readonly follow?: boolean;
  /** Messages per pull request. @default 2048 */
  readonly batch?: number;
  readonly signal?: AbortSignal;
}

/** Folds an aggregate's events into its state. `name` and `version` key its snapshots. */
export interface Reducer<S, E = unknown> {
  readonly name: string;
  /** Bump when `apply` changes meaning: older snapshots are then ignored. @default 1 */
  readonly version?: number;
  initial(): S;
  apply(state: S, event: StoredEvent<E>): S;
}

export interface AggregateOptions {
  /** State as of this stream sequence or stored time (time travel). @default now */
  readonly asOf?: number | Date | string;
  /** Use and write snapshots. @default true */
  readonly snapshots?: boolean;
  readonly signal?: AbortSignal;
}

export interface AggregateState<S> {
  readonly state: S;
  readonly revision: number;
  /** Stream sequence of the last folded event (0 if none). */
  readonly seq: number;
  /** Whether loading started from a snapshot. */
  readonly fromSnapshot: boolean;
  /** Events read from the stream to build the state. */
  readonly eventsRead: number;
}

export interface EventStoreOptions {
  /** Publisher to append through. @default one created and closed by the store */
  readonly publisher?: Publisher;
  readonly publisherOptions?: PublisherOptions;
  /** @default 100 */
  readonly snapshotEvery?: number;
  /** @default 10000 */
  readonly headCacheSize?: number;
  /**
   * How an append of several events is written. `"auto"`: as one atomic batch (nats-server
   * 2.12+, `allow_atomic` on `FLEX_EVENTS`): all events are stored or none; where the server
   * or the stream lacks it, event by event as with `"off"`. `"off"`: event by event, each
   * expecting the one before; a failure part-way leaves the first events stored, and a retry
   * with the same event ids completes the append.
   * @default "auto"
   */
  readonly atomicAppends?: "auto" | "off";
  /**
   * How `read` and `aggregate` (time travel included) fetch an aggregate's events.
   * `"auto"`: when at most `DIRECT_READ_BATCH` (1024) events are to be read, one batch
   * direct get of the aggregate's subject (nats-server 2.11+, `allow_direct`), no consumer;
   * longer reads use an ordered consumer, which streams them faster. `"off"`: an ordered
   * consumer (single direct gets for 16 events or fewer), as before 2.11.
   * @default "auto"
   */
  readonly batchReads?: "auto" | "off";
}

/** The JetStream event store: one subject per aggregate in `FLEX_EVENTS`. */
export interface EventStore extends AsyncDisposable {
  /**
   * Appends events to one aggregate with optimistic concurrency.
   * @throws ConcurrencyError when the aggregate is not at the expected revision
   * @throws InvalidEventError, SubjectTokenError before anything is written
   */
  append(stream: AggregateRef, events: readonly EventInput[], options?: AppendOptions): Promise<AppendResult>;
  /** Reads an aggregate's events with their metadata. */
  read(stream: AggregateRef, options?: ReadOptions): Promise<StoredEvent[]>;
  /** Reads every event matching a filter, in stream order; follows live events unless told to stop. */
  readAll(options?: ReadAllOptions): AsyncIterable<StoredEvent>;
  /** Rebuilds an aggregate's state (from a snapshot when one fits), optionally as of a past point. */
  aggregate<S, E = unknown>(stream: AggregateRef, reducer: Reducer<S, E>, options?: AggregateOptions): Promise<AggregateState<S>>;
  /** The aggregate's current revision and last sequence (0, 0 when it has no events). */
  head(stream: AggregateRef): Promise<{ revision: number; seq: number }>;
  readonly publisher: Publisher;
  close(): Promise<void>;
}

interface Head {
  readonly revision: number;
  readonly seq: number;
}

function clearBatchHeaders(h: MsgHdrs): void {
  for (const name of Object.values(BATCH_HEADERS)) if (h.has(name)) h.delete(name);
}

function toSubject(ref: AggregateRef): string {
  if (typeof ref === "string") {
    const parsed = parseSubject(ref);
    if (parsed.kind !== "event") throw new InvalidOptionError("stream", ref, "an event subject evt.<tenant>.<category>.<id>");
    return ref;
  }
  if (ref === null || typeof ref !== "object") throw new InvalidOptionError("stream", ref, "a subject or { tenant, category, id }");
  return eventSubject(ref.tenant, ref.category, ref.id);
}

function checkExpected(value: unknown): ExpectedRevision {
  if (value === "any" || value === "no_stream" || value === "exists") return value;
  if (typeof value === "number" && Number.isInteger(value) && value >= 0) return value;
  throw new InvalidOptionError("expectedRevision", value, 'an integer from 0 and up, "no_stream", "exists" or "any"');
}

function toTime(field: string, value: Date | string): number {
  const t = value instanceof Date ? value.getTime() : Date.parse(value);
  if (Number.isNaN(t)) throw new InvalidOptionError(field, value, "a Date or an RFC 3339 timestamp");
  return t;
}

function optionalInt(field: string, value: number | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isInteger(value) || value < min) throw new InvalidOptionError(field, value, `an integer from ${min} and up`);
  return value;
}

function fromStored(m: StoredMsg): RawMessage {
  return { subject: m.subject, seq: m.seq, headers: m.header, data: m.data, storedAt: m.time.getTime() };
}

function fromJs(m: JsMsg): RawMessage {
  return { subject: m.subject, seq: m.seq, headers: m.headers, data: m.data, storedAt: Math.floor(m.info.timestampNanos / 1e6) };
}

/**
 * Decodes a consumed message into an event without the generic header decoding.
 * With `lazyData`, the JSON body is parsed only when `data` is first read.
 */
export function eventFromJsMsg(m: JsMsg, options: { readonly lazyData?: boolean } = {}): StoredEvent {
  const info = m.info;
  // JsMsg wraps the core message as `msg`; without it, the public getters are enough.
  const core = (m as unknown as { msg?: Msg }).msg ?? (m as unknown as Msg);
  return eventFromMsg(core, info.streamSequence, Math.floor(info.timestampNanos / 1e6), options.lazyData === true);
}

/** Creates an event store on `nc`; the topology must exist (`ensureTopology`). */
export async function createEventStore(nc: NatsConnection, options: EventStoreOptions = {}): Promise<EventStore> {
  const snapshotEvery = optionalInt("snapshotEvery", options.snapshotEvery, 1) ?? DEFAULT_SNAPSHOT_EVERY;
  const headCacheSize = optionalInt("headCacheSize", options.headCacheSize, 0) ?? DEFAULT_HEAD_CACHE_SIZE;
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  const snapshots = await openSnapshotStore(nc);
  const atomicAppends = options.atomicAppends ?? "auto";
  if (atomicAppends !== "auto" && atomicAppends !== "off") throw new InvalidOptionError("atomicAppends", atomicAppends, '"auto" or "off"');
  const atomic = atomicAppends === "auto" && serverFeatures(nc.info?.version ?? "0.0.0").atomicBatch;
  const batchReads = options.batchReads ?? "auto";
  if (batchReads !== "auto" && batchReads !== "off") throw new InvalidOptionError("batchReads", batchReads, '"auto" or "off"');
  const publisher = options.publisher ?? createPublisher(nc, options.publisherOptions);
  return new JetStreamEventStore(nc, js, jsm, snapshots, publisher, options.publisher === undefined, snapshotEvery, headCacheSize, atomic, batchReads === "auto");
}

type BatchOutcome = { kind: "ok"; result: AppendResult } | { kind: "conflict" } | { kind: "unsupported" } | { kind: "duplicate" };

interface BatchAck {
  seq?: number;
  count?: number;
  error?: { code?: number; err_code?: number; description?: string };
}

class JetStreamEventStore implements EventStore {
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #snapshots: SnapshotStore;
  readonly #ownsPublisher: boolean;
  readonly #snapshotEvery: number;
  readonly #headCacheSize: number;
  readonly #heads = new Map<string, Head>();
  // The stream sequence of this store's last acknowledged append per subject (bounded like
  // #heads). Direct gets are answered by any replica of an R3 stream, and one that is still
  // catching up (a node just back) answers with what it has: a read below this sequence came
  // from such a replica and is asked again of the stream leader. Read-your-writes per store.
  readonly #written = new Map<string, number>();
  // Whether appends of several events go as one atomic batch; turned off for good when the stream says it lacks allow_atomic.
  #atomic: boolean;
  #duplicateWindowMs: number | undefined;
  readonly #batchDirectGet: boolean;
  readonly #batchReads: boolean;
  readonly publisher: Publisher;

  constructor(nc: NatsConnection, js: JetStreamClient, jsm: JetStreamManager, snapshots: SnapshotStore, publisher: Publisher, ownsPublisher: boolean, snapshotEvery: number, headCacheSize: number, atomic: boolean, batchReads: boolean) {
    this.#atomic = atomic;
    this.#batchDirectGet = serverFeatures(nc.info?.version ?? "0.0.0").batchDirectGet;
    this.#batchReads = batchReads && this.#batchDirectGet;
    this.#nc = nc;
    this.#js = js;
    this.#jsm = jsm;
    this.#snapshots = snapshots;
    this.publisher = publisher;
    this.#ownsPublisher = ownsPublisher;
    this.#snapshotEvery = snapshotEvery;
    this.#headCacheSize = headCacheSize;
  }

  async append(stream: AggregateRef, events: readonly EventInput[], options: AppendOptions = {}): Promise<AppendResult> {
    const subject = toSubject(stream);
    const expected = checkExpected(options.expectedRevision ?? "any");
    if (!Array.isArray(events) || events.length === 0) throw new InvalidEventError("events", events, "a non-empty array of events");
    if (events.length > MAX_APPEND_EVENTS) throw new BatchTooLargeError(events.length, MAX_APPEND_EVENTS);
    // Validate and encode everything before the first write.
    const encoded = events.map((e, i) => encodeEvent(e, `events[${i}].`));
    const ids = new Set(encoded.map((e) => e.id));
    if (ids.size !== encoded.length) throw new InvalidEventError("events[].id", [...encoded.map((e) => e.id)].join(","), "distinct event ids within one append");

    let fresh = false;
    let head = this.#heads.get(subject);
    for (let attempt = 0; ; attempt++) {
      options.signal?.throwIfAborted();
      if (!head) {
        head = await this.#readHead(subject);
        fresh = true;
      }
      const mismatch =
        (typeof expected === "number" && head.revision !== expected) ||
        (expected === "no_stream" && head.revision !== 0) ||
        (expected === "exists" && head.revision === 0);
      if (mismatch) {
        if (!fresh) {
          head = undefined;
          continue;
        }
        const resumed = await this.#resumeIfStored(subject, encoded, head);
        if (resumed) return this.#wrote(subject, resumed);
        throw new ConcurrencyError(subject, expected, head.revision);
      }
      const outcome = await this.#publishEvents(subject, encoded, head, options.signal);
      if (outcome.kind === "ok") return this.#wrote(subject, outcome.result);
      // Someone appended between our read of the head and our first event.
      this.#heads.delete(subject);
      head = undefined;
      if (expected === "any" && attempt < MAX_ANY_RETRIES) continue;
      if (!fresh) continue;
      const actual = await this.#readHead(subject);
      if (typeof expected === "number" && actual.revision === expected) continue;
      throw new ConcurrencyError(subject, expected, actual.revision);
    }
  }

  async #publishEvents(subject: string, encoded: readonly EncodedEvent[], head: Head, signal: AbortSignal | undefined): Promise<{ kind: "ok"; result: AppendResult } | { kind: "conflict" }> {
    if (this.#atomic && encoded.length > 1) {
      const outcome = await this.#publishBatch(subject, encoded, head, signal);
      if (outcome.kind === "ok" || outcome.kind === "conflict") return outcome;
      if (outcome.kind === "duplicate") {
        // Some ids are stored: this is a retry of an append that was stored (all of it, as
        // batches are atomic), or ids reused from another append.
        this.#heads.delete(subject);
        const resumed = await this.#resumeIfStored(subject, encoded, await this.#readHead(subject));
        if (resumed) return { kind: "ok", result: resumed };
        throw new DuplicateEventIdError(subject);
      }
      this.#atomic = false;
    }
    return this.#publishChain(subject, encoded, head);
  }

  // Publishes the events as one atomic batch (ADR-50): all stored or none. Only the first
  // message carries the expected last subject sequence; the server checks it at the commit.
  async #publishBatch(subject: string, encoded: readonly EncodedEvent[], head: Head, signal: AbortSignal | undefined): Promise<BatchOutcome> {
    const n = encoded.length;
    for (const [i, e] of encoded.entries()) e.headers.set(HEADERS.revision, String(head.revision + i + 1));
    let lastError: unknown;
    try {
      for (let attempt = 1; attempt <= COMMIT_ATTEMPTS; attempt++) {
        if (signal?.aborted) throw new AbortedError("append", { cause: signal.reason });
        const batchId = nuid.next();
        for (const [i, e] of encoded.entries()) {
          const h = e.headers;
          h.set(BATCH_HEADERS.id, batchId);
          h.set(BATCH_HEADERS.sequence, String(i + 1));
          if (i === 0) h.set(BATCH_HEADERS.expectedLastSubjectSequence, String(head.seq));
          if (i === n - 1) h.set(BATCH_HEADERS.commit, "1");
        }
        let reply: Msg;
        try {
          for (let i = 0; i < n - 1; i++) this.#nc.publish(subject, encoded[i]!.data, { headers: encoded[i]!.headers });
          reply = await this.#nc.request(subject, encoded[n - 1]!.data, { headers: encoded[n - 1]!.headers, timeout: DEFAULT_COMMIT_TIMEOUT_MS });
        } catch (err) {
          // Lost on the way (a disconnect, a restart): the server abandons an incomplete batch, so send it all again.
          if (err instanceof natsErrors.TimeoutError || err instanceof natsErrors.RequestError) {
            lastError = err;
            continue;
          }
          throw new PublishRejectedError(subject, (err as Error).message);
        }
        if (reply.headers?.hasError) {
          lastError = new PublishRejectedError(subject, `${reply.headers.code} ${reply.headers.description}`);
          if (reply.headers.code === 503) continue;
          throw lastError;
        }
        let ack: BatchAck;
        try {
          ack = JSON.parse(reply.string()) as BatchAck;
        } catch {
          throw new PublishRejectedError(subject, "the server's reply was not a PubAck");
        }
        const code = ack.error?.err_code;
        if (ack.error) {
          if (code === JS_ERR.wrongLastSequence) return { kind: "conflict" };
          if (code === JS_ERR.atomicDisabled) return { kind: "unsupported" };
          if (code === JS_ERR.batchDuplicateId) return { kind: "duplicate" };
          if (code === JS_ERR.batchTooLarge) throw new BatchTooLargeError(n, MAX_APPEND_EVENTS);
          if (code === JS_ERR.batchIncomplete || code === JS_ERR.temporarilyUnavailable) {
            lastError = new PublishRejectedError(subject, ack.error.description ?? "batch abandoned", code);
            continue;
          }
          throw new PublishRejectedError(subject, ack.error.description ?? "unknown error", code);
        }
        const seq = ack.seq ?? 0;
        const result = { revision: head.revision + n, seq, duplicates: 0 };
        this.#remember(subject, { revision: result.revision, seq });
        return { kind: "ok", result };
      }
      this.#heads.delete(subject);
      throw Object.assign(new PublishTimeoutError(subject, COMMIT_ATTEMPTS), { cause: lastError });
    } finally {
      for (const e of encoded) clearBatchHeaders(e.headers);
    }
  }

  // Publishes events one after another, each expecting the previous one as the subject's last.
  async #publishChain(subject: string, encoded: readonly EncodedEvent[], head: Head): Promise<{ kind: "ok"; result: AppendResult } | { kind: "conflict" }> {
    let { revision, seq } = head;
    let duplicates = 0;
    for (const [i, e] of encoded.entries()) {
      e.headers.set(HEADERS.revision, String(revision + 1));
      try {
        const ack = await this.publisher.publish(subject, e.data, { headers: e.headers, expectedLastSubjectSequence: seq });
        if (ack.duplicate) {
          duplicates += 1;
          continue;
        }
        revision += 1;
        seq = ack.seq;
      } catch (err) {
        if (err instanceof PublishRejectedError && err.serverCode === JS_ERR.wrongLastSequence) {
          if (i === 0) return { kind: "conflict" };
          // On 2.9.x a multi-event append is not atomic: a writer slipped in after event i-1.
          this.#heads.delete(subject);
          const actual = await this.#readHead(subject);
          throw new ConcurrencyError(subject, revision, actual.revision);
        }
        this.#heads.delete(subject);
        throw err;
      }
    }
    if (duplicates === encoded.length) {
      // Everything was stored before: report where it is.
      const last = (await this.#findStored(subject, encoded)).get(encoded[encoded.length - 1]!.id);
      // The ids were stored, but not in this aggregate (perhaps another tenant's): say nothing about them.
      if (!last) throw new DuplicateEventIdError(subject);
      return { kind: "ok", result: { ...last, duplicates } };
    }
    this.#remember(subject, { revision, seq });
    return { kind: "ok", result: { revision, seq, duplicates } };
  }

  // A retried append whose events were already stored: the ids are deduplicated, so the
  // call succeeds as the first one did (and completes a partly stored multi-event append).
  async #resumeIfStored(subject: string, encoded: readonly EncodedEvent[], head: Head): Promise<AppendResult | undefined> {
    const found = await this.#findStored(subject, encoded);
    let stored = 0;
    while (stored < encoded.length && found.has(encoded[stored]!.id)) stored += 1;
    if (stored === 0) return undefined;
    const last = found.get(encoded[stored - 1]!.id)!;
    if (stored === encoded.length) return { ...last, duplicates: stored };
    if (last.seq !== head.seq) return undefined; // others appended after the partial append
    const outcome = await this.#publishEvents(subject, encoded.slice(stored), head, undefined);
    if (outcome.kind === "conflict") return undefined;
    return { ...outcome.result, duplicates: outcome.result.duplicates + stored };
  }

  // Where the events of `encoded` are stored in this aggregate, by id: its messages stored
  // within the dedupe window, read with batch direct gets. Only the aggregate's own subject
  // is read, so an id another aggregate used is simply not found.
  async #findStored(subject: string, encoded: readonly EncodedEvent[]): Promise<Map<string, { revision: number; seq: number }>> {
    const wanted = new Set(encoded.map((e) => e.id));
    const found = new Map<string, { revision: number; seq: number }>();
    this.#duplicateWindowMs ??= await this.#jsm.streams.info(STREAMS.events).then((i) => Math.ceil(i.config.duplicate_window / 1e6), () => DEFAULT_DUPLICATE_WINDOW_MS);
    // Margin for clock skew between this process and the server.
    let from: { start_time: Date } | { seq: number } = { start_time: new Date(Date.now() - this.#duplicateWindowMs - 60_000) };
    for (let scanned = 0; scanned < FIND_STORED_MAX && found.size < wanted.size; ) {
      let n = 0;
      let lastSeq = 0;
      const batch = await this.#jsm.direct.getBatch(STREAMS.events, { ...from, next_by_subj: subject, batch: DIRECT_BATCH } as DirectBatchOptions);
      try {
        for await (const m of batch) {
          n += 1;
          lastSeq = m.seq;
          const id = m.header?.get(HEADERS.msgId);
          if (id && wanted.has(id)) {
            const rev = Number(m.header?.get(HEADERS.revision));
            found.set(id, { revision: Number.isInteger(rev) && rev > 0 ? rev : (await this.#readHead(subject)).revision, seq: m.seq });
          }
        }
      } catch (err) {
        // 404: the subject has no (more) messages from there.
        if ((err as { code?: unknown }).code !== 404) throw err;
      }
      scanned += n;
      if (n < DIRECT_BATCH) break;
      from = { seq: lastSeq + 1 };
    }
    return found;
  }

  async head(stream: AggregateRef): Promise<{ revision: number; seq: number }> {
    return this.#readHead(toSubject(stream));
  }

  // STREAM.MSG.GET, which only the stream leader answers (a direct get goes to any replica).
  async #leaderGet(query: { last_by_subj: string } | { seq: number; next_by_subj: string }): Promise<StoredMsg | null> {
    try {
      return await this.#jsm.streams.getMessage(STREAMS.events, query);
    } catch (err) {
      if ((err as { code?: unknown }).code === 404 || /no message found/i.test(String((err as Error).message))) return null;
      throw err;
    }
  }

  #wrote(subject: string, result: AppendResult): AppendResult {
    this.#written.delete(subject);
    this.#written.set(subject, result.seq);
    if (this.#written.size > WRITTEN_CACHE_SIZE) this.#written.delete(this.#written.keys().next().value!);
    return result;
  }

  async #readHead(subject: string): Promise<Head> {
    let last = await this.#jsm.direct.getMessage(STREAMS.events, { last_by_subj: subject });
    // A replica behind this store's own last write answered: the leader knows it.
    if ((last?.seq ?? 0) < (this.#written.get(subject) ?? 0)) last = await this.#leaderGet({ last_by_subj: subject });
    if (!last) return this.#remember(subject, { revision: 0, seq: 0 });
    const rev = last.header?.get(HEADERS.revision);
    let revision = rev ? Number(rev) : Number.NaN;
    if (!Number.isInteger(revision) || revision < 1) {
      // Published without FlexCore (e.g. by the nats CLI): count the subject's messages.
      const info = await this.#jsm.streams.info(STREAMS.events, { subjects_filter: subject });
      revision = info.state.subjects?.[subject] ?? 1;
    }
    return this.#remember(subject, { revision, seq: last.seq });
  }

  #remember(subject: string, head: Head): Head {
    if (this.#headCacheSize === 0) return head;
    this.#heads.delete(subject);
    this.#heads.set(subject, head);
    if (this.#heads.size > this.#headCacheSize) this.#heads.delete(this.#heads.keys().next().value!);
    return head;
  }

  async read(stream: AggregateRef, options: ReadOptions = {}): Promise<StoredEvent[]> {
    const subject = toSubject(stream);
    const from = optionalInt("from", options.from, 1);
    const limit = optionalInt("limit", options.limit, 1);
    const direction = options.direction ?? "forward";
    if (direction !== "forward" && direction !== "backward") throw new InvalidOptionError("direction", direction, '"forward" or "backward"');
    const head = await this.#readHead(subject);
    if (head.revision === 0) return [];
    let first: number;
    let last: number;
    if (direction === "forward") {
      first = from ?? 1;
      last = limit === undefined ? head.revision : Math.min(head.revision, first + limit - 1);
    } else {
      last = Math.min(from ?? head.revision, head.revision);
      first = limit === undefined ? 1 : Math.max(1, last - limit + 1);
    }
    if (first > last) return [];
    const collect = async (fromLeader: boolean): Promise<StoredEvent[]> => {
      const out: StoredEvent[] = [];
      let position = 0;
      await this.#scan(subject, 1, head.seq, head.revision, options.signal, (raw) => {
        position += 1;
        const event = decodeEvent(raw);
        const revision = event.revision ?? position;
        if (revision >= first && revision <= last) out.push(event.revision === undefined ? { ...event, revision } : event);
        return revision < last;
      }, fromLeader);
      return out;
    };
    let out = await collect(false);
    // Fewer than the head promised: a replica still catching up answered the direct gets.
    if (out.length < last - first + 1) out = await collect(true);
    return direction === "backward" ? out.reverse() : out;
  }

  // Calls `onMessage` for the subject's messages from startSeq to endSeq, in order, until it returns false.
  async #scan(subject: string, startSeq: number, endSeq: number, expectedCount: number, signal: AbortSignal | undefined, onMessage: (m: RawMessage) => boolean, fromLeader = false): Promise<number> {
    if (endSeq < startSeq) return 0;
    if (fromLeader) {
      // One message at a time from the stream leader (not a direct get): slow, and only used
      // when a lagging replica answered the direct gets.
      let count = 0;
      let seq = startSeq;
      while (seq <= endSeq) {
        signal?.throwIfAborted();
        const m = await this.#leaderGet({ seq, next_by_subj: subject });
        if (!m || m.seq > endSeq) break;
        count += 1;
        if (!onMessage(fromStored(m))) break;
        seq = m.seq + 1;
      }
      return count;
    }
    // Measured (bench ingest, aggregate.*): one batch direct get beats creating a consumer,
    // but a consumer streams long reads faster than repeated batch requests.
    if (this.#batchReads && expectedCount <= DIRECT_READ_BATCH) return this.#scanDirect(subject, startSeq, endSeq, signal, onMessage);
    let count = 0;
    if (expectedCount <= DIRECT_READ_MAX) {
      let seq = startSeq;
      while (seq <= endSeq) {
        signal?.throwIfAborted();
        const m = await this.#jsm.direct.getMessage(STREAMS.events, { seq, next_by_subj: subject });
        if (!m || m.seq > endSeq) break;
        count += 1;
        if (!onMessage(fromStored(m))) break;
        seq = m.seq + 1;
      }
      return count;
    }
    const consumer = await this.#js.consumers.get(STREAMS.events, {
      filter_subjects: subject,
      ...(startSeq > 1 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: startSeq } : { deliver_policy: DeliverPolicy.All }),
    });
    const messages = await consumer.consume({ max_messages: Math.min(DEFAULT_READ_BATCH, Math.max(expectedCount, 16)) });
    const onAbort = (): void => void messages.stop();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for await (const m of messages) {
        if (m.seq > endSeq) break;
        count += 1;
        if (!onMessage(fromJs(m)) || m.seq >= endSeq || m.info.pending === 0) break;
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      await messages.close().catch(() => undefined);
    }
    signal?.throwIfAborted();
    return count;
  }

  // #scan with batch direct gets: the subject's messages from startSeq, DIRECT_READ_BATCH per
  // request, each request starting after the last message of the one before.
  async #scanDirect(subject: string, startSeq: number, endSeq: number, signal: AbortSignal | undefined, onMessage: (m: RawMessage) => boolean): Promise<number> {
    let count = 0;
    let seq = startSeq;
    while (seq <= endSeq) {
      signal?.throwIfAborted();
      const batch = await this.#jsm.direct.getBatch(STREAMS.events, { seq, next_by_subj: subject, batch: DIRECT_READ_BATCH });
      let got = 0;
      let more = true;
      try {
        for await (const m of batch) {
          got += 1;
          if (m.seq > endSeq) {
            more = false;
            break;
          }
          count += 1;
          seq = m.seq + 1;
          if (!onMessage(fromStored(m))) {
            more = false;
            break;
          }
          if (m.seq === endSeq) {
            more = false;
            break;
          }
        }
      } catch (err) {
        if ((err as { code?: unknown }).code !== 404) throw err; // 404: nothing (more) from there
        more = false;
      } finally {
        batch.stop();
      }
      // A batch may end early (the server caps its bytes): go on from the last one until endSeq or nothing more.
      if (!more || got === 0) break;
    }
    signal?.throwIfAborted();
    return count;
  }

  async *readAll(options: ReadAllOptions = {}): AsyncGenerator<StoredEvent> {
    const filter = checkSubjectFilter(options.filter ?? "evt.>");
    const fromSeq = optionalInt("fromSeq", options.fromSeq, 1);
    const batch = optionalInt("batch", options.batch, 1) ?? DEFAULT_READ_BATCH;
    const since = options.since === undefined ? undefined : toTime("since", options.since);
    let untilSeq: number | undefined;
    let untilTime: number | undefined;
    if (typeof options.until === "number") untilSeq = optionalInt("until", options.until, 0);
    else if (options.until !== undefined) untilTime = toTime("until", options.until);
    const follow = options.follow ?? (options.until === undefined);
    const signal = options.signal;
    if (signal?.aborted) throw new AbortedError("readAll", { cause: signal.reason });

    let endSeq: number | undefined = untilSeq;
    if (!follow) {
      const last = await this.#jsm.streams.getMessage(STREAMS.events, { last_by_subj: filter }).catch(() => null);
      const lastSeq = last?.seq ?? 0;
      endSeq = endSeq === undefined ? lastSeq : Math.min(endSeq, lastSeq);
      if (endSeq < (fromSeq ?? 1)) return;
      // Nothing stored since `since`: a consumer starting there would wait for new events.
      if (since !== undefined && (!last || last.time.getTime() < since)) return;
    }
    // The engine's reader (openStreamReader) fills a bounded queue: paused at `highWater`
    // events not yet taken, resumed at half. Events are plain objects (not lazy): they are
    // handed to the caller's code.
    const highWater = Math.max(batch * 4, DEFAULT_READ_HIGH_WATER);
    let queue: Array<{ event: StoredEvent; pending: number }> = [];
    let head = 0;
    let wake: (() => void) | null = null;
    const notify = (): void => {
      const w = wake;
      wake = null;
      w?.();
    };
    let reader: StreamReader | undefined;
    let failure: Error | undefined;
    signal?.addEventListener("abort", notify, { once: true });
    try {
      reader = await openStreamReader(this.#nc, {
        stream: STREAMS.events,
        filter,
        ...(since !== undefined ? { startTime: since } : { startSeq: fromSeq ?? 1 }),
        window: batch,
        lazy: false,
        onEvent: (event, pending) => {
          if (queue.push({ event, pending }) - head >= highWater) reader?.pause();
          notify();
        },
        // The engine waits for a stream to come back; a replay reports that it cannot go on.
        onCreateError: (err, failures) => {
          if (failures < READ_CREATE_ATTEMPTS && !this.#nc.isClosed()) return;
          failure ??= err;
          notify();
        },
      });
      while (true) {
        if (signal?.aborted) break;
        if (head === queue.length) {
          if (failure) throw failure;
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          continue;
        }
        const { event, pending } = queue[head]!;
        head += 1;
        if (head === queue.length) {
          queue = [];
          head = 0;
        } else if (head >= READ_COMPACT_AT) {
          queue = queue.slice(head);
          head = 0;
        }
        if (queue.length - head < highWater / 2) reader.resume();
        if (endSeq !== undefined && event.seq > endSeq) break;
        if (untilTime !== undefined && event.storedAt > untilTime) break;
        yield event;
        if (endSeq !== undefined && event.seq >= endSeq) break;
        if (!follow && pending === 0) break;
      }
    } finally {
      signal?.removeEventListener("abort", notify);
      await reader?.close();
    }
    if (signal?.aborted) throw new AbortedError("readAll", { cause: signal.reason });
  }

  async aggregate<S, E = unknown>(stream: AggregateRef, reducer: Reducer<S, E>, options: AggregateOptions = {}): Promise<AggregateState<S>> {
    const subject = toSubject(stream);
    if (!reducer || typeof reducer.apply !== "function" || typeof reducer.initial !== "function" || typeof reducer.name !== "string") {
      throw new InvalidOptionError("reducer", reducer, "{ name, initial(), apply(state, event) }");
    }
    const version = reducer.version ?? 1;
    let asOfSeq: number | undefined;
    let asOfTime: number | undefined;
    if (typeof options.asOf === "number") asOfSeq = optionalInt("asOf", options.asOf, 0);
    else if (options.asOf !== undefined) asOfTime = toTime("asOf", options.asOf);
    const useSnapshots = options.snapshots ?? true;

    const head = await this.#readHead(subject);
    const endSeq = asOfSeq === undefined ? head.seq : Math.min(asOfSeq, head.seq);
    let start = { state: reducer.initial(), revision: 0, seq: 0, storedAt: 0 };
    let fromSnapshot = false;
    if (useSnapshots && head.seq > 0) {
      const snap = await this.#snapshots.load<S>(subject, reducer.name);
      if (snap && snap.reducerVersion === version && snap.seq <= endSeq && (asOfTime === undefined || snap.storedAt <= asOfTime)) {
        start = { state: snap.state, revision: snap.revision, seq: snap.seq, storedAt: snap.storedAt };
        fromSnapshot = true;
      }
    }
    let { state, revision, seq, storedAt } = start;
    const fold = async (fromLeader: boolean): Promise<{ eventsRead: number; complete: boolean }> => {
      // The second fold starts from scratch: the first may have changed the snapshot's state in place.
      if (fromLeader) {
        start = { state: reducer.initial(), revision: 0, seq: 0, storedAt: 0 };
        fromSnapshot = false;
      }
      ({ state, revision, seq, storedAt } = start);
      let position = revision;
      let stoppedAt = false;
      const eventsRead = await this.#scan(subject, seq + 1, endSeq, head.revision - revision, options.signal, (raw) => {
        if (asOfTime !== undefined && raw.storedAt > asOfTime) {
          stoppedAt = true;
          return false;
        }
        position += 1;
        const event = decodeEvent<E>(raw);
        state = reducer.apply(state, event.revision === undefined ? { ...event, revision: position } : event);
        revision = event.revision ?? position;
        seq = raw.seq;
        storedAt = raw.storedAt;
        return true;
      }, fromLeader);
      return { eventsRead, complete: stoppedAt || seq >= endSeq };
    };
    let { eventsRead, complete } = await fold(false);
    // Short of the head: a replica still catching up answered the direct gets.
    if (!complete) ({ eventsRead } = await fold(true));
    if (useSnapshots && eventsRead >= this.#snapshotEvery) {
      const snapshot: Snapshot<S> = { state, revision, seq, storedAt, reducer: reducer.name, reducerVersion: version };
      // Only the newest state is worth keeping: older asOf loads start from scratch anyway.
      if (asOfSeq === undefined && asOfTime === undefined) await this.#snapshots.save(subject, snapshot);
    }
    return { state, revision, seq, fromSnapshot, eventsRead };
  }

  async close(): Promise<void> {
    if (this.#ownsPublisher) await this.publisher.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
