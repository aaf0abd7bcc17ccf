import { createInbox, headers as natsHeaders, nuid } from "@nats-io/transport-node";
import type { Msg, MsgHdrs, NatsConnection, Subscription } from "@nats-io/transport-node";
import { InvalidOptionError, PayloadTooLargeError, PublishRejectedError, PublishTimeoutError, PublisherClosedError, StreamUnavailableError } from "./errors.js";
import { serverFeatures } from "./server.js";

/** Messages in flight at once before `publish` waits for acks. */
export const DEFAULT_MAX_IN_FLIGHT = 4096;
/**
 * How long to wait for a PubAck before sending the message again (same `Nats-Msg-Id`);
 * each further attempt waits twice as long as the one before.
 */
export const DEFAULT_ACK_TIMEOUT_MS = 2_000;
// A slow server is far more common than a lost message; never wait less than this after a resend storm.
const MAX_ACK_TIMEOUT_MS = 30_000;
/** Sends of one message while connected before it fails with `PublishTimeoutError`. */
export const DEFAULT_MAX_ATTEMPTS = 5;
/** Longest a message may wait for its ack, disconnected time included. */
export const DEFAULT_DEADLINE_MS = 60_000;

/** JetStream `err_code`s the publisher understands; they never leave `streams/`. */
export const JS_ERR = {
  wrongLastSequence: 10071,
  streamNotFound: 10059,
  temporarilyUnavailable: 10008,
  /** Atomic batch publish is not enabled on the stream (`allow_atomic`). */
  atomicDisabled: 10174,
  /** The batch was abandoned (incomplete: a message went missing, or it timed out). */
  batchIncomplete: 10176,
  /** More messages than the server's batch limit (`max_batch_size`, 1000 by default). */
  batchTooLarge: 10199,
  /** An atomic batch holds a `Nats-Msg-Id` the stream already stored. */
  batchDuplicateId: 10201,
  /** Fast-ingest batch publishing is not enabled on the stream (`allow_batched`). */
  fastBatchDisabled: 10205,
  /** The fast-ingest batch is unknown to the server (ended by an error, a gap, or abandoned). */
  batchUnknown: 10208,
} as const;

/** Flow-control interval FlexCore asks of the server for fast-ingest batches: an ack every this many messages. */
export const FAST_BATCH_ACK_INTERVAL = 256;
/** Most messages in one fast-ingest batch: smaller batches are acknowledged sooner, so the window refills while the server stores the next. */
export const FAST_BATCH_MAX = 512;
// The streams fast-ingest batches may go to, by the subject's first token: a batch stays in one stream.
const BATCH_STREAMS: Readonly<Record<string, string>> = { evt: "FLEX_EVENTS", drv: "FLEX_DERIVED" };
const FAST_OP = { start: 0, append: 1, commit: 2, end: 3, ping: 4 } as const;
const EXPECT_HEADERS = ["Nats-Expected-Last-Subject-Sequence", "Nats-Expected-Last-Sequence", "Nats-Expected-Last-Msg-Id", "Nats-Expected-Stream"];
const APPEND_TAIL = `.${FAST_OP.append}.$FI`;

// A message with an expectation is never batched (its own ack says whether it held).
function hasExpectation(headers: MsgHdrs): boolean {
  for (const name of EXPECT_HEADERS) if (headers.has(name)) return true;
  return false;
}

/** Options of {@link createPublisher}. */
export interface PublisherOptions {
  /**
   * Fast-ingest batches (nats-server 2.14+, `allow_batched` on the stream): messages to
   * `evt.>` and `drv.>` published in the same event-loop turn go as one batch, which the
   * server acknowledges once at its end instead of one PubAck per message. The guarantees
   * stay (every acked message is stored, a resend with the same `Nats-Msg-Id` is stored
   * once), but such an ack (`batched: true`) carries the sequence of the batch's last
   * message (this one is stored at or before it: enough to wait for a projection) and does
   * not say whether the message was a duplicate (`duplicate` is false). Messages with an
   * expectation header (e.g.
   * `expectedLastSubjectSequence`) are never batched. `"auto"` falls back to one ack per
   * message where the server or the stream does not take batches. `"off"`: one PubAck per
   * message.
   * @default "off"
   */
  readonly batching?: "auto" | "off";
  /** @default 4096 */
  readonly maxInFlight?: number;
  /** First ack timeout; it doubles with every resend (at most 30 s). @default 2000 */
  readonly ackTimeoutMs?: number;
  /** @default 5 */
  readonly maxAttempts?: number;
  /** @default 60000 */
  readonly deadlineMs?: number;
}

/** Per-message options of {@link Publisher.publish}. */
export interface PublishOptions {
  /** Headers to send; must carry `Nats-Msg-Id` for retries to be deduplicated. */
  readonly headers?: MsgHdrs;
  /** Shorthand for a `Nats-Msg-Id` header. */
  readonly msgId?: string;
  /** `Nats-Expected-Last-Subject-Sequence`: store only if the subject's last message has this sequence (0: none). */
  readonly expectedLastSubjectSequence?: number;
  /** Rejects instead of publishing when aborted before the message was sent. */
  readonly signal?: AbortSignal;
}

/** The stream's acknowledgement of a stored message. */
export interface PublishAck {
  readonly stream: string;
  /** The message's stream sequence; for a `batched` ack, the batch's last one (the message is stored at or before it). */
  readonly seq: number;
  /** True when the server had already stored a message with this `Nats-Msg-Id` (never known for a batched message). */
  readonly duplicate: boolean;
  /** Acknowledged by a fast-ingest batch (`batching: "auto"`): stored once; `seq` is an upper bound and `duplicate` is not known. */
  readonly batched?: true;
}

/** Counters since the publisher was created. */
export interface PublisherStats {
  readonly acked: number;
  readonly failed: number;
  readonly retries: number;
  readonly inFlight: number;
}

/** One message of {@link Publisher.publishAll}. */
export interface OutgoingMessage {
  readonly subject: string;
  readonly data: Uint8Array;
  /** Should carry `Nats-Msg-Id`, so that a resend is stored once. */
  readonly headers?: MsgHdrs;
}

/**
 * A pipelined JetStream publisher: many publishes in flight over one reply subscription,
 * each settled exactly once as acked or failed.
 */
export interface Publisher extends AsyncDisposable {
  /** Publishes and resolves with the PubAck; waits first while `maxInFlight` messages are unacknowledged. */
  publish(subject: string, data: Uint8Array, options?: PublishOptions): Promise<PublishAck>;
  /**
   * Publishes messages in order (waiting for free slots as `publish` does) and resolves,
   * once every one is settled, with each one's PubAck or error at its index (it rejects
   * only when `messages` is not an array). One promise for the batch instead of one per
   * message.
   */
  publishAll(messages: readonly OutgoingMessage[]): Promise<Array<PublishAck | Error>>;
  /** Resolves when every message published so far is settled. */
  flush(): Promise<void>;
  readonly stats: PublisherStats;
  /** Waits for in-flight messages (failing them if the connection is gone), then unsubscribes. */
  close(): Promise<void>;
}

/** Told once how a message ended: the promise of one `publish`, or a `publishAll` batch. */
interface Settler {
  settled(index: number, err: Error | undefined, ack: PublishAck | undefined): void;
}

class OneSettler implements Settler {
  constructor(readonly resolve: (ack: PublishAck) => void, readonly reject: (err: Error) => void) {}
  settled(_index: number, err: Error | undefined, ack: PublishAck | undefined): void {
    if (err) this.reject(err);
    else this.resolve(ack!);
  }
}

class BatchSettler implements Settler {
  #left: number;
  constructor(readonly results: Array<PublishAck | Error>, readonly resolve: (results: Array<PublishAck | Error>) => void) {
    this.#left = results.length;
  }
  settled(index: number, err: Error | undefined, ack: PublishAck | undefined): void {
    this.results[index] = err ?? ack!;
    if (--this.#left === 0) this.resolve(this.results);
  }
}

interface Pending {
  /** Key in the pending map; base 36 in the reply subject of a single publish. */
  readonly token: number;
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs | undefined;
  readonly firstSent: number;
  lastSent: number;
  attempts: number;
  readonly settler: Settler;
  /** The message's index in its `publishAll` batch (0 for `publish`). */
  readonly index: number;
  /** The fast-ingest batch it was last sent in, and its sequence there. */
  batch: FastBatch | undefined;
  batchSeq: number;
  /** Never batched (an expectation header, or its batch failed). */
  single: boolean;
}

/** A fast-ingest batch in flight: its messages by batch sequence (index 0 = sequence 1). */
interface FastBatch {
  readonly id: string;
  readonly root: string;
  readonly stream: string;
  readonly entries: Array<Pending | undefined>;
  /** Highest batch sequence the server acknowledged. */
  acked: number;
  done: boolean;
}

interface FastReply {
  type?: string;
  seq?: number;
  batch?: string;
  count?: number;
  stream?: string;
  error?: { code?: number; err_code?: number; description?: string };
}

interface AckBody {
  stream?: string;
  seq?: number;
  duplicate?: boolean;
  error?: { code?: number; err_code?: number; description?: string };
}

const decoder = new TextDecoder();
const EMPTY = new Uint8Array(0);

function positiveInt(field: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1) throw new InvalidOptionError(field, value, "an integer from 1 and up");
  return value;
}

/** Creates a {@link Publisher} on `nc`. */
export function createPublisher(nc: NatsConnection, options: PublisherOptions = {}): Publisher {
  return new WindowPublisher(nc, options);
}

class WindowPublisher implements Publisher {
  readonly #nc: NatsConnection;
  readonly #maxInFlight: number;
  readonly #ackTimeoutMs: number;
  readonly #maxAttempts: number;
  readonly #deadlineMs: number;
  readonly #prefix: string;
  readonly #sub: Subscription;
  #fastSub: Subscription | undefined;
  readonly #pending = new Map<number, Pending>();
  readonly #slotWaiters: Array<() => void> = [];
  #slotHead = 0;
  readonly #idleWaiters: Array<() => void> = [];
  readonly #timer: NodeJS.Timeout;
  #outbox: Pending[] = [];
  #next = 0;
  #connected = true;
  #closed = false;
  readonly #batching: boolean;
  readonly #fastPrefix: string;
  readonly #batches = new Map<string, FastBatch>();
  // Roots whose stream refused fast-ingest batches (no allow_batched): one ack per message there.
  readonly #unbatchable = new Set<string>();
  #acked = 0;
  #failed = 0;
  #retries = 0;

  constructor(nc: NatsConnection, options: PublisherOptions) {
    this.#nc = nc;
    this.#maxInFlight = positiveInt("maxInFlight", options.maxInFlight, DEFAULT_MAX_IN_FLIGHT);
    this.#ackTimeoutMs = positiveInt("ackTimeoutMs", options.ackTimeoutMs, DEFAULT_ACK_TIMEOUT_MS);
    this.#maxAttempts = positiveInt("maxAttempts", options.maxAttempts, DEFAULT_MAX_ATTEMPTS);
    this.#deadlineMs = positiveInt("deadlineMs", options.deadlineMs, DEFAULT_DEADLINE_MS);
    if (options.batching !== undefined && options.batching !== "auto" && options.batching !== "off") throw new InvalidOptionError("batching", options.batching, '"auto" or "off"');
    this.#batching = options.batching === "auto" && serverFeatures(nc.info?.version ?? "0.0.0").fastIngest;
    this.#prefix = createInbox();
    this.#fastPrefix = `${this.#prefix}.f`;
    this.#sub = nc.subscribe(`${this.#prefix}.*`, { callback: (err, msg) => (err ? undefined : this.#onAck(msg)) });
    if (this.#batching) this.#fastSub = nc.subscribe(`${this.#fastPrefix}.>`, { callback: (err, msg) => (err ? undefined : this.#onFastReply(msg)) });
    this.#timer = setInterval(() => this.#scan(), Math.max(25, Math.floor(this.#ackTimeoutMs / 4)));
    this.#timer.unref();
    void this.#watchStatus();
    void nc.closed().then((err) => this.#failAll(new PublisherClosedError("connection", { cause: err ?? undefined })));
  }

  get stats(): PublisherStats {
    return { acked: this.#acked, failed: this.#failed, retries: this.#retries, inFlight: this.#pending.size };
  }

  // Not an async function: with a free slot, the message starts in the caller's turn and its
  // one promise is the one returned (an async wrapper added a second promise and two
  // microtask hops per message, ~1 µs of client CPU per event at 100k events/s).
  publish(subject: string, data: Uint8Array, options: PublishOptions = {}): Promise<PublishAck> {
    const limit = this.#nc.info?.max_payload;
    if (limit !== undefined && data.length > limit) return Promise.reject(new PayloadTooLargeError(subject, data.length, limit));
    if (this.#pending.size >= this.#maxInFlight && !this.#closed) return this.#publishWhenFree(subject, data, options);
    return this.#publishNow(subject, data, options);
  }

  async #publishWhenFree(subject: string, data: Uint8Array, options: PublishOptions): Promise<PublishAck> {
    while (this.#pending.size >= this.#maxInFlight && !this.#closed) {
      await new Promise<void>((res) => this.#slotWaiters.push(res));
    }
    return this.#publishNow(subject, data, options);
  }

  #publishNow(subject: string, data: Uint8Array, options: PublishOptions): Promise<PublishAck> {
    if (this.#closed || this.#nc.isClosed()) return Promise.reject(new PublisherClosedError(subject));
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    let h = options.headers;
    if (options.msgId !== undefined || options.expectedLastSubjectSequence !== undefined) {
      try {
        h ??= natsHeaders();
        if (options.msgId !== undefined) h.set("Nats-Msg-Id", options.msgId);
        if (options.expectedLastSubjectSequence !== undefined) h.set("Nats-Expected-Last-Subject-Sequence", String(options.expectedLastSubjectSequence));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return new Promise<PublishAck>((resolve, reject) => this.#start(subject, data, h, new OneSettler(resolve, reject), 0));
  }

  async publishAll(messages: readonly OutgoingMessage[]): Promise<Array<PublishAck | Error>> {
    if (!Array.isArray(messages)) throw new InvalidOptionError("messages", messages, "an array of { subject, data, headers }");
    const results = new Array<PublishAck | Error>(messages.length);
    if (messages.length === 0) return results;
    let resolveAll!: (results: Array<PublishAck | Error>) => void;
    const done = new Promise<Array<PublishAck | Error>>((res) => (resolveAll = res));
    const batch = new BatchSettler(results, resolveAll);
    const limit = this.#nc.info?.max_payload;
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i]!;
      if (limit !== undefined && m.data.length > limit) {
        batch.settled(i, new PayloadTooLargeError(m.subject, m.data.length, limit), undefined);
        continue;
      }
      while (this.#pending.size >= this.#maxInFlight && !this.#closed) {
        await new Promise<void>((res) => this.#slotWaiters.push(res));
      }
      if (this.#closed || this.#nc.isClosed()) {
        batch.settled(i, new PublisherClosedError(m.subject), undefined);
        continue;
      }
      this.#start(m.subject, m.data, m.headers, batch, i);
    }
    return done;
  }

  #start(subject: string, data: Uint8Array, headers: MsgHdrs | undefined, settler: Settler, index: number): void {
    const token = this.#next++;
    const now = Date.now();
    const entry: Pending = { token, subject, data, headers, firstSent: now, lastSent: now, attempts: 1, settler, index, batch: undefined, batchSeq: 0, single: !this.#batching || (headers !== undefined && hasExpectation(headers)) };
    this.#pending.set(token, entry);
    this.#queue(entry);
  }

  async flush(): Promise<void> {
    if (this.#pending.size === 0) return;
    await new Promise<void>((res) => this.#idleWaiters.push(res));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    if (!this.#nc.isClosed()) await this.flush();
    this.#closed = true;
    clearInterval(this.#timer);
    this.#failAll(new PublisherClosedError("publisher"));
    for (const wake of this.#slotWaiters.splice(0).slice(this.#slotHead)) wake();
    this.#slotHead = 0;
    if (!this.#nc.isClosed()) {
      this.#sub.unsubscribe();
      this.#fastSub?.unsubscribe();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // Messages are handed to the connection once per event-loop turn (setImmediate), not one
  // by one: nats.js writes to the socket once per microtask checkpoint, so publishes made by
  // separate I/O callbacks (e.g. 64 HTTP appends read in one poll) would each cost a socket
  // write here and a read on the server; sent together they share one.
  #send(entry: Pending): void {
    entry.attempts += 1;
    entry.lastSent = Date.now();
    this.#queue(entry);
  }

  #queue(entry: Pending): void {
    this.#outbox.push(entry);
    if (this.#outbox.length === 1) setImmediate(this.#drainOutbox);
  }

  readonly #drainOutbox = (): void => {
    const outbox = this.#outbox;
    this.#outbox = [];
    // Messages of this turn that may go in a fast-ingest batch, by root (one batch per stream).
    let groups: Map<string, Pending[]> | undefined;
    for (const entry of outbox) {
      if (this.#pending.get(entry.token) !== entry) continue; // settled meanwhile (close, failAll)
      if (!entry.single) {
        const root = entry.subject.slice(0, entry.subject.indexOf("."));
        if (BATCH_STREAMS[root] !== undefined && !this.#unbatchable.has(root)) {
          groups ??= new Map();
          const g = groups.get(root);
          if (g) g.push(entry);
          else groups.set(root, [entry]);
          continue;
        }
      }
      this.#sendOne(entry);
    }
    if (groups) {
      for (const [root, entries] of groups) {
        if (entries.length <= FAST_BATCH_MAX) this.#sendBatch(root, entries);
        else for (let i = 0; i < entries.length; i += FAST_BATCH_MAX) this.#sendBatch(root, entries.slice(i, i + FAST_BATCH_MAX));
      }
    }
  };

  #sendOne(entry: Pending): void {
    entry.batch = undefined;
    try {
      this.#nc.publish(entry.subject, entry.data, { reply: `${this.#prefix}.${entry.token.toString(36)}`, headers: entry.headers });
    } catch (err) {
      // A bad subject or a closed connection: nothing was sent and nothing will be.
      this.#settle(entry, err instanceof Error ? new PublishRejectedError(entry.subject, err.message) : new PublisherClosedError(entry.subject));
    }
  }

  // One fast-ingest batch (ADR-50, 2.14): start, appends, then an end-of-batch marker that
  // stores nothing and makes the server answer with the batch's final ack. The reply
  // subject tells the server the batch id, the ack interval, the gap mode (fail: a lost
  // message ends the batch), the batch sequence and the operation.
  #sendBatch(root: string, entries: Pending[]): void {
    if (entries.length === 1) return this.#sendOne(entries[0]!);
    const batch: FastBatch = { id: nuid.next(), root, stream: BATCH_STREAMS[root]!, entries: [], acked: 0, done: false };
    this.#batches.set(batch.id, batch);
    const head = `${this.#fastPrefix}.${batch.id}.${FAST_BATCH_ACK_INTERVAL}.fail.`;
    const reply = (seq: number, op: number): string => `${head}${seq}.${op}.$FI`;
    for (const entry of entries) {
      const seq = batch.entries.push(entry);
      entry.batch = batch;
      entry.batchSeq = seq;
      try {
        this.#nc.publish(entry.subject, entry.data, { reply: seq === 1 ? reply(seq, FAST_OP.start) : head + seq + APPEND_TAIL, headers: entry.headers });
      } catch (err) {
        batch.entries[seq - 1] = undefined;
        this.#settle(entry, err instanceof Error ? new PublishRejectedError(entry.subject, err.message) : new PublisherClosedError(entry.subject));
      }
    }
    try {
      this.#nc.publish(entries[0]!.subject, EMPTY, { reply: reply(batch.entries.length + 1, FAST_OP.end) });
    } catch {
      // The connection is closing: failAll settles the entries.
    }
  }

  #onFastReply(msg: Msg): void {
    // <prefix>.f.<batch>.<interval>.<gap mode>.<seq>.<op>.$FI
    const parts = msg.subject.slice(this.#fastPrefix.length + 1).split(".");
    const batch = this.#batches.get(parts[0] ?? "");
    if (!batch) return; // a batch given up (reconnect) or finished
    const seq = Number(parts[3]);
    let body: FastReply;
    try {
      body = JSON.parse(decoder.decode(msg.data)) as FastReply;
    } catch {
      return this.#endBatch(batch, undefined);
    }
    if (typeof body.batch === "string") {
      // The final ack: the first `count` messages were processed (stored or deduplicated),
      // all at or before stream sequence `seq` (0 when the batch ended early: the rest is
      // then sent again one by one, and answered with exact sequences).
      if (!body.error && (body.seq ?? 0) > 0) this.#ackBatch(batch, body.count ?? 0, body.seq!);
      return this.#endBatch(batch, undefined);
    }
    // Flow-control acks (`type: "ack"`) report progress within the batch without stream
    // sequences; messages are settled by the final ack, which gives one. A gap ends the
    // batch (gap mode "fail"): its final ack follows.
    if (body.type === "ack" || body.type === "gap") return;
    if (body.type === "err" || body.error) {
      const code = body.error?.err_code;
      if (code === JS_ERR.fastBatchDisabled) {
        this.#unbatchable.add(batch.root);
        return this.#endBatch(batch, undefined);
      }
      // The message at `seq` was refused (a stream limit, a bad header): that one fails like a
      // single publish would; the batch ends with it and the others are sent again.
      const failed = body.type === "err" ? batch.entries[(body.seq ?? seq) - 1] : undefined;
      return this.#endBatch(batch, failed ? { entry: failed, error: new PublishRejectedError(failed.subject, body.error?.description ?? "unknown error", code) } : undefined);
    }
  }

  #ackBatch(batch: FastBatch, upTo: number, lastSeq: number): void {
    const ack: PublishAck = { stream: batch.stream, seq: lastSeq, duplicate: false, batched: true };
    for (let s = batch.acked + 1; s <= Math.min(upTo, batch.entries.length); s++) {
      const entry = batch.entries[s - 1];
      batch.entries[s - 1] = undefined;
      if (entry && entry.batch === batch) this.#settle(entry, undefined, ack);
    }
    batch.acked = Math.max(batch.acked, upTo);
  }

  // The batch is over (final ack, an error, a gap): what it did not acknowledge is sent again
  // on its own, with the same Nats-Msg-Id, so what was stored after all is stored once.
  #endBatch(batch: FastBatch, failed: { entry: Pending; error: Error } | undefined): void {
    if (batch.done) return;
    batch.done = true;
    this.#batches.delete(batch.id);
    if (failed) this.#settle(failed.entry, failed.error);
    for (const entry of batch.entries) {
      if (!entry || entry.batch !== batch || this.#pending.get(entry.token) !== entry) continue;
      entry.single = true;
      entry.batch = undefined;
      this.#send(entry);
    }
  }

  #onAck(msg: Msg): void {
    const entry = this.#pending.get(Number.parseInt(msg.subject.slice(this.#prefix.length + 1), 36));
    if (!entry) return; // a late ack of a message already settled by an earlier ack
    if (msg.headers?.hasError) {
      // 503: no stream listens on the subject (or JetStream is not ready after a restart).
      if (msg.headers.code === 503 && entry.attempts < this.#maxAttempts) return this.#retryLater(entry);
      return this.#settle(entry, msg.headers.code === 503 ? new StreamUnavailableError(entry.subject, entry.attempts) : new PublishRejectedError(entry.subject, `${msg.headers.code} ${msg.headers.description}`));
    }
    let body: AckBody;
    try {
      body = JSON.parse(decoder.decode(msg.data)) as AckBody;
    } catch {
      return this.#settle(entry, new PublishRejectedError(entry.subject, "the server's reply was not a PubAck"));
    }
    if (body.error) {
      if (body.error.err_code === JS_ERR.temporarilyUnavailable && entry.attempts < this.#maxAttempts) return this.#retryLater(entry);
      return this.#settle(entry, new PublishRejectedError(entry.subject, body.error.description ?? "unknown error", body.error.err_code));
    }
    this.#settle(entry, undefined, { stream: body.stream ?? "", seq: body.seq ?? 0, duplicate: body.duplicate === true });
  }

  #retryLater(entry: Pending): void {
    // Move to the back: the scan re-sends it once its ack timeout has passed.
    this.#pending.delete(entry.token);
    entry.lastSent = Date.now();
    this.#pending.set(entry.token, entry);
  }

  #scan(): void {
    if (!this.#connected || this.#closed) return;
    const now = Date.now();
    const due: Pending[] = [];
    for (const entry of this.#pending.values()) {
      if (now - entry.firstSent > this.#deadlineMs) {
        this.#settle(entry, new PublishTimeoutError(entry.subject, entry.attempts));
        continue;
      }
      // Back off: an overloaded server should not get every unacked message again at once.
      const wait = Math.min(MAX_ACK_TIMEOUT_MS, this.#ackTimeoutMs * 2 ** Math.max(0, entry.attempts - 1));
      if (now - entry.lastSent >= wait) due.push(entry);
    }
    for (const entry of due) {
      if (entry.attempts >= this.#maxAttempts) {
        this.#settle(entry, new PublishTimeoutError(entry.subject, entry.attempts));
        continue;
      }
      this.#retries += 1;
      this.#pending.delete(entry.token);
      this.#pending.set(entry.token, entry);
      this.#send(entry);
    }
  }

  async #watchStatus(): Promise<void> {
    for await (const s of this.#nc.status()) {
      if (s.type === "disconnect") {
        this.#connected = false;
      } else if (s.type === "reconnect") {
        this.#connected = true;
        // The server forgot its batches with the old connection (or the restart).
        for (const batch of this.#batches.values()) batch.done = true;
        this.#batches.clear();
        // What was sent to the old connection may be lost: send everything again now
        // (same Nats-Msg-Id, so what did arrive is deduplicated), without spending an attempt.
        for (const entry of [...this.#pending.values()]) {
          this.#retries += 1;
          entry.attempts -= 1;
          this.#pending.delete(entry.token);
          this.#pending.set(entry.token, entry);
          this.#send(entry);
        }
      }
    }
  }

  #settle(entry: Pending, err: Error | undefined, ack?: PublishAck): void {
    if (!this.#pending.delete(entry.token)) return;
    if (err) this.#failed += 1;
    else this.#acked += 1;
    entry.settler.settled(entry.index, err, ack);
    this.#wakeOne();
    if (this.#pending.size === 0) for (const wake of this.#idleWaiters.splice(0)) wake();
  }

  // FIFO of publishes waiting for a slot. Array#shift copies the rest of the array, and
  // thousands wait when a batch outruns maxInFlight, so the head is an index instead.
  #wakeOne(): void {
    const waiters = this.#slotWaiters;
    if (this.#slotHead >= waiters.length) return;
    const wake = waiters[this.#slotHead]!;
    this.#slotHead += 1;
    if (this.#slotHead === waiters.length) {
      waiters.length = 0;
      this.#slotHead = 0;
    } else if (this.#slotHead >= 1024 && this.#slotHead * 2 >= waiters.length) {
      waiters.splice(0, this.#slotHead);
      this.#slotHead = 0;
    }
    wake();
  }

  #failAll(err: Error): void {
    for (const entry of [...this.#pending.values()]) this.#settle(entry, new PublisherClosedError(entry.subject, { cause: err }));
    for (const wake of this.#slotWaiters.splice(0).slice(this.#slotHead)) wake();
    this.#slotHead = 0;
  }
}
