import { createHash } from "node:crypto";
import type { KV } from "@nats-io/kv";
import type { NatsConnection, QueuedIterator } from "@nats-io/transport-node";
import type { KvWatchEntry } from "@nats-io/kv";
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
// Expired ids are swept from memory (and the bucket) this often.
const SWEEP_MS = 60_000;

/** Opens the shared revocation list and waits until the existing entries are loaded. */
export async function openRevocations(nc: NatsConnection): Promise<Revocations> {
  const r = new KvRevocations(await openTtlKv(nc, BUCKETS.auth));
  await r.start();
  return r;
}

// Each revoked id is written with a TTL until its token's expiry (where the bucket allows
// per-message TTL), so the server removes it then; the sweep covers buckets without.
class KvRevocations implements Revocations {
  readonly #ttl: TtlKv;
  readonly #kv: KV;
  readonly #ids = new Map<string, number>();
  #watch: QueuedIterator<KvWatchEntry> | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(ttl: TtlKv) {
    this.#ttl = ttl;
    this.#kv = ttl.kv;
  }

  get size(): number {
    return this.#ids.size;
  }

  async start(): Promise<void> {
    let initial = 0;
    for await (const _ of await this.#kv.keys(`${REVOKED_PREFIX}.>`)) initial += 1;
    const watch = await this.#kv.watch({ key: `${REVOKED_PREFIX}.>` });
    this.#watch = watch;
    let resolveReady!: () => void;
    const ready = new Promise<void>((res) => (resolveReady = res));
    if (initial === 0) resolveReady();
    void (async () => {
      for await (const e of watch) {
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
        // The last entry of the initial replay is flagged as an update (nats.js counts it in).
        if (e.isUpdate || e.delta === 0) resolveReady();
      }
    })().finally(resolveReady);
    this.#timer = setInterval(() => void this.#sweep(), SWEEP_MS);
    this.#timer.unref();
    await ready;
  }

  has(id: string): boolean {
    const exp = this.#ids.get(keyOf(id));
    return exp !== undefined && exp * 1000 > Date.now();
  }

  async revoke(id: string, expiresAt: number): Promise<void> {
    const key = keyOf(id);
    this.#ids.set(key, expiresAt);
    await this.#ttl.put(`${REVOKED_PREFIX}.${key}`, codec.encode(JSON.stringify({ exp: expiresAt })), Math.max(MIN_MESSAGE_TTL_MS, expiresAt * 1000 - Date.now()));
  }

  async #sweep(): Promise<void> {
    const now = Date.now();
    for (const [id, exp] of this.#ids) {
      if (exp * 1000 > now) continue;
      this.#ids.delete(id);
      // The server removes entries written with a TTL by itself.
      if (this.#ttl.messageTtl) continue;
      // Every instance may sweep the same id; deleting twice is harmless.
      await this.#kv.delete(`${REVOKED_PREFIX}.${id}`).catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#watch?.stop();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
