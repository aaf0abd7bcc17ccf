import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import { jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUCKETS, InvalidOptionError } from "../streams/index.js";
import { REVOKED_PREFIX } from "./revocations.js";
import { SESSION_PREFIX } from "./sessions.js";

/** How often a gateway removes expired sessions and revocations from `flex_auth`, in ms. */
export const DEFAULT_AUTH_SWEEP_INTERVAL_MS = 60_000;
/** Entries of `flex_auth` removed at most per sweep (the rest wait for the next one). */
export const DEFAULT_AUTH_SWEEP_BATCH = 500;

/** What one sweep did. */
export interface SweepReport {
  /** Session and revocation entries read. */
  readonly scanned: number;
  /** Expired entries removed. */
  readonly removed: number;
}

/**
 * Removes expired sign-in sessions (`session.*`) and revoked ids (`revoked.*`) from
 * `flex_auth`, so the bucket does not grow with every sign-in and logout. A sweep reads the
 * latest entry of every session and revocation key and purges at most `batch` of them from
 * the stream: those whose `exp` has passed, and delete markers older than a minute (no
 * marker is left behind). Users are never touched.
 */
export interface AuthSweeper extends AsyncDisposable {
  /** One sweep now (also what the timer runs); concurrent calls share one run. */
  sweep(): Promise<SweepReport>;
  /** Stops the timer and waits for a running sweep. */
  close(): Promise<void>;
}

/** Options of {@link openAuthSweeper}. */
export interface AuthSweeperOptions {
  /** Time between sweeps; 0: no timer (call `sweep()` yourself). @default 60000 */
  readonly intervalMs?: number;
  /** @default 500 */
  readonly batch?: number;
  /** Delete markers younger than this are left for other instances' watchers. @default 60000 */
  readonly markerGraceMs?: number;
  /** Where a failed sweep is reported (it is retried at the next tick). @default stderr */
  readonly log?: (line: string) => void;
}

/** Delete markers younger than this are left for the watchers of other instances, in ms. */
export const DEFAULT_MARKER_GRACE_MS = 60_000;

interface Expiring {
  readonly exp?: unknown;
}

/** Starts sweeping `flex_auth` (created by `ensureTopology`). */
export async function openAuthSweeper(nc: NatsConnection, options: AuthSweeperOptions = {}): Promise<AuthSweeper> {
  const intervalMs = options.intervalMs ?? DEFAULT_AUTH_SWEEP_INTERVAL_MS;
  if (!Number.isInteger(intervalMs) || intervalMs < 0) throw new InvalidOptionError("intervalMs", intervalMs, "an integer number of milliseconds from 0 and up");
  const batch = options.batch ?? DEFAULT_AUTH_SWEEP_BATCH;
  if (!Number.isInteger(batch) || batch < 1) throw new InvalidOptionError("batch", batch, "an integer from 1 and up");
  const markerGraceMs = options.markerGraceMs ?? DEFAULT_MARKER_GRACE_MS;
  if (!Number.isInteger(markerGraceMs) || markerGraceMs < 0) throw new InvalidOptionError("markerGraceMs", markerGraceMs, "an integer number of milliseconds from 0 and up");
  const kv = await new Kvm(nc).open(BUCKETS.auth);
  const jsm = await jetstreamManager(nc);
  return new KvAuthSweeper(nc, kv, jsm, intervalMs, batch, markerGraceMs, options.log ?? ((line) => process.stderr.write(`${line}\n`)));
}

class KvAuthSweeper implements AuthSweeper {
  readonly #kv: KV;
  readonly #jsm: JetStreamManager;
  readonly #batch: number;
  readonly #markerGraceMs: number;
  readonly #log: (line: string) => void;
  readonly #timer: NodeJS.Timeout | undefined;
  #running: Promise<SweepReport> | undefined;
  #closed = false;
  #failing = false;

  constructor(nc: NatsConnection, kv: KV, jsm: JetStreamManager, intervalMs: number, batch: number, markerGraceMs: number, log: (line: string) => void) {
    this.#kv = kv;
    this.#jsm = jsm;
    this.#batch = batch;
    this.#markerGraceMs = markerGraceMs;
    this.#log = log;
    if (intervalMs > 0) {
      this.#timer = setInterval(() => {
        // A failed sweep (NATS away, bucket gone) is reported and tried again next tick; it never rejects unhandled.
        if (nc.isClosed()) return; // the owner closes us too
        this.sweep().then(
          () => {
            if (this.#failing) this.#log(`flexcore: gateway: sweeping ${BUCKETS.auth} works again`);
            this.#failing = false;
          },
          (err: unknown) => {
            // Said once per outage, not every tick.
            if (!this.#failing) this.#log(`flexcore: gateway: sweeping ${BUCKETS.auth} failed: ${(err as Error).message}; trying again every ${intervalMs} ms`);
            this.#failing = true;
          },
        );
      }, intervalMs);
      this.#timer.unref();
    }
  }

  sweep(): Promise<SweepReport> {
    if (this.#closed) return Promise.resolve({ scanned: 0, removed: 0 });
    this.#running ??= this.#sweep().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async #sweep(): Promise<SweepReport> {
    const now = Date.now();
    let scanned = 0;
    let removed = 0;
    // One prefix at a time: servers before 2.10 take one subject filter per consumer.
    for (const prefix of [SESSION_PREFIX, REVOKED_PREFIX]) {
      // The bucket keeps one revision per key, so its history is the latest entry of each key, markers included.
      const entries = await this.#kv.history({ key: `${prefix}.>` });
      const due: Array<{ key: string; revision: number }> = [];
      try {
        for await (const e of entries) {
          scanned += 1;
          if (e.operation === "PUT") {
            let exp: unknown;
            try {
              exp = e.json<Expiring>().exp;
            } catch {
              continue; // not ours to judge
            }
            if (typeof exp !== "number" || exp * 1000 > now) continue;
          } else if (now - e.created.getTime() < this.#markerGraceMs) {
            continue; // a fresh delete marker: let watchers see it first
          }
          due.push({ key: e.key, revision: e.revision });
          if (removed + due.length >= this.#batch) break;
        }
      } finally {
        entries.stop();
      }
      for (const { key, revision } of due) {
        if (this.#closed) break;
        // Purge only up to this revision: an entry rewritten meanwhile (a renewed revocation) stays.
        await this.#jsm.streams.purge(`KV_${BUCKETS.auth}`, { filter: `$KV.${BUCKETS.auth}.${key}`, seq: revision + 1 });
        removed += 1;
      }
      if (removed >= this.#batch) break;
    }
    return { scanned, removed };
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#running?.catch(() => undefined);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
