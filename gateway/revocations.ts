import { createHash } from "node:crypto";
import type { KV, KvWatchEntry } from "@nats-io/kv";
import type { NatsConnection, QueuedIterator } from "@nats-io/transport-node";
import { BUCKETS, MIN_MESSAGE_TTL_MS, openTtlKv } from "../streams/index.js";
import type { TtlKv } from "../streams/index.js";

/** KV key prefix of revoked token ids (`jti`) and session ids (`sid`) in `flex_auth`. */
export const REVOKED_PREFIX = "revoked";

/**
 * Revoked token and session ids, shared by every gateway instance through `flex_auth`:
 * each instance watches the bucket, so a revocation reaches all of them within the
 * time the KV watch takes to deliver (milliseconds), well inside the 1 s promise.
 */
export interface Revocations extends AsyncDisposable {
  /** Whether `id` (a `jti` or a `sid`) is revoked. Synchronous: checked on every request. */
  has(id: string): boolean;
  /**
   * Revokes `id` until `expiresAt` (seconds since the epoch, the token's `exp`), locally at
   * once and for the other instances through the bucket.
   */
  revoke(id: string, expiresAt: number): Promise<void>;
  /** Number of ids currently revoked. */
  readonly size: number;
  close(): Promise<void>;
}

const codec = new TextEncoder();
const SAFE_ID = /^[A-Za-z0-9_-]{1,128}$/u;

// KV keys allow few characters; ids from external issuers (jti with dots, URIs) are hashed.
function keyOf(id: string): string {
  return SAFE_ID.test(id) ? id : `h_${createHash("sha256").update(id).digest("base64url")}`;
}
// Expired ids are swept from memory this often.
const SWEEP_MS = 60_000;

/** Wait before re-opening a revocation watch that ended or failed, in ms. */
const REWATCH_MS = 1_000;
/**
 * How often the bucket behind the watch is checked, in ms. A deleted and re-created bucket
 * does not end a KV watch: its consumer resumes at the old sequence and misses every new
 * entry. The check sees the new bucket's creation time and opens the watch again.
 */
const BUCKET_CHECK_MS = 5_000;

/** Options of {@link openRevocations}. */
export interface RevocationsOptions {
  /** Where a failed watch is reported (it is opened again). @default stderr */
  readonly log?: (line: string) => void;
}

/** Opens the shared revocation list and waits until the existing entries are loaded. */
export async function openRevocations(nc: NatsConnection, options: RevocationsOptions = {}): Promise<Revocations> {
  const r = new KvRevocations(nc, await openTtlKv(nc, BUCKETS.auth), options.log ?? ((line) => process.stderr.write(`${line}\n`)));
  await r.start();
  return r;
}

// Each revoked id is written with a TTL until its token's expiry (where the bucket allows
// per-message TTL, 2.11+), so the server removes it then; elsewhere the gateway's sweep
// (auth-sweep.ts) does.
class KvRevocations implements Revocations {
  readonly #nc: NatsConnection;
  readonly #kv: KV;
  readonly #ttl: TtlKv;
  readonly #log: (line: string) => void;
  readonly #ids = new Map<string, number>();
  #watch: QueuedIterator<KvWatchEntry> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #rewatch: NodeJS.Timeout | undefined;
  #check: NodeJS.Timeout | undefined;
  // Creation time of the bucket the current watch follows.
  #bucketCreated: string | undefined;
  #failing = false;
  #closed = false;

  constructor(nc: NatsConnection, ttl: TtlKv, log: (line: string) => void) {
    this.#nc = nc;
    this.#kv = ttl.kv;
    this.#ttl = ttl;
    this.#log = log;
  }

  get size(): number {
    return this.#ids.size;
  }

  async start(): Promise<void> {
    let initial = 0;
    for await (const _ of await this.#kv.keys(`${REVOKED_PREFIX}.>`)) initial += 1;
    const ready = this.#follow(initial === 0);
    this.#timer = setInterval(() => this.#sweep(), SWEEP_MS);
    this.#timer.unref();
    this.#check = setInterval(() => void this.#checkBucket(), BUCKET_CHECK_MS);
    this.#check.unref();
    await ready;
  }

  /**
   * Opens the watch and applies its entries until it ends; then opens it again after
   * {@link REWATCH_MS}, replaying the latest entry of every key (not resuming from a
   * revision: a re-created bucket numbers its entries from 1 again). Nothing here rejects: a
   * failed watch is logged and retried, so it can neither crash the process nor stop
   * revocations from arriving for good. Resolves once the existing entries are loaded (or
   * the first attempt failed).
   */
  #follow(empty: boolean): Promise<void> {
    let resolveReady!: () => void;
    const ready = new Promise<void>((res) => (resolveReady = res));
    if (empty) resolveReady();
    const run = async (): Promise<void> => {
      const created = (await this.#kv.status()).streamInfo.created;
      const watch = await this.#kv.watch({ key: `${REVOKED_PREFIX}.>` });
      this.#watch = watch;
      this.#bucketCreated = created;
      if (this.#failing) this.#log(`flexcore: gateway: revocation watch on ${BUCKETS.auth} is back`);
      this.#failing = false;
      if (this.#closed) watch.stop();
      for await (const e of watch) {
        this.#apply(e);
        // The last entry of the initial replay is flagged as an update (nats.js counts it in).
        if (e.isUpdate || e.delta === 0) resolveReady();
      }
    };
    run()
      .then(
        () => {
          if (!this.#closed && !this.#nc.isClosed()) this.#log(`flexcore: gateway: revocation watch on ${BUCKETS.auth} ended; watching again in ${REWATCH_MS} ms`);
        },
        (err: unknown) => {
          // Said once per outage, not every REWATCH_MS.
          if (!this.#failing) this.#log(`flexcore: gateway: revocation watch on ${BUCKETS.auth} failed: ${(err as Error).message}; watching again every ${REWATCH_MS} ms`);
          this.#failing = true;
        },
      )
      .finally(() => {
        resolveReady();
        // A closed connection does not come back: the owner closes us too.
        if (this.#closed || this.#nc.isClosed()) return;
        this.#rewatch = setTimeout(() => void this.#follow(false), REWATCH_MS);
        this.#rewatch.unref();
      })
      .catch(() => undefined);
    return ready;
  }

  // Never rejects: a failed check is tried again at the next interval.
  async #checkBucket(): Promise<void> {
    if (this.#closed || this.#nc.isClosed() || this.#bucketCreated === undefined) return;
    let created: string | undefined;
    try {
      created = (await this.#kv.status()).streamInfo.created;
    } catch {
      created = undefined; // gone (or unreachable): the watch is re-opened once it is back
    }
    if (created !== this.#bucketCreated && !this.#closed) {
      this.#bucketCreated = undefined;
      this.#watch?.stop(); // ends the loop in #follow, which opens the watch again
    }
  }

  #apply(e: KvWatchEntry): void {
    const id = e.key.slice(REVOKED_PREFIX.length + 1);
    if (e.operation === "PUT") {
      let exp = 0;
      try {
        exp = e.json<{ exp: number }>().exp;
      } catch {
        exp = Number.MAX_SAFE_INTEGER;
      }
      if (exp * 1000 > Date.now()) this.#ids.set(id, exp);
    } else {
      this.#ids.delete(id);
    }
  }

  has(id: string): boolean {
    const exp = this.#ids.get(keyOf(id));
    return exp !== undefined && exp * 1000 > Date.now();
  }

  async revoke(id: string, expiresAt: number): Promise<void> {
    const key = keyOf(id);
    this.#ids.set(key, Math.max(expiresAt, this.#ids.get(key) ?? 0));
    const exp = this.#ids.get(key)!;
    await this.#ttl.put(`${REVOKED_PREFIX}.${key}`, codec.encode(JSON.stringify({ exp })), Math.max(MIN_MESSAGE_TTL_MS, exp * 1000 - Date.now()));
  }

  // Expired ids leave memory here; the bucket entries are removed by the sweep (auth-sweep.ts) or their TTL.
  #sweep(): void {
    const now = Date.now();
    for (const [id, exp] of this.#ids) if (exp * 1000 <= now) this.#ids.delete(id);
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    if (this.#rewatch) clearTimeout(this.#rewatch);
    if (this.#check) clearInterval(this.#check);
    this.#watch?.stop();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
