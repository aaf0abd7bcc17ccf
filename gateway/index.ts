export {
  BadRequestError,
  BodyTooLargeError,
  ConsoleNotBuiltError,
  ForbiddenError,
  GatewayError,
  InvalidCredentialsError,
  InvalidJsonError,
  InvalidRefreshTokenError,
  KeyStoreError,
  LiveFeedLimitError,
  NotFoundError,
  PluginSystemOwnedError,
  RateLimitedError,
  EngineUnreachableError,
  RefreshTokenReuseError,
  RequestTimeoutError,
  RoleNotGrantableError,
  TokenTooLargeError,
  UnauthenticatedError,
  UnavailableError,
  UnsupportedMediaTypeError,
  UserExistsError,
  UserNotFoundError,
} from "./errors.js";
export {
  createGateway,
  DEFAULT_BATCH_BODY_LIMIT,
  DEFAULT_BODY_LIMIT,
  DEFAULT_MAX_BATCH_EVENTS,
  DEFAULT_MAX_PAGE_SIZE,
  DEFAULT_MAX_READY_LAG,
  DEFAULT_MAX_WAIT_MS,
  DEFAULT_PAGE_SIZE,
  DEFAULT_REQUEST_TIMEOUT_MS,
} from "./gateway.js";
export { NO_AUTH_TENANT } from "./auth-hook.js";
export type { Gateway, GatewayOptions, Limits, ReadinessCheck } from "./gateway.js";
export type { ErrorBody } from "./http-errors.js";
export { defaultConsoleDir } from "./console-assets.js";
export type { ConsoleManifest } from "./console-assets.js";
export { CONSOLE_CSP } from "./routes/console.js";
export type { Overview } from "./overview.js";
export { DEFAULT_RSA_BITS, openKeyStore, SIGNING_ALG } from "./keys.js";
export type { KeyInfo, KeyStore, KeyStoreOptions } from "./keys.js";
export type { PluginsApi, PluginView } from "./route-context.js";
export type { DeadLetterReading, GatewayMetrics, LagReading, LagSources, MetricSources, PluginEndpointReading, PluginReading, ProcessorReading, ProjectionReading, PublisherReading, StreamReading, WorkflowReading } from "./metrics.js";
export { allows, checkRoles, OPERATOR_ROLE, POLICY, ROLES, TENANT_GRANTABLE_ROLES } from "./policy.js";
export type { PolicyName, Role } from "./policy.js";
export { DEFAULT_RATE_PER_SECOND, resolveRateLimit } from "./rate-limit.js";
export type { RateLimit, RateLimitOptions } from "./rate-limit.js";
export type { ReadModelChange, ReadModelEntry, ReadModelPage, ReadModelQuery, ReadModelReader, ReadModels } from "./read-models.js";
export { openRevocations } from "./revocations.js";
export type { Revocations, RevocationsOptions } from "./revocations.js";
export { DEFAULT_AUTH_SWEEP_BATCH, DEFAULT_AUTH_SWEEP_INTERVAL_MS, DEFAULT_MARKER_GRACE_MS, openAuthSweeper } from "./auth-sweep.js";
export type { AuthSweeper, AuthSweeperOptions, SweepReport } from "./auth-sweep.js";
export { EXTERNAL_ISSUER_ENV, externalIssuerOptions, GATEWAY_SCHEMA, gatewaySection } from "./config.js";
export type { ExternalIssuerConfig, GatewayConfig } from "./config.js";
export { openSessions, revokeUserSessions, SESSION_PREFIX } from "./sessions.js";
export type { SessionService, TokenPair } from "./sessions.js";
export {
  ACCESS_TOKEN_TYPE,
  createTokenIssuer,
  createTokenVerifier,
  DEFAULT_ACCESS_TTL_S,
  DEFAULT_AUDIENCE,
  DEFAULT_EXTERNAL_CLOCK_TOLERANCE_S,
  DEFAULT_EXTERNAL_TOKEN_TYPES,
  DEFAULT_ISSUER,
  DEFAULT_REFRESH_AUDIENCE,
  DEFAULT_REFRESH_TTL_S,
  MAX_TOKEN_BYTES,
  REFRESH_TOKEN_TYPE,
} from "./tokens.js";
export type { ExternalIssuerOptions, LocalIssuerOptions, Principal, TokenIssuer, TokenVerifier, TokenVerifierOptions } from "./tokens.js";
export { checkUserTenant, checkUsername, hashPassword, MIN_PASSWORD_LENGTH, openUserStore, verifyPassword } from "./users.js";
export type { User, UserStore } from "./users.js";
export { generateNatsUsers, seededTenants, seedFile, SERVICE_USER, tenantInboxPrefix } from "./nats-users.js";
export type { NatsUser, NatsUsers, NatsUsersOptions } from "./nats-users.js";
