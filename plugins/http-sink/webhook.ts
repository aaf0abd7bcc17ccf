/**
 * The `http-sink` plugin's delivery: one signed POST per event, in order, retried with
 * exponential backoff on 5xx, 408, 429, timeouts and connection errors, given up on other
 * 4xx. Returns how many leading events the endpoint confirmed with a 2xx.
 */
import { createHmac } from "node:crypto";
import type { SinkEvent } from "../protocol.js";

/** Options of the `webhook` sink. */
export interface WebhookOptions {
  /** `http:` or `https:` URL the events are POSTed to. */
  readonly url: string;
  /** HMAC-SHA256 key of `X-Flexcore-Signature`. Either this or `secretName`. */
  readonly secret?: string;
  /** Name of a secret in the operator's plugin config (`FLEXCORE_PLUGIN_CONFIG.secrets`), so it stays out of sink options. */
  readonly secretName?: string;
  /** Time one request may take. @default 5000 */
  readonly timeoutMs?: number;
  /** Attempts per event, the first included. @default 5 */
  readonly maxAttempts?: number;
  /** Wait before the second attempt; doubled each time, with jitter. @default 200 */
  readonly backoffMs?: number;
  /** Longest wait between attempts. @default 5000 */
  readonly maxBackoffMs?: number;
  /** Time one call (the whole batch, retries included) may take before it answers with what it delivered. @default 20000 */
  readonly budgetMs?: number;
}

export const WEBHOOK_DEFAULTS = { timeoutMs: 5000, maxAttempts: 5, backoffMs: 200, maxBackoffMs: 5000, budgetMs: 20_000 } as const;
/** Header names. */
export const SIGNATURE_HEADER = "X-Flexcore-Signature";
export const IDEMPOTENCY_HEADER = "Idempotency-Key";

/** The options' JSON Schema (the manifest embeds the same; a test keeps them equal). */
export const WEBHOOK_OPTIONS_SCHEMA = {
  type: "object",
  required: ["url"],
  additionalProperties: false,
  properties: {
    url: { type: "string", pattern: "^https?://", maxLength: 2048 },
    secret: { type: "string", minLength: 16, maxLength: 1024 },
    secretName: { type: "string", pattern: "^[A-Za-z0-9_.-]{1,64}$" },
    timeoutMs: { type: "integer", minimum: 10, maximum: 120000 },
    maxAttempts: { type: "integer", minimum: 1, maximum: 100 },
    backoffMs: { type: "integer", minimum: 0, maximum: 600000 },
    maxBackoffMs: { type: "integer", minimum: 0, maximum: 600000 },
    budgetMs: { type: "integer", minimum: 10, maximum: 600000 },
  },
  oneOf: [{ required: ["secret"] }, { required: ["secretName"] }],
} as const;

/** A failed delivery: `permanent` (4xx other than 408/429, a redirect) or retryable. */
export class DeliveryError extends Error {
  readonly permanent: boolean;
  readonly status: number | undefined;
  constructor(message: string, permanent: boolean, status?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DeliveryError";
    this.permanent = permanent;
    this.status = status;
  }
}

/** `sha256=<hex>` of `body` with `secret`. */
export function signature(secret: string, body: string | Uint8Array): string {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}

/** The POST body of one event. */
export function eventBody(event: SinkEvent, tenant: string): string {
  return JSON.stringify({ id: event.id, tenant, subject: event.subject, type: event.type, time: event.time, seq: event.seq, data: event.data });
}

function retryableStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

/** Delay before attempt `attempt` (2, 3, ...): exponential with full jitter in [d/2, d]. */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const d = Math.min(maxMs, baseMs * 2 ** (attempt - 2));
  return Math.round(d / 2 + random() * (d / 2));
}

/** Posts one event once. Resolves on 2xx; throws DeliveryError otherwise. */
export async function postOnce(url: string, body: string, headers: Record<string, string>, timeoutMs: number): Promise<number> {
  let res: Response;
  try {
    res = await fetch(url, { method: "POST", body, headers, redirect: "manual", signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    const timeout = (err as { name?: string }).name === "TimeoutError";
    throw new DeliveryError(timeout ? `no answer within ${timeoutMs} ms` : `connection failed: ${(err as Error).message}`, false, undefined, { cause: err });
  }
  await res.arrayBuffer().catch(() => undefined);
  if (res.status >= 200 && res.status < 300) return res.status;
  if (res.status >= 300 && res.status < 400) throw new DeliveryError(`answered ${res.status} (redirects are not followed)`, true, res.status);
  throw new DeliveryError(`answered ${res.status}`, !retryableStatus(res.status), res.status);
}

export interface DeliveryOutcome {
  /** Leading events confirmed by the endpoint. */
  readonly delivered: number;
  /** Why the next event was not (absent when all were). */
  readonly error?: DeliveryError;
  /** HTTP requests made. */
  readonly requests: number;
}

/**
 * Delivers `events` in order, each with its retries; stops at the first event that fails
 * for good (a permanent error, its attempts or the budget spent).
 */
export async function deliver(events: readonly SinkEvent[], tenant: string, o: Required<Omit<WebhookOptions, "secretName">>, sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))): Promise<DeliveryOutcome> {
  const deadline = Date.now() + o.budgetMs;
  let requests = 0;
  for (let i = 0; i < events.length; i++) {
    const event = events[i]!;
    const body = eventBody(event, tenant);
    const headers = { "content-type": "application/json", [SIGNATURE_HEADER]: signature(o.secret, body), [IDEMPOTENCY_HEADER]: event.id, "user-agent": "flexcore-http-sink/1" };
    for (let attempt = 1; ; attempt++) {
      if (attempt > 1) {
        const wait = backoffDelay(attempt, o.backoffMs, o.maxBackoffMs);
        if (Date.now() + wait >= deadline) return { delivered: i, error: new DeliveryError(`event ${event.id}: call budget of ${o.budgetMs} ms spent after ${attempt - 1} attempts`, false), requests };
        await sleep(wait);
      }
      requests += 1;
      try {
        await postOnce(o.url, body, headers, Math.max(1, Math.min(o.timeoutMs, deadline - Date.now())));
        break;
      } catch (err) {
        const e = err as DeliveryError;
        const failed = new DeliveryError(`event ${event.id}: ${e.message}${e.permanent ? "" : ` (attempt ${attempt} of ${o.maxAttempts})`}`, e.permanent, e.status, { cause: err });
        if (e.permanent || attempt >= o.maxAttempts) return { delivered: i, error: failed, requests };
      }
    }
  }
  return { delivered: events.length, requests };
}
