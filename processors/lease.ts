/**
 * Ownership of a processor across runtime instances: one key `proc.<processor>` in
 * `flex_leases` holding `{ owner, expiresAt }`. It is taken with a create (or, once the
 * holder's `expiresAt` has passed, an update at the revision read), renewed on a timer
 * with an update at the last revision (compare-and-set), and deleted at that revision on
 * release. Each write carries the lease's TTL (`Nats-TTL`, where the bucket allows per-message
 * TTL), so the server removes a key nobody renews when it expires, and a dead holder's lease
 * goes away even if nobody reads `expiresAt`; on older buckets the bucket's `max_age` does.
 */
import type { TtlKv } from "../streams/index.js";

const encoder = new TextEncoder();

/** What a lease key holds. */
export interface LeaseBody {
  readonly owner: string;
  /** ms since the epoch after which another instance may take the lease. */
  readonly expiresAt: number;
}

/** The `flex_leases` key of a processor. */
export function processorLeaseKey(processor: string): string {
  return `proc.${processor}`;
}

/** One lease; `onLost` is called (once) when a renewal finds it taken or cannot prove it held. */
export class Lease {
  readonly #kv: TtlKv;
  readonly #key: string;
  readonly #owner: string;
  readonly #ttlMs: number;
  readonly #onLost: () => void;
  #revision = 0;
  #held = false;
  #renewedAt = 0;
  #timer: NodeJS.Timeout | undefined;
  #renewing: Promise<void> | undefined;

  constructor(kv: TtlKv, key: string, owner: string, ttlMs: number, onLost: () => void) {
    this.#kv = kv;
    this.#key = key;
    this.#owner = owner;
    this.#ttlMs = ttlMs;
    this.#onLost = onLost;
  }

  get held(): boolean {
    return this.#held;
  }

  #body(): Uint8Array {
    return encoder.encode(JSON.stringify({ owner: this.#owner, expiresAt: Date.now() + this.#ttlMs } satisfies LeaseBody));
  }

  /** Takes the lease if it is free, expired or already ours; true when held. */
  async tryAcquire(): Promise<boolean> {
    if (this.#held) return true;
    const started = Date.now();
    try {
      this.#revision = await this.#kv.create(this.#key, this.#body(), this.#ttlMs);
    } catch {
      const e = await this.#kv.kv.get(this.#key).catch(() => null);
      if (!e) return false;
      if (e.operation === "PUT" && e.length > 0) {
        const v = e.json<LeaseBody>();
        if (v.owner !== this.#owner && v.expiresAt > Date.now()) return false;
      }
      try {
        this.#revision = await this.#kv.update(this.#key, this.#body(), e.revision, this.#ttlMs);
      } catch {
        return false;
      }
    }
    this.#held = true;
    this.#renewedAt = started;
    this.#timer = setInterval(() => void (this.#renewing ??= this.#renew().finally(() => (this.#renewing = undefined))), Math.max(50, Math.floor(this.#ttlMs / 3)));
    this.#timer.unref();
    return true;
  }

  async #renew(): Promise<void> {
    if (!this.#held) return;
    const started = Date.now();
    try {
      this.#revision = await this.#kv.update(this.#key, this.#body(), this.#revision, this.#ttlMs);
      this.#renewedAt = started;
    } catch (err) {
      // Someone else wrote the key (or it expired): lost. Any other failure: lost once we
      // can no longer be sure our last renewal has not expired.
      const wrongRevision = /wrong last sequence/i.test(String((err as Error)?.message));
      if (wrongRevision || Date.now() - this.#renewedAt >= this.#ttlMs * 0.8) this.#lose();
    }
  }

  #lose(): void {
    if (!this.#held) return;
    this.#held = false;
    if (this.#timer) clearInterval(this.#timer);
    this.#onLost();
  }

  /** Stops renewing and deletes the key if it is still ours, so another instance can take over now. */
  async release(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    await this.#renewing;
    if (!this.#held) return;
    this.#held = false;
    await this.#kv.kv.delete(this.#key, { previousSeq: this.#revision }).catch(() => undefined);
  }
}
