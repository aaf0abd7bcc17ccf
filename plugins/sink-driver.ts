/**
 * The host driver of a sink plugin: a durable JetStream consumer on one tenant's subjects
 * (FLEX_EVENTS or FLEX_DERIVED) → batches → `callSink` → ack only what `{delivered}`
 * covers. A retryable failure (timeout, no responders, 5xx) naks with backoff and the
 * messages come back in order; a 4xx or a bad reply isolates the events one by one and
 * dead-letters those the plugin refuses to `FLEX_DLQ` (then acks them).
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { Consumer, JetStreamClient, JsMsg } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { checkSubjectFilter, checkTenantName, checkToken, deadLetterHeaders, dlqSubject, HEADERS, InvalidOptionError, STREAMS, SUBJECT_ROOTS } from "../streams/index.js";
import type { PluginClient } from "./client.js";
import type { SinkEvent } from "./protocol.js";
import { DriverLoop } from "./driver-loop.js";

/** @default events per sink call */
export const DEFAULT_SINK_BATCH = 64;
/** @default waits before a nak'd batch comes back, by delivery attempt (the last repeats) */
export const DEFAULT_SINK_BACKOFF_MS: readonly number[] = [250, 1000, 5000, 15_000, 60_000];
/** @default how long a fetch waits for messages */
export const DEFAULT_SINK_FETCH_MS = 1000;
/** @default how long the server waits for an ack before it redelivers (above the sink's call timeout) */
export const DEFAULT_SINK_ACK_WAIT_MS = 60_000;

/** Options of {@link createSinkDriver}. */
export interface SinkDriverOptions {
  readonly client: PluginClient;
  /** The sink capability. */
  readonly sink: string;
  /** This configured sink's name (a subject token): the durable consumer and the dead letters' source (`sink-<name>`). */
  readonly name: string;
  readonly tenant: string;
  /** `events` (FLEX_EVENTS, `evt.<tenant>.…`) or `derived` (FLEX_DERIVED, `drv.<tenant>.…`). */
  readonly stream: "events" | "derived";
  /** Subject filters, each within the tenant: `evt.<tenant>.orders.>`. */
  readonly subjects: readonly string[];
  /** The sink's options, sent with every call. */
  readonly options?: unknown;
  /** @default {@link DEFAULT_SINK_BATCH} */
  readonly batchSize?: number;
  /** @default {@link DEFAULT_SINK_BACKOFF_MS} */
  readonly backoffMs?: readonly number[];
  /** At least 1000 (the JetStream client's floor). @default {@link DEFAULT_SINK_FETCH_MS} */
  readonly fetchMs?: number;
  /** @default {@link DEFAULT_SINK_ACK_WAIT_MS} */
  readonly ackWaitMs?: number;
  /** Errors of the loop (it keeps going). */
  readonly onError?: (err: unknown) => void;
}

/** Counters as plain numbers, for /metrics. */
export interface SinkDriverMetrics {
  /** Events the plugin confirmed (and that were acked). */
  readonly delivered: number;
  /** Sink calls that failed (any error). */
  readonly failed: number;
  /** Messages nak'd for a later retry. */
  readonly retried: number;
  /** Messages sent to FLEX_DLQ. */
  readonly deadLettered: number;
}

export interface SinkDriver extends AsyncDisposable {
  /** Creates or updates the durable consumer and starts consuming. */
  start(): Promise<void>;
  metrics(): SinkDriverMetrics;
  /** The durable consumer's name. */
  readonly consumer: string;
  /** Stops after the batch in flight (its messages are acked or nak'd). */
  close(): Promise<void>;
}

interface Item {
  readonly m: JsMsg;
  readonly event: SinkEvent;
}

const decoder = new TextDecoder();

function decode(m: JsMsg): SinkEvent | string {
  let data: unknown;
  try {
    data = m.data.length === 0 ? null : JSON.parse(decoder.decode(m.data));
  } catch {
    return "the message body is not JSON";
  }
  const id = m.headers?.get(HEADERS.msgId) || `${m.info.stream}:${m.seq}`;
  return { seq: m.seq, id, subject: m.subject, type: m.headers?.get(HEADERS.type) || "", time: m.headers?.get(HEADERS.time) || new Date(m.info.timestampNanos / 1e6).toISOString(), data };
}

function isRetryable(err: unknown): boolean {
  return (err as { retryable?: unknown }).retryable === true;
}

class SinkDriverImpl extends DriverLoop implements SinkDriver {
  readonly consumer: string;
  #nc: NatsConnection;
  #js: JetStreamClient;
  #o: SinkDriverOptions;
  #batch: number;
  #backoff: readonly number[];
  #streamName: string;
  #m = { delivered: 0, failed: 0, retried: 0, deadLettered: 0 };

  constructor(nc: NatsConnection, o: SinkDriverOptions) {
    super("sink driver");
    checkTenantName(o.tenant);
    checkToken("name", o.name);
    if (o.stream !== "events" && o.stream !== "derived") throw new InvalidOptionError("stream", o.stream, "`events` or `derived`");
    const root = o.stream === "events" ? SUBJECT_ROOTS.events : SUBJECT_ROOTS.derived;
    if (!Array.isArray(o.subjects) || o.subjects.length === 0) throw new InvalidOptionError("subjects", o.subjects, `a non-empty list of filters such as ${root}.${o.tenant}.>`);
    o.subjects.forEach((s, i) => {
      const parts = typeof s === "string" ? s.split(".") : [];
      // The tenant token is literal: a sink of one tenant never reads another's subjects.
      if (parts.length < 3 || parts[0] !== root || parts[1] !== o.tenant) throw new InvalidOptionError(`subjects[${i}]`, s, `a filter within the tenant, ${root}.${o.tenant}.<…>`);
      checkSubjectFilter(s);
    });
    const batch = o.batchSize ?? DEFAULT_SINK_BATCH;
    if (!Number.isInteger(batch) || batch < 1 || batch > 10_000) throw new InvalidOptionError("batchSize", batch, "an integer from 1 to 10000");
    const backoff = o.backoffMs ?? DEFAULT_SINK_BACKOFF_MS;
    if (!Array.isArray(backoff) || backoff.length === 0 || !backoff.every((b) => Number.isInteger(b) && b >= 0)) throw new InvalidOptionError("backoffMs", backoff, "a non-empty list of integer milliseconds");
    const fetchMs = o.fetchMs ?? DEFAULT_SINK_FETCH_MS;
    if (!Number.isInteger(fetchMs) || fetchMs < 1000) throw new InvalidOptionError("fetchMs", fetchMs, "an integer number of milliseconds from 1000 and up");
    this.#nc = nc;
    this.#js = jetstream(nc);
    this.#o = o;
    this.#batch = batch;
    this.#backoff = backoff;
    this.#streamName = o.stream === "events" ? STREAMS.events : STREAMS.derived;
    this.consumer = `flex-sink-${o.tenant}-${o.name}`;
  }

  async start(): Promise<void> {
    if (this.started) return;
    const jsm = await jetstreamManager(this.#nc);
    const config = {
      durable_name: this.consumer,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      filter_subjects: [...this.#o.subjects],
      // One batch in flight: a nak'd batch holds back newer messages until it is redelivered (per-subject order).
      max_ack_pending: this.#batch,
      ack_wait: (this.#o.ackWaitMs ?? DEFAULT_SINK_ACK_WAIT_MS) * 1_000_000,
      max_deliver: -1,
    };
    try {
      await jsm.consumers.info(this.#streamName, this.consumer);
      await jsm.consumers.update(this.#streamName, this.consumer, { filter_subjects: config.filter_subjects, max_ack_pending: config.max_ack_pending, ack_wait: config.ack_wait });
    } catch {
      await jsm.consumers.add(this.#streamName, config);
    }
    const consumer = await this.#js.consumers.get(this.#streamName, this.consumer);
    this.runLoop(this.#run(consumer));
  }

  async #run(consumer: Consumer): Promise<void> {
    while (!this.closed) {
      try {
        const batch = await consumer.fetch({ max_messages: this.#batch, expires: this.#o.fetchMs ?? DEFAULT_SINK_FETCH_MS });
        const msgs: JsMsg[] = [];
        for await (const m of batch) msgs.push(m);
        if (msgs.length === 0) continue;
        const wait = await this.#handle(msgs);
        // Newer messages must not overtake the nak'd ones: wait until they are due again.
        if (wait > 0) await this.pause(wait);
      } catch (err) {
        if (this.closed) break;
        this.#o.onError?.(err);
        await this.pause(this.#backoff[0]!);
      }
    }
  }

  #delay(m: JsMsg): number {
    return this.#backoff[Math.min(m.info.deliveryCount - 1, this.#backoff.length - 1)]!;
  }

  /** Handles one batch; returns how long to wait before fetching again (after a nak). */
  async #handle(msgs: readonly JsMsg[]): Promise<number> {
    const items: Item[] = [];
    for (const m of msgs) {
      const e = decode(m);
      if (typeof e === "string") await this.#deadLetter({ m, event: { seq: m.seq, id: `${m.info.stream}:${m.seq}`, subject: m.subject, type: "", time: "", data: null } }, { name: "InvalidEventError", code: "FLEX_INVALID_EVENT", message: e });
      else items.push({ m, event: e });
    }
    if (items.length === 0) return 0;
    try {
      const reply = await this.#call(items);
      return this.#settle(items, reply.delivered);
    } catch (err) {
      if (this.closed) return this.#release(items);
      this.#m.failed += 1;
      if (isRetryable(err)) return this.#nak(items);
      if (items.length === 1) {
        await this.#deadLetter(items[0]!, err);
        return 0;
      }
      // A refusal or a bad reply for the batch: find the events it is about, one at a time.
      for (let i = 0; i < items.length; i++) {
        const item = items[i]!;
        try {
          const reply = await this.#call([item]);
          if (reply.delivered === 1) {
            item.m.ack();
            this.#m.delivered += 1;
          } else return this.#nak(items.slice(i));
        } catch (e) {
          if (this.closed) return this.#release(items.slice(i));
          this.#m.failed += 1;
          if (isRetryable(e)) return this.#nak(items.slice(i));
          await this.#deadLetter(item, e);
        }
      }
      return 0;
    }
  }

  #call(items: readonly Item[]) {
    const o = this.#o;
    return o.client.callSink(o.sink, { tenant: o.tenant, options: o.options ?? {}, events: items.map((i) => i.event) }, this.signal);
  }

  #settle(items: readonly Item[], delivered: number): number {
    for (let i = 0; i < delivered; i++) items[i]!.m.ack();
    this.#m.delivered += delivered;
    return delivered < items.length ? this.#nak(items.slice(delivered)) : 0;
  }

  #nak(items: readonly Item[]): number {
    const delay = this.#delay(items[0]!.m);
    for (const i of items) i.m.nak(delay);
    this.#m.retried += items.length;
    return delay;
  }

  // Closing: the call was abandoned, not refused; the messages go back at once, unharmed.
  #release(items: readonly Item[]): number {
    for (const i of items) i.m.nak();
    return 0;
  }

  async #deadLetter(item: Item, err: unknown): Promise<void> {
    const e = err as { name?: string; code?: string; message?: string };
    const error = { name: e?.name ?? "Error", code: typeof e?.code === "string" ? e.code : null, message: e?.message ?? String(err) };
    const source = `sink-${this.#o.name}`;
    const reason = `sink ${this.#o.client.service}.${this.#o.sink} refused seq ${item.m.seq}: ${error.code ? `[${error.code}] ` : ""}${error.message}`;
    const headers = deadLetterHeaders({ id: `${this.consumer}:${item.m.info.stream}:${item.m.seq}:dlq`, type: "DeliveryFailed", causationId: item.event.id, sourceSeq: item.m.seq, sourceSubject: item.m.subject, reason });
    const body = { sink: `${this.#o.client.service}.${this.#o.sink}`, name: this.#o.name, stream: item.m.info.stream, seq: item.m.seq, subject: item.m.subject, tenant: this.#o.tenant, type: item.event.type, time: item.event.time, attempts: item.m.info.deliveryCount, error, reason, data: item.event.data };
    await this.#js.publish(dlqSubject(this.#o.tenant, source), JSON.stringify(body), { headers, msgID: headers.get(HEADERS.msgId) });
    item.m.ack();
    this.#m.deadLettered += 1;
  }

  metrics(): SinkDriverMetrics {
    return { ...this.#m };
  }

}


/** A driver of one sink of one plugin for one tenant's subjects (call `start()`). */
export function createSinkDriver(nc: NatsConnection, options: SinkDriverOptions): SinkDriver {
  return new SinkDriverImpl(nc, options);
}
