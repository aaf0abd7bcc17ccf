/**
 * The host driver of a source plugin: polls `callSource({cursor, max})`, appends the
 * records to `evt.<tenant>.<category>.<key>` with deterministic event ids
 * (`<plugin>:<source>:<tenant>:<name>:<record id>`), then stores the cursor in `flex_state`,
 * only after every append was acknowledged. The tenant and the configured source's `name`
 * are in the id because JetStream's dedupe window is per stream: without them, two tenants
 * (or two tables) with a record 1 would drop each other's events. A crash between the two re-reads and re-appends the same
 * records, whose ids the stream's dedupe window drops: the retry is harmless.
 */
import { jetstream } from "@nats-io/jetstream";
import type { JetStreamClient } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUCKETS, checkTenantName, checkToken, encodeEvent, eventSubject, InvalidOptionError, kvKeyToken } from "../streams/index.js";
import type { PluginClient } from "./client.js";
import type { SourceRecord } from "./protocol.js";
import { DriverLoop } from "./driver-loop.js";

/** @default records asked per poll */
export const DEFAULT_SOURCE_MAX = 100;
/** @default ms between polls when the last one returned nothing (a full poll polls again at once) */
export const DEFAULT_SOURCE_INTERVAL_MS = 1000;
/** @default ms before polling again after a failed poll (doubled up to 30 s) */
export const DEFAULT_SOURCE_RETRY_MS = 500;
const MAX_RETRY_MS = 30_000;

/** Options of {@link createSourceDriver}. */
export interface SourceDriverOptions {
  /** Client of the plugin's service; its name is the `<plugin>` of the event ids. */
  readonly client: PluginClient;
  /** The source capability. */
  readonly source: string;
  /** This configured source's name (a subject token), unique per plugin, source and tenant: two tables read through one source have two names. */
  readonly name: string;
  readonly tenant: string;
  /** Category of the subjects the records are appended to. */
  readonly category: string;
  /** The source's options, sent with every call. */
  readonly options?: unknown;
  /** @default {@link DEFAULT_SOURCE_MAX} */
  readonly max?: number;
  /** @default {@link DEFAULT_SOURCE_INTERVAL_MS} */
  readonly intervalMs?: number;
  /** @default {@link DEFAULT_SOURCE_RETRY_MS} */
  readonly retryMs?: number;
  /** Called after the appends and before the cursor is stored (tests put a crash here). */
  readonly afterAppend?: (records: readonly SourceRecord[]) => void | Promise<void>;
  /** Errors of a poll (it is retried). */
  readonly onError?: (err: unknown) => void;
}

/** Counters as plain numbers, for /metrics. */
export interface SourceDriverMetrics {
  readonly polls: number;
  /** Records returned by the plugin. */
  readonly records: number;
  /** Records stored as new events. */
  readonly appended: number;
  /** Records the stream already had (same id: a re-read after a crash). */
  readonly duplicates: number;
  /** Polls that failed (plugin error, append or cursor store). */
  readonly failed: number;
}

export interface SourceDriver extends AsyncDisposable {
  /** One poll: read, append, store the cursor. Resolves with the records read. */
  pollOnce(signal?: AbortSignal): Promise<number>;
  /** Polls until closed. */
  start(): void;
  /** The cursor stored in `flex_state` (null: none yet). */
  storedCursor(): Promise<string | null>;
  metrics(): SourceDriverMetrics;
  close(): Promise<void>;
}

/** The `flex_state` key of a source's cursor. */
export function sourceCursorKey(plugin: string, source: string, tenant: string, name: string): string {
  return `source.${kvKeyToken(plugin)}.${kvKeyToken(source)}.${kvKeyToken(tenant)}.${kvKeyToken(name)}`;
}

/** Where a record's event id comes from. */
export interface SourceIdParts {
  readonly plugin: string;
  readonly source: string;
  readonly tenant: string;
  readonly name: string;
}

/** The event id of a record: `<plugin>:<source>:<tenant>:<name>:<record id>` (deterministic). */
export function sourceEventId(p: SourceIdParts, record: SourceRecord, cursor: string | null, index: number): string {
  // A record without an id is named by the cursor it was read after and its place: the
  // same read returns the same ids as long as the source is deterministic.
  return `${p.plugin}:${p.source}:${p.tenant}:${p.name}:${record.id ?? `${cursor ?? ""}#${index}`}`;
}

class SourceDriverImpl extends DriverLoop implements SourceDriver {
  #o: SourceDriverOptions;
  #js: JetStreamClient;
  #kvm: Kvm;
  #kv: KV | undefined;
  #key: string;
  #ids: SourceIdParts;
  #max: number;
  #m = { polls: 0, records: 0, appended: 0, duplicates: 0, failed: 0 };

  constructor(nc: NatsConnection, o: SourceDriverOptions) {
    super("source driver");
    checkTenantName(o.tenant);
    checkToken("category", o.category);
    checkToken("name", o.name);
    const max = o.max ?? DEFAULT_SOURCE_MAX;
    if (!Number.isInteger(max) || max < 1 || max > 10_000) throw new InvalidOptionError("max", max, "an integer from 1 to 10000");
    for (const f of ["intervalMs", "retryMs"] as const) {
      const v = o[f];
      if (v !== undefined && (!Number.isInteger(v) || v < 0)) throw new InvalidOptionError(f, v, "an integer number of milliseconds from 0 and up");
    }
    this.#o = o;
    this.#max = max;
    this.#js = jetstream(nc);
    this.#kvm = new Kvm(nc);
    this.#key = sourceCursorKey(o.client.service, o.source, o.tenant, o.name);
    this.#ids = { plugin: o.client.service, source: o.source, tenant: o.tenant, name: o.name };
  }

  async #bucket(): Promise<KV> {
    this.#kv ??= await this.#kvm.open(BUCKETS.state);
    return this.#kv;
  }

  async storedCursor(): Promise<string | null> {
    return (await this.#read()).cursor;
  }

  /** The stored cursor and the revision it was read at (0: the key never existed). */
  async #read(): Promise<{ cursor: string | null; revision: number }> {
    const e = await (await this.#bucket()).get(this.#key);
    if (!e) return { cursor: null, revision: 0 };
    if (e.operation !== "PUT" || e.length === 0) return { cursor: null, revision: e.revision };
    return { cursor: (e.json() as { cursor: string | null }).cursor, revision: e.revision };
  }

  async pollOnce(signal?: AbortSignal): Promise<number> {
    this.#m.polls += 1;
    try {
      const o = this.#o;
      const { cursor, revision } = await this.#read();
      const reply = await o.client.callSource(o.source, { tenant: o.tenant, options: o.options ?? {}, cursor, max: this.#max }, signal);
      this.#m.records += reply.records.length;
      // Appends in record order; one connection keeps them in order on the wire, so per-key order holds.
      const acks = await Promise.all(
        reply.records.map((r, i) => {
          const e = encodeEvent({ id: sourceEventId(this.#ids, r, cursor, i), type: r.type, data: r.data }, `records[${i}].`);
          return this.#js.publish(eventSubject(o.tenant, o.category, r.key), e.data, { headers: e.headers, msgID: e.id });
        }),
      );
      for (const a of acks) {
        if (a.duplicate) this.#m.duplicates += 1;
        else this.#m.appended += 1;
      }
      await o.afterAppend?.(reply.records);
      if (reply.cursor !== cursor) {
        // Compare-and-set at the revision read: an instance that lost the source's lease and
        // has not noticed yet cannot move the cursor back under the new holder (its write
        // fails; the records it appended have the new holder's ids and are dropped as duplicates).
        const kv = await this.#bucket();
        const value = JSON.stringify({ cursor: reply.cursor });
        if (revision === 0) await kv.create(this.#key, value);
        else await kv.update(this.#key, value, revision);
      }
      return reply.records.length;
    } catch (err) {
      this.#m.failed += 1;
      throw err;
    }
  }

  start(): void {
    if (this.started) return;
    this.runLoop((async () => {
      let retry = this.#o.retryMs ?? DEFAULT_SOURCE_RETRY_MS;
      while (!this.closed) {
        let wait: number;
        try {
          const n = await this.pollOnce(this.signal);
          retry = this.#o.retryMs ?? DEFAULT_SOURCE_RETRY_MS;
          wait = n >= this.#max ? 0 : (this.#o.intervalMs ?? DEFAULT_SOURCE_INTERVAL_MS);
        } catch (err) {
          if (this.closed) break;
          this.#o.onError?.(err);
          wait = retry;
          retry = Math.min(MAX_RETRY_MS, retry * 2);
        }
        if (wait > 0) await this.pause(wait);
      }
    })());
  }

  metrics(): SourceDriverMetrics {
    return { ...this.#m };
  }

}


/** A driver of one source of one plugin for one tenant (call `start()`, or `pollOnce()`). */
export function createSourceDriver(nc: NatsConnection, options: SourceDriverOptions): SourceDriver {
  return new SourceDriverImpl(nc, options);
}
