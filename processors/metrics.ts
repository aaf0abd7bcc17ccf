/** One processor's runtime figures (what `/metrics` and `MetricsReported` show). */
export interface ProcessorMetrics {
  readonly processor: string;
  readonly kind: string;
  /** Whether this instance holds the processor's lease in `flex_leases` (a standby runs nothing). */
  readonly owner: boolean;
  /** For `scale: partitioned`: the partitions this instance consumes now. */
  readonly partitions?: readonly number[];
  /** Source events acknowledged since start (processed, skipped as already reflected, or dead-lettered). */
  readonly processed: number;
  /** Derived events published since start. */
  readonly outputs: number;
  /** Failed attempts (a task or key that threw, a worker that died) since start. */
  readonly errors: number;
  /** Deliveries JetStream made again (ack wait passed, a nak, a restart) since start. */
  readonly redelivered: number;
  /** Events sent to `FLEX_DLQ` since start. */
  readonly deadLettered: number;
  /** Events fetched and not yet acknowledged. */
  readonly inFlight: number;
  /** Events waiting in partitions plus tasks waiting for a worker. */
  readonly queueDepth: number;
  /** Events per second since the last report. */
  readonly throughput: number;
  /** Latency from fetch to acknowledgement, in ms, over the last 8192 events. */
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
}

/** Latencies kept for the percentiles. */
export const LATENCY_SAMPLES = 8_192;

/**
 * Percentiles are computed again at most this often, in ms: sorting the window costs about
 * half a millisecond, and whoever polls `metrics()` in a tight loop (a bench, a dashboard)
 * would otherwise take that from the runtime's thread at every call.
 */
export const PERCENTILES_REFRESH_MS = 100;

/** The last {@link LATENCY_SAMPLES} latencies in a ring; percentiles by sorting a copy on demand. */
export class LatencyWindow {
  readonly #ring = new Float64Array(LATENCY_SAMPLES);
  #count = 0;
  #next = 0;
  /** Samples added so far (never reset): whether the cached percentiles are stale. */
  #added = 0;
  #cached: { readonly p50: number; readonly p95: number; readonly p99: number; readonly added: number; readonly at: number } | undefined;

  add(ms: number): void {
    this.#ring[this.#next] = ms;
    this.#next = (this.#next + 1) % LATENCY_SAMPLES;
    if (this.#count < LATENCY_SAMPLES) this.#count += 1;
    this.#added += 1;
  }

  reset(): void {
    this.#count = 0;
    this.#next = 0;
    this.#cached = undefined;
  }

  /** Over the window as it was at most {@link PERCENTILES_REFRESH_MS} ago (exact once nothing is added). */
  percentiles(): { p50: number; p95: number; p99: number } {
    if (this.#count === 0) return { p50: 0, p95: 0, p99: 0 };
    const c = this.#cached;
    const now = performance.now();
    if (c && (c.added === this.#added || now - c.at < PERCENTILES_REFRESH_MS)) return { p50: c.p50, p95: c.p95, p99: c.p99 };
    const s = this.#ring.slice(0, this.#count).sort();
    const at = (p: number): number => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
    this.#cached = { p50: at(0.5), p95: at(0.95), p99: at(0.99), added: this.#added, at: now };
    return { p50: this.#cached.p50, p95: this.#cached.p95, p99: this.#cached.p99 };
  }
}
