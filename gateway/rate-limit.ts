import { InvalidOptionError } from "../streams/index.js";

/** Options of {@link createRateLimiter}. */
export interface RateLimitOptions {
  /** Sustained requests per second per key (tenant). @default 2000 */
  readonly perSecond?: number;
  /** Requests that may arrive at once above the sustained rate. @default 2 × perSecond */
  readonly burst?: number;
  /** Keys tracked at once; the least recently seen are forgotten. @default 100000 */
  readonly maxKeys?: number;
}

export const DEFAULT_RATE_PER_SECOND = 2_000;
export const DEFAULT_RATE_MAX_KEYS = 100_000;

/** A token bucket per key, in memory (per gateway instance). */
export interface RateLimiter {
  readonly perSecond: number;
  /** Takes `cost` tokens for `key`: 0 when allowed, else the seconds to wait (at least 1). */
  take(key: string, cost?: number): number;
}

interface Bucket {
  tokens: number;
  at: number;
}

export function createRateLimiter(options: RateLimitOptions = {}): RateLimiter {
  const perSecond = options.perSecond ?? DEFAULT_RATE_PER_SECOND;
  if (typeof perSecond !== "number" || !(perSecond > 0)) throw new InvalidOptionError("rateLimit.perSecond", perSecond, "a number above 0");
  const burst = options.burst ?? perSecond * 2;
  if (typeof burst !== "number" || !(burst >= 1)) throw new InvalidOptionError("rateLimit.burst", burst, "a number from 1 and up");
  const maxKeys = options.maxKeys ?? DEFAULT_RATE_MAX_KEYS;
  if (!Number.isInteger(maxKeys) || maxKeys < 1) throw new InvalidOptionError("rateLimit.maxKeys", maxKeys, "an integer from 1 and up");
  const buckets = new Map<string, Bucket>();
  return {
    perSecond,
    take(key, cost = 1) {
      const now = performance.now();
      let b = buckets.get(key);
      if (!b) {
        if (buckets.size >= maxKeys) buckets.delete(buckets.keys().next().value!);
        b = { tokens: burst, at: now };
        buckets.set(key, b);
      }
      b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * perSecond);
      b.at = now;
      if (b.tokens >= cost) {
        b.tokens -= cost;
        return 0;
      }
      return Math.max(1, Math.ceil((cost - b.tokens) / perSecond));
    },
  };
}
