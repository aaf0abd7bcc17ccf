import { headers as natsHeaders } from "@nats-io/transport-node";
import { dlqSubject, encodeData, HEADERS, parseSubject, SYSTEM_TENANT } from "../streams/index.js";
import type { Publisher, StoredEvent } from "../streams/index.js";

/**
 * Headers of a projection's dead letter in `FLEX_DLQ` (subject
 * `dlq.<tenant>.projection_<name>`); the body is the event's JSON data, unchanged, and the
 * event's own headers (`Flex-Type`, `Flex-Time`, ...) are copied.
 */
export const DLQ_HEADERS = {
  /** Why it failed: the error message (one line, at most 1024 characters). */
  reason: "Flex-Dlq-Reason",
  /** `FlexError` code of the error, when it has one. */
  errorCode: "Flex-Dlq-Error-Code",
  /** `projection:<name>` */
  source: "Flex-Dlq-Source",
  /** Stream and sequence the event was read from. */
  stream: "Flex-Dlq-Stream",
  seq: "Flex-Dlq-Seq",
  /** The event's original subject. */
  subject: "Flex-Dlq-Subject",
  /** What the projection did: `dlq` (skipped it) or `stop` (halted before it). */
  policy: "Flex-Dlq-Policy",
  /** After a redrive that failed again: JSON array of the earlier reasons, oldest first. */
  previousReasons: "Flex-Dlq-Previous-Reasons",
  /** After a redrive that failed again: the `FLEX_DLQ` sequence of the dead letter redriven. */
  redrivenFrom: "Flex-Dlq-Redriven-From",
} as const;

/** Where a dead letter of a redrive that failed again came from. */
export interface RedrivenFrom {
  readonly dlqSeq: number;
  readonly reasons: readonly string[];
}

const MAX_REASON = 1_024;
const MAX_PREVIOUS_REASONS = 4_096;

/** The DLQ source token of a projection. */
export function dlqSource(projection: string): string {
  return `projection_${projection}`;
}

function tenantOf(subject: string): string {
  try {
    return parseSubject(subject).tenant;
  } catch {
    return SYSTEM_TENANT;
  }
}

/**
 * Publishes a failed event to `FLEX_DLQ` and waits for the ack. The message id is derived
 * from (projection, stream, sequence), so a retry after a crash is stored once.
 */
export async function deadLetter(publisher: Publisher, projection: string, stream: string, event: StoredEvent, error: unknown, policy: string, redriven?: RedrivenFrom): Promise<void> {
  const h = natsHeaders();
  const reason = (error instanceof Error ? error.message : String(error)).replace(/[\r\n\u0000]+/gu, " ").slice(0, MAX_REASON) || "unknown error";
  // A redrive that failed again is a new dead letter (its own id), carrying the earlier reasons.
  h.set(HEADERS.msgId, `dlq:projection:${projection}:${stream}:${event.seq}${redriven ? `:r${redriven.dlqSeq}` : ""}`);
  if (redriven) {
    let reasons = [...redriven.reasons];
    while (reasons.length > 1 && JSON.stringify(reasons).length > MAX_PREVIOUS_REASONS) reasons = reasons.slice(1);
    h.set(DLQ_HEADERS.previousReasons, JSON.stringify(reasons).replace(/[\r\n\u0000]+/gu, " ").slice(0, MAX_PREVIOUS_REASONS));
    h.set(DLQ_HEADERS.redrivenFrom, String(redriven.dlqSeq));
  }
  h.set(HEADERS.type, event.type);
  h.set(HEADERS.time, event.time);
  h.set(HEADERS.correlationId, event.correlationId ?? event.id);
  h.set(HEADERS.causationId, event.id);
  h.set(HEADERS.schema, event.schema);
  h.set(HEADERS.contentType, "application/json");
  h.set(DLQ_HEADERS.reason, reason);
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string" && code.length > 0 && code.length < 128) h.set(DLQ_HEADERS.errorCode, code);
  h.set(DLQ_HEADERS.source, `projection:${projection}`);
  h.set(DLQ_HEADERS.stream, stream);
  h.set(DLQ_HEADERS.seq, String(event.seq));
  h.set(DLQ_HEADERS.subject, event.subject);
  h.set(DLQ_HEADERS.policy, policy);
  await publisher.publish(dlqSubject(tenantOf(event.subject), dlqSource(projection)), encodeData(event.data), { headers: h });
}
