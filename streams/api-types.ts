/**
 * Shapes of `streams/` values that the gateway answers with as they are and that browser
 * code (the console's bundle) reads too: plain types with no imports, so the console can
 * import them, type-only, through `gateway/api-types.ts` instead of keeping copies. Like
 * `index.ts` and `testing.ts`, this file is a face of the area (test/import-graph.test.ts
 * lets other areas import it, and checks that it imports nothing).
 */
/** Dead letters of one source of one tenant. */
export interface DeadLetterCount {
  readonly tenant: string;
  readonly source: string;
  /** Dead letters stored in `FLEX_DLQ`. */
  readonly count: number;
  /** Redriven and not yet taken back by the source (in `FLEX_REDRIVE`). */
  readonly redrivePending: number;
}

/** One dead letter, whatever component wrote it. */
export interface DeadLetter {
  /** Sequence in `FLEX_DLQ`: the id to show, redrive or purge it by. */
  readonly seq: number;
  readonly tenant: string;
  readonly source: string;
  /** `processor`, `projection`, `trigger` (a workflow's event trigger), or `unknown` for a message FlexCore cannot read. */
  readonly kind: "processor" | "projection" | "trigger" | "unknown";
  /** When it was dead-lettered (RFC 3339). */
  readonly storedAt: string;
  /** The last failure. */
  readonly reason: string;
  /** Every failure so far, oldest first (more than one after a redrive that failed again). */
  readonly reasons: readonly string[];
  readonly errorCode: string | null;
  /** Attempts before it was dead-lettered (processors), null when not recorded. */
  readonly attempts: number | null;
  readonly originalSubject: string | null;
  readonly originalSeq: number | null;
  readonly eventType: string | null;
  readonly eventTime: string | null;
  /** Every header of the dead letter as stored. */
  readonly headers: Readonly<Record<string, string>>;
  /** The original event's data. */
  readonly data: unknown;
}

/** A page of dead letters, oldest first (`DeadLetters.find`, `GET /v1/dlq/messages`). */
export interface DeadLetterPage {
  readonly deadLetters: DeadLetter[];
  /** True when more matched than the page holds. */
  readonly more: boolean;
}

/** What a redrive did. */
export interface RedriveReport {
  /** Dead letters sent back to their source (and removed from `FLEX_DLQ`). */
  readonly redriven: readonly number[];
  /** Of those, redrives the server had already stored (a repeat within the duplicate window). */
  readonly duplicates: number;
  /** True when more matched than one call handles (`MAX_DLQ_BATCH`). */
  readonly more: boolean;
}

/** What a purge did, or (unconfirmed) would do. */
export interface PurgeReport {
  readonly purged: number;
  readonly more: boolean;
}
