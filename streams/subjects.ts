import { SubjectTokenError, TenantReservedError } from "./errors.js";

/** Longest token FlexCore accepts, in UTF-8 bytes. */
export const MAX_TOKEN_BYTES = 128;

/** Root token of each subject family (see DESIGN.md). */
export const SUBJECT_ROOTS = { events: "evt", derived: "drv", dlq: "dlq", redrive: "redrive", reapply: "reapply" } as const;

/** Tenant used for system events (`evt._system.plugin.<name>`). */
export const SYSTEM_TENANT = "_system";
/** First character of the tenant names reserved for FlexCore ({@link SYSTEM_TENANT} and any later one). */
export const RESERVED_TENANT_PREFIX = "_";

// Anything a NATS subject tokenises on or treats as a wildcard, plus control characters.
const FORBIDDEN = /[\s.*>\u0000-\u001f\u007f]/u;

/**
 * Checks one subject token and returns it.
 * @throws SubjectTokenError naming `name` and the value when it is empty, has `.`, `*`,
 * `>`, whitespace or control characters, or is over {@link MAX_TOKEN_BYTES} bytes.
 */
export function checkToken(name: string, value: unknown): string {
  if (typeof value !== "string") throw new SubjectTokenError(name, value, "expected a string");
  if (value.length === 0) throw new SubjectTokenError(name, value, "it is empty");
  const bad = FORBIDDEN.exec(value);
  if (bad) {
    const ch = bad[0];
    const shown = ch === "." || ch === "*" || ch === ">" ? `\`${ch}\`` : `U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;
    throw new SubjectTokenError(name, value, `it contains ${shown} (no dots, wildcards, whitespace or control characters)`);
  }
  if (Buffer.byteLength(value) > MAX_TOKEN_BYTES) {
    throw new SubjectTokenError(name, value, `it is over ${MAX_TOKEN_BYTES} bytes`);
  }
  return value;
}

/**
 * Checks a tenant that a user, token, configuration or request names: a subject token
 * ({@link checkToken}) that does not start with `_`. FlexCore's own subjects
 * (`evt._system...`) are built with {@link eventSubject}, which takes any token.
 * @throws SubjectTokenError for a bad token, TenantReservedError for a reserved name
 */
export function checkTenantName(value: unknown, field = "tenant"): string {
  checkToken(field, value);
  if ((value as string).startsWith(RESERVED_TENANT_PREFIX)) throw new TenantReservedError(field, value as string);
  return value as string;
}

/** `evt.<tenant>.<category>.<id>`: one subject is one aggregate's stream. */
export function eventSubject(tenant: string, category: string, id: string): string {
  return `${SUBJECT_ROOTS.events}.${checkToken("tenant", tenant)}.${checkToken("category", category)}.${checkToken("id", id)}`;
}

/** `drv.<tenant>.<processor>.<key>`: a processor's output for one key. */
export function derivedSubject(tenant: string, processor: string, key: string): string {
  return `${SUBJECT_ROOTS.derived}.${checkToken("tenant", tenant)}.${checkToken("processor", processor)}.${checkToken("key", key)}`;
}

/** `dlq.<tenant>.<source>`: dead letters of one source (processor or projection). */
export function dlqSubject(tenant: string, source: string): string {
  return `${SUBJECT_ROOTS.dlq}.${checkToken("tenant", tenant)}.${checkToken("source", source)}`;
}

/**
 * `redrive.<tenant>.<source>`: dead letters sent back to the one source (processor) that
 * failed them, in `FLEX_REDRIVE`; only that source consumes it (see docs/dlq.md).
 */
export function redriveSubject(tenant: string, source: string): string {
  return `${SUBJECT_ROOTS.redrive}.${checkToken("tenant", tenant)}.${checkToken("source", source)}`;
}

/**
 * `reapply.<tenant>.projection_<name>`: a projection's dead letters sent back, in
 * `FLEX_REAPPLY` (limits retention): every instance's copy of the projection reads it and
 * applies the event where that copy failed it (see docs/dlq.md).
 */
export function reapplySubject(tenant: string, source: string): string {
  return `${SUBJECT_ROOTS.reapply}.${checkToken("tenant", tenant)}.${checkToken("source", source)}`;
}

/** A parsed FlexCore subject. */
export type ParsedSubject =
  | { readonly kind: "event"; readonly tenant: string; readonly category: string; readonly id: string }
  | { readonly kind: "derived"; readonly tenant: string; readonly processor: string; readonly key: string }
  | { readonly kind: "dlq"; readonly tenant: string; readonly source: string };

/**
 * Parses a concrete FlexCore subject.
 * @throws SubjectTokenError when the subject is not one of the three families or has a bad token.
 */
export function parseSubject(subject: string): ParsedSubject {
  const parts = subject.split(".");
  const [root, tenant, a, b] = parts;
  if (root === SUBJECT_ROOTS.events && parts.length === 4) {
    return { kind: "event", tenant: checkToken("tenant", tenant), category: checkToken("category", a), id: checkToken("id", b) };
  }
  if (root === SUBJECT_ROOTS.derived && parts.length === 4) {
    return { kind: "derived", tenant: checkToken("tenant", tenant), processor: checkToken("processor", a), key: checkToken("key", b) };
  }
  if (root === SUBJECT_ROOTS.dlq && parts.length === 3) {
    return { kind: "dlq", tenant: checkToken("tenant", tenant), source: checkToken("source", a) };
  }
  throw new SubjectTokenError("subject", subject, "expected evt.<tenant>.<category>.<id>, drv.<tenant>.<processor>.<key> or dlq.<tenant>.<source>");
}

/**
 * Checks a subject filter such as `evt.acme.>` or `evt.*.sensor.*`: tokens may be `*`, the
 * last may be `>`, the others follow {@link checkToken}.
 */
export function checkSubjectFilter(filter: string): string {
  const parts = filter.split(".");
  parts.forEach((part, i) => {
    if (part === "*" || (part === ">" && i === parts.length - 1)) return;
    checkToken(`filter token ${i + 1}`, part);
  });
  return filter;
}
