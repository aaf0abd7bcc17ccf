/**
 * Errors raised by the `gateway/` area. Each carries a stable `code` (listed in
 * `docs/errors.md`) and the HTTP status it is answered with; every error response has
 * the body `{ "error": { "code", "message", "details" } }`.
 */
import { FlexError } from "../streams/index.js";

/** A gateway error: a {@link FlexError} with the HTTP status it maps to and optional details. */
export class GatewayError extends FlexError {
  /** HTTP status of the response. */
  readonly status: number;
  /** Machine-readable facts for the `details` field of the response. */
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(code: string, status: number, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = "GatewayError";
    this.status = status;
    this.details = details;
  }
}

/** No token, or a token that is not valid (signature, algorithm, issuer, audience, type, expiry, revoked). HTTP 401. */
export class UnauthenticatedError extends GatewayError {
  constructor(reason: string, options?: { cause?: unknown }) {
    super("FLEX_UNAUTHENTICATED", 401, `Authentication required: ${reason}`, { reason }, options);
    this.name = "UnauthenticatedError";
  }
}

/** The `Authorization` header is longer than the gateway accepts. HTTP 431. */
export class TokenTooLargeError extends GatewayError {
  constructor(size: number, limit: number) {
    super("FLEX_TOKEN_TOO_LARGE", 431, `The Authorization header is ${size} bytes; at most ${limit} are accepted`, { size, limit });
    this.name = "TokenTooLargeError";
  }
}

/** Wrong tenant, username or password. HTTP 401. The message does not say which. */
export class InvalidCredentialsError extends GatewayError {
  constructor() {
    super("FLEX_INVALID_CREDENTIALS", 401, "Invalid tenant, username or password");
    this.name = "InvalidCredentialsError";
  }
}

/** A refresh token that is invalid, expired, revoked or was already used. HTTP 401. */
export class InvalidRefreshTokenError extends GatewayError {
  constructor(reason: string, options?: { cause?: unknown }) {
    super("FLEX_REFRESH_INVALID", 401, `Refresh token rejected: ${reason}`, { reason }, options);
    this.name = "InvalidRefreshTokenError";
  }
}

/** A refresh token was presented a second time: every session of the user is revoked. HTTP 401. */
export class RefreshTokenReuseError extends GatewayError {
  constructor(revokedSessions: number) {
    super("FLEX_REFRESH_REUSED", 401, "Refresh token was already used; every session of this user has been revoked, sign in again", { revokedSessions });
    this.name = "RefreshTokenReuseError";
  }
}

/** The token's roles do not allow the route (see the policy table in `docs/gateway.md`). HTTP 403. */
export class ForbiddenError extends GatewayError {
  constructor(route: string, allowed: readonly string[], roles: readonly string[]) {
    super("FLEX_FORBIDDEN", 403, `Route \`${route}\` needs one of the roles ${allowed.join(", ")}; the token has ${roles.length ? roles.join(", ") : "none"}`, { route, allowed, roles });
    this.name = "ForbiddenError";
  }
}

/**
 * A write to a category only FlexCore appends to (`workflow`, `plugin`, `metrics`: the
 * `RESERVED_CATEGORIES` of `streams/`). HTTP 403. Nothing was written.
 */
export class CategoryReservedError extends GatewayError {
  constructor(category: string, reserved: readonly string[]) {
    super("FLEX_CATEGORY_RESERVED", 403, `Category \`${category}\` is written by FlexCore only (reserved: ${reserved.join(", ")}); start workflow runs with POST /v1/workflows/{name}/runs`, { category, reserved });
    this.name = "CategoryReservedError";
  }
}

/** The resource does not exist for the token's tenant (also what another tenant's ids look like). HTTP 404. */
export class NotFoundError extends GatewayError {
  constructor(what: string) {
    super("FLEX_NOT_FOUND", 404, `${what} not found`);
    this.name = "NotFoundError";
  }
}

/** A tenant's admin tried to switch a system plugin (the operator's, `flexcore plugins enable|disable`). HTTP 403. */
export class PluginSystemOwnedError extends GatewayError {
  constructor(plugin: string) {
    super("FLEX_PLUGIN_SYSTEM_OWNED", 403, `Plugin \`${plugin}\` is a system plugin: only the operator enables or disables it (\`flexcore plugins enable|disable\`)`, { plugin });
    this.name = "PluginSystemOwnedError";
  }
}

/** A query parameter, header, path parameter or body field is invalid; nothing was changed. HTTP 400. */
export class BadRequestError extends GatewayError {
  readonly field: string;
  constructor(field: string, message: string, details?: Record<string, unknown>) {
    super("FLEX_BAD_REQUEST", 400, message, { field, ...details });
    this.name = "BadRequestError";
    this.field = field;
  }
}

/** The body is not valid JSON / NDJSON. HTTP 400. */
export class InvalidJsonError extends GatewayError {
  constructor(message: string, details?: Record<string, unknown>) {
    super("FLEX_INVALID_JSON", 400, `The body is not valid JSON: ${message}`, details);
    this.name = "InvalidJsonError";
  }
}

/** The body's `Content-Type` is not one the route accepts. HTTP 415. */
export class UnsupportedMediaTypeError extends GatewayError {
  constructor(received: string | undefined, accepted: readonly string[]) {
    super("FLEX_UNSUPPORTED_MEDIA_TYPE", 415, `Content-Type ${received ? `\`${received}\`` : "(none)"} is not accepted; send ${accepted.join(" or ")}`, { received: received ?? null, accepted });
    this.name = "UnsupportedMediaTypeError";
  }
}

/** The body is larger than the route accepts. HTTP 413. */
export class BodyTooLargeError extends GatewayError {
  constructor(limit: number) {
    super("FLEX_BODY_TOO_LARGE", 413, `The body is larger than the ${limit} bytes this route accepts`, { limit });
    this.name = "BodyTooLargeError";
  }
}

/** The tenant sent more requests than its rate limit allows. HTTP 429 with `Retry-After`. */
export class RateLimitedError extends GatewayError {
  /** Seconds until a request will be accepted again. */
  readonly retryAfter: number;
  constructor(retryAfter: number, limitPerSecond: number) {
    super("FLEX_RATE_LIMITED", 429, `Too many requests for this tenant (limit ${limitPerSecond}/s); retry after ${retryAfter} s`, { retryAfter, limitPerSecond });
    this.name = "RateLimitedError";
    this.retryAfter = retryAfter;
  }
}

/** The request did not finish within the gateway's request timeout. HTTP 503. */
export class RequestTimeoutError extends GatewayError {
  constructor(timeoutMs: number) {
    super("FLEX_REQUEST_TIMEOUT", 503, `The request did not finish within ${timeoutMs} ms`, { timeoutMs });
    this.name = "RequestTimeoutError";
  }
}

/** A feature the route needs is not running in this gateway (e.g. no projection engine). HTTP 503. */
export class UnavailableError extends GatewayError {
  constructor(what: string) {
    super("FLEX_UNAVAILABLE", 503, `${what} is not available in this gateway`);
    this.name = "UnavailableError";
  }
}

/** `users add` for a user that exists. HTTP 409. */
export class UserExistsError extends GatewayError {
  constructor(tenant: string, username: string) {
    super("FLEX_USER_EXISTS", 409, `User \`${username}\` already exists in tenant \`${tenant}\``, { tenant, username });
    this.name = "UserExistsError";
  }
}

/** `users remove|passwd` for a user that does not exist. HTTP 404. */
export class UserNotFoundError extends GatewayError {
  constructor(tenant: string, username: string) {
    super("FLEX_USER_NOT_FOUND", 404, `User \`${username}\` does not exist in tenant \`${tenant}\``, { tenant, username });
    this.name = "UserNotFoundError";
  }
}

/** A signing key could not be read, parsed or written. */
export class KeyStoreError extends GatewayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("FLEX_KEYSTORE", 500, message, undefined, options);
    this.name = "KeyStoreError";
  }
}

/** `/console` was asked for but the console was not built into `dist/console`. HTTP 503. */
export class ConsoleNotBuiltError extends GatewayError {
  constructor(dir: string) {
    super("FLEX_CONSOLE_NOT_BUILT", 503, `The console is not built (no manifest.json in ${dir}); run \`npm run build\``, { dir });
    this.name = "ConsoleNotBuiltError";
  }
}

/** The tenant already has as many open live event feeds on this gateway instance as it may. HTTP 429. */
export class LiveFeedLimitError extends GatewayError {
  constructor(limit: number) {
    super("FLEX_LIVE_FEEDS_EXHAUSTED", 429, `Your tenant already has ${limit} open live event feeds on this gateway; close one (another tab or client) and retry`, { limit });
    this.name = "LiveFeedLimitError";
  }
}

/**
 * A tenant's admin tried to grant or take away a role it may not manage through the HTTP API
 * (`operator`: deployment-wide, granted only with `flexcore users add|roles`), or to change or
 * remove a user that holds it.
 */
export class RoleNotGrantableError extends GatewayError {
  constructor(role: string, grantable: readonly string[], reason: string) {
    super("FLEX_ROLE_NOT_GRANTABLE", 403, `Invalid \`roles\`: ${reason} (role \`${role}\`); a tenant admin grants only ${grantable.join(", ")}. The operator role is granted by the deployment's operator: \`flexcore users add|roles <tenant> <user> --roles operator,...\``, { field: "roles", role, grantable });
    this.name = "RoleNotGrantableError";
  }
}

/** No projection engine answered the gateway's control request on NATS (none runs, or none is reachable). */
export class EngineUnreachableError extends GatewayError {
  constructor(subject: string) {
    super("FLEX_ENGINE_UNREACHABLE", 503, `No running projection engine answered on \`${subject}\`; start \`flexcore up\` (or check its NATS connection) and retry`, { subject });
    this.name = "EngineUnreachableError";
  }
}
