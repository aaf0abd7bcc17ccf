import { createInbox, headers as natsHeaders } from "@nats-io/transport-node";
import type { Msg, MsgHdrs, NatsConnection, Subscription } from "@nats-io/transport-node";
import { InvalidOptionError, PayloadTooLargeError, PublishRejectedError, PublishTimeoutError, PublisherClosedError } from "./errors.js";

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
  wrongLastMsgId: 10070,
  streamNotFound: 10059,
  temporarilyUnavailable: 10008,
} as const;

/** Options of {@link createPublisher}. */
export interface PublisherOptions {
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
  readonly seq: number;
  /** True when the server had already stored a message with this `Nats-Msg-Id`. */
  readonly duplicate: boolean;
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
  readonly token: string;
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs | undefined;
  readonly firstSent: number;
  lastSent: number;
  attempts: number;
  readonly settler: Settler;
  /** The message's index in its `publishAll` batch (0 for `publish`). */
  readonly index: number;
}

interface AckBody {
  stream?: string;
  seq?: number;
  duplicate?: boolean;
  error?: { code?: number; err_code?: number; description?: string };
}

const decoder = new TextDecoder();

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
  readonly #pending = new Map<string, Pending>();
  readonly #slotWaiters: Array<() => void> = [];
  #slotHead = 0;
  readonly #idleWaiters: Array<() => void> = [];
  readonly #timer: NodeJS.Timeout;
  #outbox: Pending[] = [];
  #next = 0;
  #connected = true;
  #closed = false;
  #acked = 0;
  #failed = 0;
  #retries = 0;

  constructor(nc: NatsConnection, options: PublisherOptions) {
    this.#nc = nc;
    this.#maxInFlight = positiveInt("maxInFlight", options.maxInFlight, DEFAULT_MAX_IN_FLIGHT);
    this.#ackTimeoutMs = positiveInt("ackTimeoutMs", options.ackTimeoutMs, DEFAULT_ACK_TIMEOUT_MS);
    this.#maxAttempts = positiveInt("maxAttempts", options.maxAttempts, DEFAULT_MAX_ATTEMPTS);
    this.#deadlineMs = positiveInt("deadlineMs", options.deadlineMs, DEFAULT_DEADLINE_MS);
    this.#prefix = createInbox();
    this.#sub = nc.subscribe(`${this.#prefix}.*`, { callback: (err, msg) => (err ? undefined : this.#onAck(msg)) });
    this.#timer = setInterval(() => this.#scan(), Math.max(25, Math.floor(this.#ackTimeoutMs / 4)));
    this.#timer.unref();
    void this.#watchStatus();
    void nc.closed().then((err) => this.#failAll(new PublisherClosedError("connection", { cause: err ?? undefined })));
  }

  get stats(): PublisherStats {
    return { acked: this.#acked, failed: this.#failed, retries: this.#retries, inFlight: this.#pending.size };
  }

  async publish(subject: string, data: Uint8Array, options: PublishOptions = {}): Promise<PublishAck> {
    const limit = this.#nc.info?.max_payload;
    if (limit !== undefined && data.length > limit) throw new PayloadTooLargeError(subject, data.length, limit);
    while (this.#pending.size >= this.#maxInFlight && !this.#closed) {
      await new Promise<void>((res) => this.#slotWaiters.push(res));
    }
    if (this.#closed || this.#nc.isClosed()) throw new PublisherClosedError(subject);
    options.signal?.throwIfAborted();
    let h = options.headers;
    if (options.msgId !== undefined || options.expectedLastSubjectSequence !== undefined) {
      h ??= natsHeaders();
      if (options.msgId !== undefined) h.set("Nats-Msg-Id", options.msgId);
      if (options.expectedLastSubjectSequence !== undefined) h.set("Nats-Expected-Last-Subject-Sequence", String(options.expectedLastSubjectSequence));
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
    const token = (this.#next++).toString(36);
    const now = Date.now();
    const entry: Pending = { token, subject, data, headers, firstSent: now, lastSent: now, attempts: 0, settler, index };
    this.#pending.set(token, entry);
    this.#send(entry);
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
    if (!this.#nc.isClosed()) this.#sub.unsubscribe();
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
    this.#outbox.push(entry);
    if (this.#outbox.length === 1) setImmediate(this.#drainOutbox);
  }

  readonly #drainOutbox = (): void => {
    const batch = this.#outbox;
    this.#outbox = [];
    for (const entry of batch) {
      if (this.#pending.get(entry.token) !== entry) continue; // settled meanwhile (close, failAll)
      try {
        this.#nc.publish(entry.subject, entry.data, { reply: `${this.#prefix}.${entry.token}`, headers: entry.headers });
      } catch (err) {
        // A bad subject or a closed connection: nothing was sent and nothing will be.
        this.#settle(entry, err instanceof Error ? new PublishRejectedError(entry.subject, err.message) : new PublisherClosedError(entry.subject));
      }
    }
  };

  #onAck(msg: Msg): void {
    const token = msg.subject.slice(this.#prefix.length + 1);
    const entry = this.#pending.get(token);
    if (!entry) return; // a late ack of a message already settled by an earlier ack
    if (msg.headers?.hasError) {
      // 503: no stream listens on the subject (or JetStream is not ready after a restart).
      if (msg.headers.code === 503 && entry.attempts < this.#maxAttempts) return this.#retryLater(entry);
      return this.#settle(entry, new PublishRejectedError(entry.subject, msg.headers.code === 503 ? "no stream stores this subject" : `${msg.headers.code} ${msg.headers.description}`));
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
