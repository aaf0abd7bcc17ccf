import {
  AbortedError,
  BatchTooLargeError,
  ConcurrencyError,
  DuplicateEventIdError,
  FlexError,
  InvalidEventError,
  InvalidOptionError,
  PayloadTooLargeError,
  PublishRejectedError,
  PublishTimeoutError,
  PublisherClosedError,
  StreamUnavailableError,
  SubjectTokenError,
  TenantReservedError,
} from "../streams/index.js";
import { FOREIGN_ERROR_STATUS } from "./read-models.js";
import { BodyTooLargeError, GatewayError, InvalidJsonError, NotFoundError, UnsupportedMediaTypeError } from "./errors.js";

/** The one error body every gateway error response has. */
export interface ErrorBody {
  readonly error: {
    readonly code: string;
    readonly message: string;
    readonly details: Readonly<Record<string, unknown>> | null;
  };
}

/** An error translated for HTTP: status, extra headers and the body. */
export interface HttpError {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: ErrorBody;
}

function body(code: string, message: string, details?: Readonly<Record<string, unknown>> | null): ErrorBody {
  return { error: { code, message, details: details ?? null } };
}

interface FastifyLikeError {
  code?: string;
  statusCode?: number;
  validation?: ReadonlyArray<{ instancePath?: string; message?: string; params?: unknown; keyword?: string }>;
  validationContext?: string;
}

/**
 * Translates any error into the gateway's status and error body: FlexCore errors keep
 * their `code`; Fastify's own (validation, body limits, content types) get FlexCore codes;
 * anything else is a 500 with a generic message (details stay in the log).
 */
export function toHttpError(err: unknown, bodyLimit?: number): HttpError {
  const headers: Record<string, string> = {};
  if (err instanceof GatewayError) {
    if (err.status === 429 && typeof err.details?.retryAfter === "number") headers["retry-after"] = String(err.details.retryAfter);
    return { status: err.status, headers, body: body(err.code, err.message, err.details) };
  }
  if (err instanceof ConcurrencyError) {
    headers.etag = `"${err.actual}"`;
    return { status: 409, headers, body: body(err.code, err.message, { expected: err.expected, actual: err.actual, currentRevision: err.actual }) };
  }
  if (err instanceof TenantReservedError) return { status: 400, headers, body: body(err.code, err.message, { field: err.field }) };
  if (err instanceof DuplicateEventIdError) return { status: 409, headers, body: body(err.code, err.message) };
  if (err instanceof BatchTooLargeError) return { status: 400, headers, body: body(err.code, err.message, { field: "events", limit: err.limit }) };
  if (err instanceof SubjectTokenError) return { status: 400, headers, body: body(err.code, err.message, { field: err.token }) };
  if (err instanceof InvalidEventError) return { status: 400, headers, body: body(err.code, err.message, { field: err.field }) };
  if (err instanceof InvalidOptionError) return { status: 400, headers, body: body(err.code, err.message, { field: err.field }) };
  if (err instanceof PayloadTooLargeError) return { status: 413, headers, body: body(err.code, err.message, { size: err.size, limit: err.limit }) };
  if (err instanceof PublishTimeoutError || err instanceof PublisherClosedError || err instanceof StreamUnavailableError) return { status: 503, headers, body: body(err.code, err.message) };
  if (err instanceof PublishRejectedError) return { status: 502, headers, body: body(err.code, err.message) };
  if (err instanceof AbortedError) return { status: 503, headers, body: body(err.code, err.message) };
  if (err instanceof FlexError) {
    const status = FOREIGN_ERROR_STATUS[err.code];
    if (status !== undefined) {
      const field = (err as { field?: unknown }).field;
      return { status, headers, body: body(err.code, err.message, typeof field === "string" ? { field } : null) };
    }
    return { status: 500, headers, body: body(err.code, err.message) };
  }

  const f = (err ?? {}) as FastifyLikeError;
  if (f.validation) {
    const first = f.validation[0];
    const where = f.validationContext ?? "request";
    const field = `${where}${first?.instancePath ? first.instancePath.replace(/\//g, ".") : ""}`;
    return {
      status: 400,
      headers,
      body: body("FLEX_BAD_REQUEST", `Invalid ${field}: ${first?.message ?? "does not match the schema"}`, { field, errors: f.validation.map((v) => ({ path: v.instancePath, message: v.message, params: v.params })) }),
    };
  }
  switch (f.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE": {
      const e = new BodyTooLargeError(bodyLimit ?? 0);
      return { status: 413, headers, body: body(e.code, e.message, e.details) };
    }
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE": {
      const e = new UnsupportedMediaTypeError(undefined, ["application/json"]);
      return { status: 415, headers, body: body(e.code, e.message, e.details) };
    }
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
    case "FST_ERR_CTP_INVALID_JSON_BODY": {
      const e = new InvalidJsonError(f.code === "FST_ERR_CTP_EMPTY_JSON_BODY" ? "the body is empty" : "it cannot be parsed");
      return { status: 400, headers, body: body(e.code, e.message) };
    }
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return { status: 400, headers, body: body("FLEX_BAD_REQUEST", "Content-Length does not match the body", { field: "content-length" }) };
    default:
      break;
  }
  if (err instanceof SyntaxError) {
    const e = new InvalidJsonError(err.message);
    return { status: 400, headers, body: body(e.code, e.message) };
  }
  if (typeof f.statusCode === "number" && f.statusCode >= 400 && f.statusCode < 500) {
    return { status: f.statusCode, headers, body: body("FLEX_BAD_REQUEST", (err as Error).message, { field: "request" }) };
  }
  return { status: 500, headers, body: body("FLEX_INTERNAL", "Internal error; see the gateway log") };
}

/** The 404 body for unknown routes. */
export function notFoundBody(method: string, url: string): ErrorBody {
  const e = new NotFoundError(`Route ${method} ${url.split("?")[0]}`);
  return body(e.code, e.message);
}
