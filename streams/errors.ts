/**
 * Errors raised by the `streams/` area. Every FlexCore error extends {@link FlexError}
 * and carries a stable `code`; callers branch on `code` or `instanceof`, never on the
 * message. Codes are listed in `docs/errors.md`.
 */
import type { SchemaIssue } from "./schema.js";

/** Base class of every FlexCore error. */
export class FlexError extends Error {
  /** Stable, never reused identifier such as `FLEX_CONCURRENCY`. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FlexError";
    this.code = code;
  }
}

/** Describes a received value for an error message: `` `0` (number) ``. */
export function describeValue(value: unknown): string {
  if (typeof value === "string") {
    const shown = value.length > 80 ? `${value.slice(0, 77)}...` : value;
    return `${JSON.stringify(shown)} (string, ${Buffer.byteLength(value)} bytes)`;
  }
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (typeof value === "object") return Array.isArray(value) ? "an array" : "an object";
  return `\`${String(value)}\` (${typeof value})`;
}

/** An option or argument was outside its documented range. */
export class InvalidOptionError extends FlexError {
  /** Path of the bad value: `limits`, `script.limits.timeoutMs`. */
  readonly field: string;
  constructor(field: string, value: unknown, expected: string);
  /** From a schema pass (`compileSchema`): the first issue's path is the field, the others follow in the message. */
  constructor(issues: readonly SchemaIssue[]);
  constructor(fieldOrIssues: string | readonly SchemaIssue[], value?: unknown, expected?: string) {
    const [first, ...more] = typeof fieldOrIssues === "string" ? [] : fieldOrIssues;
    const field = typeof fieldOrIssues === "string" ? fieldOrIssues : (first?.path ?? "");
    super(
      "FLEX_INVALID_OPTION",
      typeof fieldOrIssues === "string"
        ? `Expected \`${field}\` to be ${expected}, got ${describeValue(value)}`
        : `Invalid \`${field}\`: ${first?.message ?? "invalid value"}${more.length ? ` (and ${more.map((i) => `${i.path}: ${i.message}`).join("; ")})` : ""}`,
    );
    this.name = "InvalidOptionError";
    this.field = field;
  }
}

/** A subject token (tenant, category, id, ...) cannot be used in a NATS subject. */
export class SubjectTokenError extends FlexError {
  readonly token: string;
  readonly value: unknown;
  constructor(token: string, value: unknown, reason: string) {
    super("FLEX_SUBJECT_TOKEN", `Invalid subject token \`${token}\`: ${reason}, got ${describeValue(value)}`);
    this.name = "SubjectTokenError";
    this.token = token;
    this.value = value;
  }
}

/**
 * A tenant name starting with `_`: such tenants are FlexCore's own (`_system` holds system
 * metrics and plugin status), so no user, token, configuration or request may name one.
 */
export class TenantReservedError extends FlexError {
  readonly field: string;
  readonly value: string;
  constructor(field: string, value: string) {
    super("FLEX_TENANT_RESERVED", `Expected \`${field}\` to be a tenant name not starting with \`_\` (reserved for FlexCore), got \`${value}\``);
    this.name = "TenantReservedError";
    this.field = field;
    this.value = value;
  }
}

/** An event is malformed: missing type, data that is not JSON, a bad id. */
export class InvalidEventError extends FlexError {
  readonly field: string;
  constructor(field: string, value: unknown, expected: string, options?: { cause?: unknown }) {
    super("FLEX_INVALID_EVENT", `Invalid event: expected \`${field}\` to be ${expected}, got ${describeValue(value)}`, options);
    this.name = "InvalidEventError";
    this.field = field;
  }
}

/** An encoded event is larger than the server's `max_payload`. */
export class PayloadTooLargeError extends FlexError {
  readonly size: number;
  readonly limit: number;
  constructor(subject: string, size: number, limit: number) {
    super("FLEX_PAYLOAD_TOO_LARGE", `Event for \`${subject}\` is ${size} bytes; the server accepts at most ${limit} (max_payload)`);
    this.name = "PayloadTooLargeError";
    this.size = size;
    this.limit = limit;
  }
}

/** Optimistic concurrency failed: the aggregate's revision was not the expected one. */
export class ConcurrencyError extends FlexError {
  readonly stream: string;
  readonly expected: number | string;
  readonly actual: number;
  constructor(stream: string, expected: number | string, actual: number) {
    super("FLEX_CONCURRENCY", `Append to \`${stream}\` expected revision ${String(expected)}, but the aggregate is at revision ${actual}`);
    this.name = "ConcurrencyError";
    this.stream = stream;
    this.expected = expected;
    this.actual = actual;
  }
}

/** The server refused a publish (no stream for the subject, limits, storage). */
export class PublishRejectedError extends FlexError {
  readonly subject: string;
  /** JetStream `err_code` when the server sent one. Stays inside `streams/`. */
  readonly serverCode: number | undefined;
  constructor(subject: string, reason: string, serverCode?: number) {
    super("FLEX_PUBLISH_REJECTED", `Publish to \`${subject}\` was rejected: ${reason}`);
    this.name = "PublishRejectedError";
    this.subject = subject;
    this.serverCode = serverCode;
  }
}

/** No acknowledgement arrived within the retry budget; the event may or may not be stored. */
export class PublishTimeoutError extends FlexError {
  readonly subject: string;
  readonly attempts: number;
  constructor(subject: string, attempts: number) {
    super("FLEX_PUBLISH_TIMEOUT", `Publish to \`${subject}\` was not acknowledged after ${attempts} attempts; retry with the same event id to store it exactly once`);
    this.name = "PublishTimeoutError";
    this.subject = subject;
    this.attempts = attempts;
  }
}

/**
 * No JetStream stream answered a publish through every attempt (NATS "no responders"):
 * no stream stores the subject, or its stream has no leader, as in a cluster that lost its
 * quorum. The last attempt stored nothing; retry with the same event id.
 */
export class StreamUnavailableError extends FlexError {
  readonly subject: string;
  readonly attempts: number;
  constructor(subject: string, attempts: number) {
    super("FLEX_STREAM_UNAVAILABLE", `No JetStream stream answered for \`${subject}\` after ${attempts} attempts: no stream stores this subject, or its stream has no leader (a cluster without a quorum of its servers); retry with the same event id`);
    this.name = "StreamUnavailableError";
    this.subject = subject;
    this.attempts = attempts;
  }
}

/** The publisher was closed (or its connection ended) before the message was acknowledged. */
export class PublisherClosedError extends FlexError {
  constructor(subject: string, options?: { cause?: unknown }) {
    super("FLEX_PUBLISHER_CLOSED", `Publisher closed before \`${subject}\` was acknowledged; retry with the same event id`, options);
    this.name = "PublisherClosedError";
  }
}

/** The operation was aborted through its `AbortSignal`. */
export class AbortedError extends FlexError {
  constructor(what: string, options?: { cause?: unknown }) {
    super("FLEX_ABORTED", `${what} was aborted`, options);
    this.name = "AbortedError";
  }
}

/** The `nats-server` binary is not installed or could not start. */
export class NatsServerError extends FlexError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("FLEX_NATS_SERVER", message, options);
    this.name = "NatsServerError";
  }
}

/** The stream or bucket on the server differs from what FlexCore provisions. */
export class TopologyError extends FlexError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("FLEX_TOPOLOGY", message, options);
    this.name = "TopologyError";
  }
}

/** An append holds more events than one atomic batch may (the server's limit, 1000 by default). */
export class BatchTooLargeError extends FlexError {
  readonly size: number;
  readonly limit: number;
  constructor(size: number, limit: number) {
    super("FLEX_BATCH_TOO_LARGE", `Expected \`events\` to hold at most ${limit} events (one atomic batch), got ${size}; split the append`);
    this.name = "BatchTooLargeError";
    this.size = size;
    this.limit = limit;
  }
}

/**
 * An append reuses an event id that another aggregate's event holds (within the dedupe
 * window), so nothing of it was stored. Which id, and where, is not said.
 */
export class DuplicateEventIdError extends FlexError {
  readonly stream: string;
  constructor(stream: string) {
    super("FLEX_DUPLICATE_EVENT_ID", `Append to \`${stream}\` was refused: one of its event ids was used by an event stored elsewhere; nothing of this append was stored`);
    this.name = "DuplicateEventIdError";
    this.stream = stream;
  }
}

/**
 * No dead letter with this sequence in the caller's tenant (it never existed, was purged,
 * redriven already, or belongs to another tenant: which one is not said).
 */
export class DeadLetterNotFoundError extends FlexError {
  readonly seq: number;
  constructor(seq: number) {
    super("FLEX_DLQ_NOT_FOUND", `No dead letter with sequence ${seq} in this tenant (it may have been redriven or purged already)`);
    this.name = "DeadLetterNotFoundError";
    this.seq = seq;
  }
}

/** A dead letter whose source cannot take it back (today: projections, see docs/dlq.md). */
export class RedriveUnsupportedError extends FlexError {
  readonly source: string;
  constructor(source: string, reason: string) {
    super("FLEX_DLQ_REDRIVE_UNSUPPORTED", `Dead letters of \`${source}\` cannot be redriven: ${reason}`);
    this.name = "RedriveUnsupportedError";
    this.source = source;
  }
}

/** A purge without confirmation (`--yes` on the CLI, `confirm=true` over HTTP); nothing was deleted. */
export class PurgeNotConfirmedError extends FlexError {
  readonly field = "confirm";
  /** Dead letters the purge would have deleted. */
  readonly matching: number;
  constructor(matching: number) {
    super("FLEX_DLQ_PURGE_UNCONFIRMED", `Expected \`confirm\` to be true to purge ${matching} dead letter(s), got nothing; nothing was deleted`);
    this.name = "PurgeNotConfirmedError";
    this.matching = matching;
  }
}
