import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamClient, JetStreamManager, JsMsg, StoredMsg } from "@nats-io/jetstream";
import { headers as natsHeaders, nuid } from "@nats-io/transport-node";
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import { AbortedError, ConcurrencyError, InvalidEventError, InvalidOptionError, PublishRejectedError } from "./errors.js";
import { decodeEvent, encodeEvent, eventFromMsg, HEADERS } from "./event.js";
import type { EncodedEvent, EventInput, RawMessage, StoredEvent } from "./event.js";
import { createPublisher, JS_ERR } from "./publisher.js";
import type { PublishAck, Publisher, PublisherOptions } from "./publisher.js";
import { openStreamReader } from "./stream-reader.js";
import type { StreamReader } from "./stream-reader.js";
import { openSnapshotStore } from "./snapshots.js";
import type { Snapshot, SnapshotStore } from "./snapshots.js";
import { checkSubjectFilter, eventSubject, parseSubject } from "./subjects.js";
import { STREAMS } from "./topology.js";

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
// Publishing with an expected last message id no message has stores nothing, but the
// server still answers "duplicate" for an id it has already stored (see #probe).
const EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id";
const MAX_ANY_RETRIES = 64;

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
  const publisher = options.publisher ?? createPublisher(nc, options.publisherOptions);
  return new JetStreamEventStore(nc, js, jsm, snapshots, publisher, options.publisher === undefined, snapshotEvery, headCacheSize);
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
  readonly publisher: Publisher;

  constructor(nc: NatsConnection, js: JetStreamClient, jsm: JetStreamManager, snapshots: SnapshotStore, publisher: Publisher, ownsPublisher: boolean, snapshotEvery: number, headCacheSize: number) {
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
        if (resumed) return resumed;
        throw new ConcurrencyError(subject, expected, head.revision);
      }
      const outcome = await this.#publishChain(subject, encoded, head);
      if (outcome.kind === "ok") return outcome.result;
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
      return { kind: "ok", result: { ...(await this.#positionOf(subject, encoded[encoded.length - 1]!)), duplicates } };
    }
    this.#remember(subject, { revision, seq });
    return { kind: "ok", result: { revision, seq, duplicates } };
  }

  // A retried append whose events were already stored: the ids are deduplicated, so the
  // call succeeds as the first one did (and completes a partly stored multi-event append).
  async #resumeIfStored(subject: string, encoded: readonly EncodedEvent[], head: Head): Promise<AppendResult | undefined> {
    let stored = 0;
    let lastSeq = 0;
    for (const e of encoded) {
      try {
        const ack = await this.#probe(subject, e);
        if (!ack.duplicate) throw new Error("probe stored an event"); // cannot happen: no message has that id
        stored += 1;
        lastSeq = ack.seq;
      } catch (err) {
        if (err instanceof PublishRejectedError && err.serverCode === JS_ERR.wrongLastMsgId) break;
        throw err;
      }
    }
    if (stored === 0) return undefined;
    if (stored === encoded.length) return { ...(await this.#positionOf(subject, encoded[stored - 1]!, lastSeq)), duplicates: stored };
    if (lastSeq !== head.seq) return undefined; // others appended after the partial append
    const outcome = await this.#publishChain(subject, encoded.slice(stored), head);
    if (outcome.kind === "conflict") return undefined;
    return { ...outcome.result, duplicates: outcome.result.duplicates + stored };
  }

  // Asks whether the event's id is stored (in the dedupe window) without storing it: the
  // server answers a duplicate before it checks Nats-Expected-Last-Msg-Id, which names an id
  // no message has. (Nats-Expected-Last-Subject-Sequence is checked before the dedupe on
  // 2.12+, so it cannot serve as the probe.)
  #probe(subject: string, e: EncodedEvent): Promise<PublishAck> {
    const h = natsHeaders();
    h.set(HEADERS.msgId, e.id);
    h.set(EXPECTED_LAST_MSG_ID, `flexcore-probe-${nuid.next()}`);
    return this.publisher.publish(subject, new Uint8Array(0), { headers: h });
  }

  async #positionOf(subject: string, e: EncodedEvent, knownSeq?: number): Promise<{ revision: number; seq: number }> {
    const seq = knownSeq ?? (await this.#probe(subject, e).then((a) => a.seq, () => 0));
    const msg = seq > 0 ? await this.#jsm.direct.getMessage(STREAMS.events, { seq }) : null;
    const rev = msg?.header?.get(HEADERS.revision);
    return { revision: rev ? Number(rev) : (await this.#readHead(subject)).revision, seq };
  }

  async head(stream: AggregateRef): Promise<{ revision: number; seq: number }> {
    return this.#readHead(toSubject(stream));
  }

  async #readHead(subject: string): Promise<Head> {
    const last = await this.#jsm.direct.getMessage(STREAMS.events, { last_by_subj: subject });
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
    const out: StoredEvent[] = [];
    let position = 0;
    await this.#scan(subject, 1, head.seq, head.revision, options.signal, (raw) => {
      position += 1;
      const event = decodeEvent(raw);
      const revision = event.revision ?? position;
      if (revision >= first && revision <= last) out.push(event.revision === undefined ? { ...event, revision } : event);
      return revision < last;
    });
    return direction === "backward" ? out.reverse() : out;
  }

  // Calls `onMessage` for the subject's messages from startSeq to endSeq, in order, until it returns false.
  async #scan(subject: string, startSeq: number, endSeq: number, expectedCount: number, signal: AbortSignal | undefined, onMessage: (m: RawMessage) => boolean): Promise<number> {
    if (endSeq < startSeq) return 0;
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
    let state = reducer.initial();
    let revision = 0;
    let seq = 0;
    let storedAt = 0;
    let fromSnapshot = false;
    if (useSnapshots && head.seq > 0) {
      const snap = await this.#snapshots.load<S>(subject, reducer.name);
      if (snap && snap.reducerVersion === version && snap.seq <= endSeq && (asOfTime === undefined || snap.storedAt <= asOfTime)) {
        ({ state, revision, seq, storedAt } = snap);
        fromSnapshot = true;
      }
    }
    let position = revision;
    const eventsRead = await this.#scan(subject, seq + 1, endSeq, head.revision - revision, options.signal, (raw) => {
      if (asOfTime !== undefined && raw.storedAt > asOfTime) return false;
      position += 1;
      const event = decodeEvent<E>(raw);
      state = reducer.apply(state, event.revision === undefined ? { ...event, revision: position } : event);
      revision = event.revision ?? position;
      seq = raw.seq;
      storedAt = raw.storedAt;
      return true;
    });
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
