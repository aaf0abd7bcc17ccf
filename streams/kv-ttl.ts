import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamClient } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { InvalidOptionError } from "./errors.js";

/** The shortest TTL the server accepts for a message. */
export const MIN_MESSAGE_TTL_MS = 1_000;

/**
 * Writes to a KV bucket where each entry may carry its own expiry (`Nats-TTL`, nats-server
 * 2.11+ with `allow_msg_ttl` on the bucket): the server removes the entry when it expires,
 * whether or not anyone reads it. On a bucket without `allow_msg_ttl` the TTL is not sent and
 * entries stay until overwritten, deleted or removed by the bucket's `max_age`.
 *
 * Writes fail as the KV client's do (a wrong revision is a JetStream "wrong last sequence").
 */
export interface TtlKv {
  /** The bucket, for reads, watches and deletes. */
  readonly kv: KV;
  /** Whether entries are written with their TTL (the bucket has `allow_msg_ttl`). */
  readonly messageTtl: boolean;
  /** Creates `key` (fails if it holds a value); returns the revision. */
  create(key: string, data: Uint8Array, ttlMs: number): Promise<number>;
  /** Replaces `key` if it is still at `revision`; returns the new revision. */
  update(key: string, data: Uint8Array, revision: number, ttlMs: number): Promise<number>;
  /** Writes `key` unconditionally; returns the revision. */
  put(key: string, data: Uint8Array, ttlMs: number): Promise<number>;
}

/** A TTL as the server reads it: whole seconds, rounded up, at least one. */
export function ttlHeaderValue(ttlMs: number): string {
  if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw new InvalidOptionError("ttlMs", ttlMs, "a number of milliseconds above 0");
  return `${Math.max(1, Math.ceil(ttlMs / 1_000))}s`;
}

/** Opens `bucket` for writes with per-entry TTL (see {@link TtlKv}). */
export async function openTtlKv(nc: NatsConnection, bucket: string): Promise<TtlKv> {
  const kv = await new Kvm(nc).open(bucket);
  const info = await (await jetstreamManager(nc)).streams.info(`KV_${bucket}`);
  return new BucketWriter(kv, jetstream(nc), bucket, info.config.allow_msg_ttl === true);
}

class BucketWriter implements TtlKv {
  readonly kv: KV;
  readonly messageTtl: boolean;
  readonly #js: JetStreamClient;
  readonly #bucket: string;

  constructor(kv: KV, js: JetStreamClient, bucket: string, messageTtl: boolean) {
    this.kv = kv;
    this.#js = js;
    this.#bucket = bucket;
    this.messageTtl = messageTtl;
  }

  create(key: string, data: Uint8Array, ttlMs: number): Promise<number> {
    return this.messageTtl ? this.kv.create(key, data, ttlHeaderValue(ttlMs)) : this.kv.create(key, data);
  }

  async update(key: string, data: Uint8Array, revision: number, ttlMs: number): Promise<number> {
    if (!this.messageTtl) return this.kv.update(key, data, revision);
    const ack = await this.#js.publish(`$KV.${this.#bucket}.${key}`, data, { expect: { lastSubjectSequence: revision }, ttl: ttlHeaderValue(ttlMs) });
    return ack.seq;
  }

  async put(key: string, data: Uint8Array, ttlMs: number): Promise<number> {
    if (!this.messageTtl) return this.kv.put(key, data);
    const ack = await this.#js.publish(`$KV.${this.#bucket}.${key}`, data, { ttl: ttlHeaderValue(ttlMs) });
    return ack.seq;
  }
}
