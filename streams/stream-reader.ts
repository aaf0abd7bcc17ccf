import { createInbox, nuid } from "@nats-io/transport-node";
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { AckPolicy, DeliverPolicy, jetstreamManager } from "@nats-io/jetstream";
import type { ConsumerConfig, JetStreamManager } from "@nats-io/jetstream";
import { eventFromMsg } from "./event.js";
import type { CoreMsgInternals } from "./event.js";
import type { StoredEvent } from "./event.js";
import { InvalidOptionError } from "./errors.js";

/** Messages the server is asked for at a time. @default 16384 */
export const DEFAULT_READ_WINDOW = 16_384;
/** Heartbeat interval asked of the server while a pull request waits. @default 5000 */
export const DEFAULT_READ_HEARTBEAT_MS = 5_000;
/** How long one pull request waits for messages before the server ends it. */
const PULL_EXPIRES_MS = 30_000;
/**
 * A filter whose events make up at least this share of the stream from the first of them on
 * is read without a server-side filter, the other subjects dropped here (see docs/streams.md:
 * nats-server 2.11+ spends a walk over the block's subjects on every filtered message).
 */
export const DENSE_FILTER_SHARE = 0.5;
/** Timeout of the consumer create and delete requests (a busy server can be slow to answer). */
const API_TIMEOUT_MS = 30_000;
/** An ephemeral consumer left without pull requests this long is removed by the server. */
const INACTIVE_THRESHOLD_MS = 5 * 60_000;
/** Waits between attempts to re-create a consumer that could not be created. */
const RETRY_MS = [250, 500, 1_000, 2_000, 5_000];

/** Options of {@link openStreamReader}. */
export interface StreamReaderOptions {
  readonly stream: string;
  /**
   * Subject filter. When its events are most of the stream from the first of them on
   * ({@link DENSE_FILTER_SHARE}), the server is asked for every subject and the others are
   * dropped here, which is several times faster on nats-server 2.11+. @default every subject
   */
  readonly filter?: string;
  /** First stream sequence to read (1 for the start). Either this or `startTime`. */
  readonly startSeq?: number;
  /** Start at the first message stored at or after this time (ms since the epoch) instead. */
  readonly startTime?: number;
  /**
   * Decode each event's data, and its headers other than type and time, on first access
   * (see `toLazyStoredEvent`); false builds plain objects. @default true
   */
  readonly lazy?: boolean;
  /**
   * Called for every message in stream order, with what the server said was left after it:
   * of the filter's subjects, or, when the filter is read on the client (see `filter`), of
   * every subject (then an upper bound, 0 only at the stream's end).
   */
  readonly onEvent: (event: StoredEvent, pending: number) => void;
  /** Messages in flight. @default DEFAULT_READ_WINDOW */
  readonly window?: number;
  /** Server heartbeat interval; two missed heartbeats re-create the consumer. @default DEFAULT_READ_HEARTBEAT_MS */
  readonly heartbeatMs?: number;
  /** Told each time the consumer is re-created (a gap, a reconnect, missed heartbeats, a deleted consumer) and why. */
  readonly onRecreate?: (fromSeq: number, reason: string) => void;
  /**
   * Told each time re-creating the consumer failed, with the number of failures in a row;
   * the reader retries with back-off until it is closed (`readAll` gives up after a few
   * and closes it).
   */
  readonly onCreateError?: (error: Error, failures: number) => void;
}

/** A running ordered read of one stream. */
export interface StreamReader {
  /** Last sequence handed to `onEvent` (`startSeq - 1`, or 0 with `startTime`, before the first). */
  readonly lastSeq: number;
  /** Times the consumer was re-created. */
  readonly recreated: number;
  /** Stops asking for more messages; what was asked for still arrives. */
  pause(): void;
  resume(): void;
  /** Stops reading and deletes the server's consumer; no `onEvent` call after it resolves. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const DOT = 46;
const ZERO = 48;
const encoder = new TextEncoder();

/** What a JetStream reply subject says of the message it came with. */
export interface AckReplyInfo {
  streamSeq: number;
  deliverySeq: number;
  /** Stored time, ms since the epoch. */
  storedAt: number;
  pending: number;
  /**
   * Offset of the delivered-count token: the same for every message of one consumer, so a
   * parse handed the previous result starts there (0: not known yet).
   */
  numbersAt: number;
}

/** The integer in `bytes[start, end)`, or -1 when it is empty or not all digits. */
function digits(bytes: Uint8Array, start: number, end: number): number {
  if (end <= start) return -1;
  let value = 0;
  for (let i = start; i < end; i++) {
    const d = bytes[i]! - ZERO;
    if (d < 0 || d > 9) return -1;
    value = value * 10 + d;
  }
  return value;
}

// `<delivered>.<sseq>.<dseq>.<ns>.<pending>` from `at` (maybe followed by `.<random>`).
function readNumbers(reply: Uint8Array, at: number, out: AckReplyInfo): boolean {
  let field = 0;
  let start = at;
  let value = 0;
  for (let i = at; i <= reply.length; i++) {
    const b = i < reply.length ? reply[i]! : DOT;
    if (b !== DOT) {
      const d = b - ZERO;
      if (d < 0 || d > 9) return false;
      value = value * 10 + d;
      continue;
    }
    if (i === start) return false;
    if (field === 1) out.streamSeq = value;
    else if (field === 2) out.deliverySeq = value;
    // Nanoseconds do not fit a double exactly: read all but the last 6 digits (ms).
    else if (field === 3) out.storedAt = i - start > 6 ? digits(reply, start, i - 6) : 0;
    else if (field === 4) {
      out.pending = value;
      return true;
    }
    field += 1;
    start = i + 1;
    value = 0;
  }
  return false;
}

/**
 * Reads the numbers of a JetStream reply subject from its bytes, without decoding it:
 * `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ns>.<pending>`, or the form
 * with `<domain>.<account hash>` after `ACK` and maybe a random token at the end.
 * @returns false when `reply` is not a JetStream reply subject.
 */
export function parseAckReply(reply: Uint8Array, out: AckReplyInfo): boolean {
  // "$JS.ACK."
  if (reply.length < 8 || reply[0] !== 36 || reply[1] !== 74 || reply[2] !== 83 || reply[3] !== DOT || reply[4] !== 65 || reply[5] !== 67 || reply[6] !== 75 || reply[7] !== DOT) return false;
  const hint = out.numbersAt;
  if (hint > 8 && hint < reply.length && reply[hint - 1] === DOT && readNumbers(reply, hint, out)) return true;
  let tokens = 1;
  for (let i = 0; i < reply.length; i++) if (reply[i] === DOT) tokens += 1;
  if (tokens !== 9 && tokens < 11) return false;
  // The delivered count is token 4 of the old form, 6 of the new one.
  const first = tokens === 9 ? 4 : 6;
  let at = 0;
  for (let token = 0; token < first; at++) if (reply[at] === DOT) token += 1;
  if (!readNumbers(reply, at, out)) return false;
  out.numbersAt = at;
  return true;
}

/** Whether `subject` matches the filter split into `tokens` (`*` one token, `>` the rest). */
export function subjectMatchesFilter(tokens: readonly string[], subject: string): boolean {
  let at = 0;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (at > subject.length) return false;
    if (t === ">") return at < subject.length;
    let end = subject.indexOf(".", at);
    if (end < 0) end = subject.length;
    if (t !== "*" && (end - at !== t.length || !subject.startsWith(t, at))) return false;
    if (end === at) return false;
    at = end + 1;
  }
  return at > subject.length;
}

/**
 * Reads `stream` in order from `startSeq` with an ephemeral pull consumer (no acks, memory
 * storage) on a plain subscription, and hands every message to `onEvent` as a lazily parsed
 * event. It does what nats.js's ordered consumer does (re-creates the consumer from the
 * next sequence on a delivery gap, missed heartbeats, a reconnect or a deleted consumer)
 * without its per-message work: the reply subject's numbers are read from its bytes, and
 * no `JsMsg` or delivery-info object is built. Unlike a callback consumer it can be
 * paused: it then stops asking for messages.
 */
export async function openStreamReader(nc: NatsConnection, options: StreamReaderOptions): Promise<StreamReader> {
  const window = options.window ?? DEFAULT_READ_WINDOW;
  const heartbeatMs = options.heartbeatMs ?? DEFAULT_READ_HEARTBEAT_MS;
  if (typeof options.stream !== "string" || !/^[^.*>\s]+$/u.test(options.stream)) throw new InvalidOptionError("stream", options.stream, "a stream name");
  if (options.startTime !== undefined) {
    if (options.startSeq !== undefined) throw new InvalidOptionError("startTime", options.startTime, "no startTime with startSeq");
    if (!Number.isFinite(options.startTime) || options.startTime < 0) throw new InvalidOptionError("startTime", options.startTime, "a time in ms since the epoch");
  } else if (!Number.isSafeInteger(options.startSeq) || options.startSeq! < 1) {
    throw new InvalidOptionError("startSeq", options.startSeq, "an integer from 1");
  }
  if (!Number.isSafeInteger(window) || window < 1) throw new InvalidOptionError("window", window, "an integer from 1");
  if (!Number.isSafeInteger(heartbeatMs) || heartbeatMs < 500) throw new InvalidOptionError("heartbeatMs", heartbeatMs, "an integer from 500 (ms)");
  const jsm = await jetstreamManager(nc, { checkAPI: false, timeout: API_TIMEOUT_MS });
  const reader = new PullStreamReader(nc, jsm, options, window, heartbeatMs);
  await reader.start();
  return reader;
}

class PullStreamReader implements StreamReader {
  readonly #nc: NatsConnection;
  readonly #jsm: JetStreamManager;
  readonly #options: StreamReaderOptions;
  readonly #window: number;
  readonly #heartbeatMs: number;
  readonly #lazy: boolean;
  // Short: the name is in every message's reply subject, which the server writes and
  // nats.js's parser reads byte by byte.
  readonly #prefix = `flexr_${nuid.next().slice(-10)}`;
  readonly #info: AckReplyInfo = { streamSeq: 0, deliverySeq: 0, storedAt: 0, pending: 0, numbersAt: 0 };
  #serial = 0;
  #consumer = "";
  #pullSubject = "";
  #sub: Subscription | undefined;
  /** Messages asked for and not yet received (or ended by the server). */
  #credit = 0;
  #deliverySeq = 0;
  #lastSeq: number;
  /** Last sequence received, handed out or dropped by the client-side filter: the next consumer starts after it. */
  #seenSeq: number;
  /** The filter's tokens while the consumer reads every subject (a dense filter), else undefined. */
  #clientFilter: string[] | undefined;
  /** Messages (events and statuses) received; compared by the heartbeat check. */
  #received = 0;
  #receivedAtCheck = 0;
  #silentChecks = 0;
  #paused = false;
  #closed = false;
  #recreating = false;
  #failures = 0;
  /** Whether an event was handed out (then the next consumer starts after it, whatever the start option). */
  #started = false;
  #monitor: NodeJS.Timeout | undefined;
  #retry: NodeJS.Timeout | undefined;
  #statusLoop: Promise<void> | undefined;
  #stopStatus: () => void = () => undefined;
  recreated = 0;

  constructor(nc: NatsConnection, jsm: JetStreamManager, options: StreamReaderOptions, window: number, heartbeatMs: number) {
    this.#nc = nc;
    this.#jsm = jsm;
    this.#options = options;
    this.#window = window;
    this.#heartbeatMs = heartbeatMs;
    this.#lazy = options.lazy ?? true;
    this.#lastSeq = (options.startSeq ?? 1) - 1;
    this.#seenSeq = this.#lastSeq;
  }

  get lastSeq(): number {
    return this.#lastSeq;
  }

  async start(): Promise<void> {
    await this.#create();
    this.#monitor = setInterval(() => this.#checkHeartbeat(), this.#heartbeatMs);
    this.#monitor.unref();
    const status = this.#nc.status();
    this.#statusLoop = (async () => {
      for await (const s of status) {
        if (this.#closed) break;
        if (s.type === "reconnect") this.#recreate("reconnected");
        // A closed connection is told at once (the re-creation fails and onCreateError hears
        // of it), not after two missed heartbeats. Closing waits for this loop, so the
        // re-creation waits for the close.
        if (s.type === "close") void this.#nc.closed().then(() => this.#recreate("connection closed"));
      }
    })().catch(() => undefined);
    // nats.js's status iterator has stop(); the type only says AsyncIterable.
    this.#stopStatus = () => (status as Partial<{ stop(): void }>).stop?.();
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#silentChecks = 0;
    this.#pull();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#monitor);
    clearTimeout(this.#retry);
    this.#stopStatus();
    this.#sub?.unsubscribe();
    this.#sub = undefined;
    const name = this.#consumer;
    if (name && !this.#nc.isClosed()) await this.#jsm.consumers.delete(this.#options.stream, name).catch(() => undefined);
    await this.#statusLoop;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // Creates the next consumer from the sequence after the last one seen, on a new inbox
  // (messages still on their way to the old one are dropped with its subscription).
  async #create(): Promise<void> {
    this.#serial += 1;
    let name = `${this.#prefix}_${this.#serial}`;
    const inbox = createInbox();
    let from = this.#seenSeq + 1;
    const startTime = this.#started ? undefined : this.#options.startTime;
    const filter = this.#options.filter;
    const config = (start: number, subject: string | undefined): Partial<ConsumerConfig> => ({
      name,
      ack_policy: AckPolicy.None,
      ...(startTime !== undefined
        ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(startTime).toISOString() }
        : start > 1 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start } : { deliver_policy: DeliverPolicy.All }),
      ...(subject ? { filter_subject: subject } : {}),
      mem_storage: true,
      num_replicas: 1,
      inactive_threshold: INACTIVE_THRESHOLD_MS * 1_000_000,
    });
    const created = await this.#jsm.consumers.add(this.#options.stream, config(from, filter));
    this.#clientFilter = undefined;
    if (filter && startTime === undefined && created.num_pending > 0 && !this.#closed) {
      const dense = await this.#denseStart(filter, from, created.num_pending);
      if (dense !== undefined) {
        // The filtered consumer is replaced by one on every subject from the filter's first event.
        await this.#jsm.consumers.delete(this.#options.stream, name).catch(() => undefined);
        this.#serial += 1;
        name = `${this.#prefix}_${this.#serial}`;
        from = dense;
        await this.#jsm.consumers.add(this.#options.stream, config(from, undefined));
        this.#clientFilter = filter.split(".");
        this.#seenSeq = Math.max(this.#seenSeq, from - 1);
      }
    }
    if (this.#closed) {
      await this.#jsm.consumers.delete(this.#options.stream, name).catch(() => undefined);
      return;
    }
    this.#consumer = name;
    this.#pullSubject = `$JS.API.CONSUMER.MSG.NEXT.${this.#options.stream}.${name}`;
    this.#deliverySeq = 0;
    this.#info.numbersAt = 0;
    this.#credit = 0;
    this.#silentChecks = 0;
    const serial = this.#serial;
    this.#sub = this.#nc.subscribe(inbox, { callback: (err, msg) => {
      if (serial !== this.#serial || this.#closed || this.#recreating) return;
      if (err) {
        this.#recreate(`subscription failed: ${err.message}`);
        return;
      }
      this.#onMessage(msg);
    } });
    this.#pull();
  }

  // The sequence of the filter's first event from `from` when the filter's `matching` events
  // are at least DENSE_FILTER_SHARE of the stream from there to its end, else undefined.
  async #denseStart(filter: string, from: number, matching: number): Promise<number | undefined> {
    try {
      // The stream API's message get takes `next_by_subj` (nats.js types it for direct get only).
      const [reply, info] = await Promise.all([
        this.#nc.request(`$JS.API.STREAM.MSG.GET.${this.#options.stream}`, encoder.encode(JSON.stringify({ seq: from, next_by_subj: filter })), { timeout: API_TIMEOUT_MS }),
        this.#jsm.streams.info(this.#options.stream),
      ]);
      const first = (reply.json() as { message?: { seq?: number } }).message?.seq;
      if (first === undefined || !Number.isSafeInteger(first)) return undefined;
      const span = info.state.last_seq - first + 1;
      return span > 0 && matching >= span * DENSE_FILTER_SHARE ? first : undefined;
    } catch {
      // Not knowing only costs speed: read with the server's filter.
      return undefined;
    }
  }

  #pull(): void {
    if (this.#paused || this.#closed || this.#recreating || !this.#sub) return;
    if (this.#credit > this.#window / 2) return;
    const batch = this.#window - this.#credit;
    this.#credit += batch;
    const request = { batch, expires: PULL_EXPIRES_MS * 1_000_000, idle_heartbeat: this.#heartbeatMs * 1_000_000 };
    this.#nc.publish(this.#pullSubject, encoder.encode(JSON.stringify(request)), { reply: this.#sub.getSubject() });
  }

  #onMessage(msg: Msg): void {
    this.#received += 1;
    const core = msg as unknown as CoreMsgInternals;
    const replyBytes = core._msg?.reply ?? (msg.reply ? encoder.encode(msg.reply) : undefined);
    const info = this.#info;
    if (!replyBytes || replyBytes.length === 0 || !parseAckReply(replyBytes, info)) {
      this.#onStatus(msg);
      return;
    }
    this.#credit -= 1;
    if (info.deliverySeq !== this.#deliverySeq + 1) {
      this.#recreate(`delivery ${info.deliverySeq} after ${this.#deliverySeq}`);
      return;
    }
    this.#deliverySeq = info.deliverySeq;
    if (info.streamSeq <= this.#seenSeq) return;
    this.#seenSeq = info.streamSeq;
    if (this.#clientFilter && !subjectMatchesFilter(this.#clientFilter, msg.subject)) {
      if (this.#credit <= this.#window / 2) this.#pull();
      return;
    }
    this.#lastSeq = info.streamSeq;
    this.#started = true;
    this.#options.onEvent(eventFromMsg(msg, info.streamSeq, info.storedAt, this.#lazy), info.pending);
    if (this.#credit <= this.#window / 2) this.#pull();
  }

  #onStatus(msg: Msg): void {
    const code = msg.headers?.code ?? 0;
    if (code === 100) return; // idle heartbeat (or flow control, not asked for)
    if (code === 404 || code === 408) {
      // A pull request ended: what it did not deliver is no longer owed.
      const left = Number(msg.headers?.get("Nats-Pending-Messages") ?? NaN);
      this.#credit = Number.isFinite(left) ? Math.max(0, this.#credit - left) : 0;
      this.#pull();
      return;
    }
    this.#recreate(`server said ${code} ${msg.headers?.description ?? ""}`.trim());
  }

  // Runs every heartbeat interval: two in a row without anything received while messages
  // are owed mean the consumer or its pull requests are gone.
  #checkHeartbeat(): void {
    if (this.#closed || this.#recreating || this.#credit === 0 || this.#received !== this.#receivedAtCheck) {
      this.#receivedAtCheck = this.#received;
      this.#silentChecks = 0;
      return;
    }
    this.#silentChecks += 1;
    if (this.#silentChecks >= 2) this.#recreate("two heartbeats missed");
  }

  #recreate(reason: string): void {
    if (this.#closed || this.#recreating) return;
    this.#recreating = true;
    this.#sub?.unsubscribe();
    this.#sub = undefined;
    const old = this.#consumer;
    if (old && !this.#nc.isClosed()) void this.#jsm.consumers.delete(this.#options.stream, old).catch(() => undefined);
    this.recreated += 1;
    this.#options.onRecreate?.(this.#seenSeq + 1, reason);
    // #recreating stays set until a consumer exists again: no second re-creation starts.
    const attempt = (): void => {
      if (this.#closed) return;
      this.#create().then(() => {
        this.#failures = 0;
        this.#recreating = false;
        this.#pull();
      }, (err: unknown) => {
        const wait = RETRY_MS[Math.min(this.#failures, RETRY_MS.length - 1)]!;
        this.#failures += 1;
        this.#options.onRecreate?.(this.#seenSeq + 1, `creating the consumer failed (${(err as Error).message}); retrying in ${wait} ms`);
        this.#options.onCreateError?.(err as Error, this.#failures);
        // A closed nats.js connection never opens again: nothing to wait for.
        if (this.#closed || this.#nc.isClosed()) return;
        this.#retry = setTimeout(attempt, wait);
      });
    };
    attempt();
  }
}
