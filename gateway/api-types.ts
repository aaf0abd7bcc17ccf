/**
 * Shapes of the gateway's answers that the console's browser bundle reads too: plain types,
 * so `gateway/console` imports them (type-only) instead of keeping copies. The only imports
 * are other areas' plain-types faces (`streams/api-types.ts`: what the gateway answers with
 * as `streams/` gives it), which import nothing themselves (test/import-graph.test.ts).
 */
import type { DeadLetterCount } from "../streams/api-types.js";

export type { DeadLetter, DeadLetterPage, PurgeReport, RedriveReport } from "../streams/api-types.js";

/** Dead letters of one of the caller's sources (its tenant goes without saying). */
export type SourceDeadLetters = Omit<DeadLetterCount, "tenant">;

/** What `GET /v1/dlq` answers. */
export interface DeadLetterSources {
  readonly sources: readonly SourceDeadLetters[];
}

/** What `GET /v1/overview` answers. Counts are totals; rates are the client's differences between two readings. */
export interface Overview {
  readonly tenant: string;
  /** When the figures were read (RFC 3339). */
  readonly at: string;
  /** The tenant's events in `FLEX_EVENTS` (`evt.<tenant>.>`). */
  readonly events: number;
  /** The tenant's processor outputs in `FLEX_DERIVED` (`drv.<tenant>.>`). */
  readonly derived: number;
  /** Per processor: the tenant's outputs, and the processor's lag over every tenant (as `/ops/processors`). */
  readonly processors: ReadonlyArray<{ readonly processor: string; readonly outputs: number; readonly lag: number }>;
  /** Projection lags over every tenant (as `/metrics`): projections are shared. */
  readonly projections: ReadonlyArray<{ readonly name: string; readonly lag: number }>;
  /** The tenant's dead letters per source. */
  readonly deadLetters: readonly SourceDeadLetters[];
  /** The system plugins and the tenant's own; null when the gateway runs no plugin host. */
  readonly plugins: ReadonlyArray<{ readonly name: string; readonly state: string; readonly enabled: boolean; readonly restarts: number }> | null;
}
