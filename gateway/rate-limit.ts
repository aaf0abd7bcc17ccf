/**
 * Request rate limits, enforced by `@fastify/rate-limit`: per tenant on every authenticated
 * route (keyed by the token's tenant, after authentication, before the body is read), and
 * per client address on sign-in and refresh. Each key gets `burst` requests per window of
 * `burst / perSecond` seconds, so the sustained rate is `perSecond`; keys live in an LRU of
 * `maxKeys` (the least recently seen are forgotten). Answers carry `x-ratelimit-limit`,
 * `x-ratelimit-remaining` and `x-ratelimit-reset`; a refusal is 429 `FLEX_RATE_LIMITED` with
 * `Retry-After`.
 */
import type { FastifyRequest } from "fastify";
import type { RateLimitPluginOptions } from "@fastify/rate-limit";
import { InvalidOptionError } from "../streams/index.js";
import { RateLimitedError } from "./errors.js";

/** Options of a limit. */
export interface RateLimitOptions {
  /** Sustained requests per second per key (tenant). @default 2000 */
  readonly perSecond?: number;
  /** Requests per window (`burst / perSecond` seconds). @default 2 × perSecond */
  readonly burst?: number;
  /** Keys tracked at once; the least recently seen are forgotten. @default 100000 */
  readonly maxKeys?: number;
}

export const DEFAULT_RATE_PER_SECOND = 2_000;
export const DEFAULT_RATE_MAX_KEYS = 100_000;
/** Sign-in and refresh, per client address. */
export const SIGN_IN_RATE_LIMIT: Readonly<RateLimitOptions> = Object.freeze({ perSecond: 10, burst: 20 });

/** A validated limit, as `@fastify/rate-limit` takes it. */
export interface RateLimit {
  readonly perSecond: number;
  readonly max: number;
  readonly timeWindow: number;
  readonly maxKeys: number;
}

/** Validates a limit's options, naming the field. @throws InvalidOptionError */
export function resolveRateLimit(options: RateLimitOptions = {}, field = "rateLimit"): RateLimit {
  const perSecond = options.perSecond ?? DEFAULT_RATE_PER_SECOND;
  if (typeof perSecond !== "number" || !(perSecond > 0)) throw new InvalidOptionError(`${field}.perSecond`, perSecond, "a number above 0");
  const burst = options.burst ?? perSecond * 2;
  if (typeof burst !== "number" || !Number.isInteger(burst) || burst < 1) throw new InvalidOptionError(`${field}.burst`, burst, "an integer from 1 and up");
  const maxKeys = options.maxKeys ?? DEFAULT_RATE_MAX_KEYS;
  if (!Number.isInteger(maxKeys) || maxKeys < 1) throw new InvalidOptionError(`${field}.maxKeys`, maxKeys, "an integer from 1 and up");
  return { perSecond, max: burst, timeWindow: Math.max(1, Math.round((burst / perSecond) * 1000)), maxKeys };
}

const refusal = (limit: RateLimit) => (_req: FastifyRequest, context: { ttl: number }): RateLimitedError =>
  new RateLimitedError(Math.max(1, Math.ceil(context.ttl / 1000)), limit.perSecond);

/** The plugin's options: per tenant, on routes whose request carries a principal. */
export function tenantRateLimit(limit: RateLimit | undefined): RateLimitPluginOptions {
  return {
    global: limit !== undefined,
    hook: "preParsing",
    max: limit?.max ?? 1,
    timeWindow: limit?.timeWindow ?? 1_000,
    cache: limit?.maxKeys ?? DEFAULT_RATE_MAX_KEYS,
    // Unauthenticated routes (health, metrics, docs, sign-in) are not the tenant's.
    allowList: (req) => req.principal === undefined,
    keyGenerator: (req) => `tenant:${req.principal?.tenant ?? ""}`,
    ...(limit ? { errorResponseBuilder: refusal(limit) } : {}),
  };
}

/** A route's `config.rateLimit` for sign-in and refresh: per client address. */
export function clientRateLimit(limit: RateLimit) {
  return {
    hook: "preParsing" as const,
    max: limit.max,
    timeWindow: limit.timeWindow,
    allowList: () => false,
    keyGenerator: (req: FastifyRequest) => `client:${req.ip}`,
    errorResponseBuilder: refusal(limit),
  };
}
