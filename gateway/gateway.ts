import { randomUUID } from "node:crypto";
import { join } from "node:path";
import Fastify, { LogController } from "fastify";
import type { FastifyBaseLogger, FastifyInstance, onResponseHookHandler } from "fastify";
import swagger from "@fastify/swagger";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createDeadLetters, createEventStore, createPublisher, InvalidOptionError, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { createAuthHook } from "./auth-hook.js";
import { createDeadlines } from "./deadlines.js";
import { notFoundBody, toHttpError } from "./http-errors.js";
import { openKeyStore } from "./keys.js";
import type { KeyStore, KeyStoreOptions } from "./keys.js";
import { createMetrics } from "./metrics.js";
import { createRouteReports } from "./route-reports.js";
import type { GatewayMetrics, LagSources, MetricSources, PublisherReading } from "./metrics.js";
import { POLICY } from "./policy.js";
import type { PolicyName } from "./policy.js";
import rateLimit from "@fastify/rate-limit";
import { clientRateLimit, resolveRateLimit, SIGN_IN_RATE_LIMIT, tenantRateLimit } from "./rate-limit.js";
import type { RateLimit, RateLimitOptions } from "./rate-limit.js";
import type { ReadModels } from "./read-models.js";
import { openRevocations } from "./revocations.js";
import { DEFAULT_AUTH_SWEEP_INTERVAL_MS, openAuthSweeper } from "./auth-sweep.js";
import type { AuthSweeper, SweepReport } from "./auth-sweep.js";
import type { Revocations } from "./revocations.js";
import type { Limits, PluginsApi, ReadinessCheck, RouteContext } from "./route-context.js";
import { registerAuthRoutes } from "./routes/auth.js";
import { registerConsoleRoutes } from "./routes/console.js";
import { defaultConsoleDir } from "./console-assets.js";
import { registerDerivedRoutes } from "./routes/derived.js";
import { registerDlqRoutes } from "./routes/dlq.js";
import { registerDocsRoutes } from "./routes/docs.js";
import { registerEventRoutes } from "./routes/events.js";
import { registerExplorerRoutes } from "./routes/explorer.js";
import { registerHealthRoutes } from "./routes/health.js";
import { registerOverviewRoutes } from "./routes/overview.js";
import { registerProjectionRebuildRoute, registerProjectionRoutes } from "./routes/projections.js";
// console pages: processors (issue #16 part 2c)
import { registerProcessorRoutes } from "./routes/processors.js";
import { registerStreamRoutes } from "./routes/streams.js";
import { registerUserRoutes } from "./routes/users.js";
import { openSessions } from "./sessions.js";
import type { SessionService } from "./sessions.js";
import { createTokenIssuer, createTokenVerifier } from "./tokens.js";
import type { ExternalIssuerOptions, LocalIssuerOptions, Principal, TokenIssuer, TokenVerifier } from "./tokens.js";
import { openUserStore } from "./users.js";
import { projectionReadModels } from "./projection-read-models.js";
import { registerWorkflowRoutes } from "./routes/workflows.js";
import { registerPluginRoutes } from "./routes/plugins.js";
import { createWorkflowClient } from "../workflows/index.js";
import type { WorkflowClient } from "../workflows/index.js";
import type { ProjectionEngine } from "../projections/index.js";
import type { UserStore } from "./users.js";

declare module "fastify" {
  interface FastifyRequest {
    /** The verified caller; set on every route that has a policy. */
    principal: Principal | undefined;
  }
  interface FastifyContextConfig {
    /** Policy of the route (see `gateway/policy.ts`); routes without one are public. */
    policy?: PolicyName;
    /** Media types the route's body may have (checked before the body is read); 415 otherwise. */
    accepts?: readonly string[];
  }
}

/** Largest body of single-stream routes, in bytes (1 MiB). */
export const DEFAULT_BODY_LIMIT = 1024 * 1024;
/** Largest body of `POST /v1/events`, in bytes (16 MiB). */
export const DEFAULT_BATCH_BODY_LIMIT = 16 * 1024 * 1024;
/** Most events in one `POST /v1/events`. */
export const DEFAULT_MAX_BATCH_EVENTS = 10_000;
/** Rows or events per page when a request names no limit. */
export const DEFAULT_PAGE_SIZE = 100;
/** Most rows or events one page can hold. */
export const DEFAULT_MAX_PAGE_SIZE = 1_000;
/** Longest a request may take before it is answered 503, in ms. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** Longest `minSeq` waits for a projection, in ms. */
export const DEFAULT_MAX_WAIT_MS = 5_000;
/** Projection lag above which `/readyz` fails, in events. */
export const DEFAULT_MAX_READY_LAG = 10_000;

/** Options of {@link createGateway}. */
export interface GatewayOptions {
  /** Connection to NATS; the topology must exist (`ensureTopology`). */
  readonly nc: NatsConnection;
  /** Where generated signing keys live: `<dataDir>/gateway/keys`. Ignored with `keys` or `external`. */
  readonly dataDir?: string;
  /** Signing keys (files or a directory); defaults to `<dataDir>/gateway/keys`. */
  readonly keys?: KeyStoreOptions;
  /** Issuer, audience and lifetimes of FlexCore's own tokens. */
  readonly issuer?: LocalIssuerOptions;
  /** Accept an external issuer's tokens instead of FlexCore's (sign-in and refresh routes are then off). */
  readonly external?: ExternalIssuerOptions;
  /**
   * Clock skew accepted on `exp`/`nbf` of FlexCore's own tokens, in seconds (instances of one
   * deployment share a clock source; an external issuer's is `external.clockToleranceSeconds`, 30 s).
   * @default 0
   */
  readonly clockToleranceSeconds?: number;
  /**
   * How often expired sessions and revocations are removed from `flex_auth` (ms); 0 turns the
   * timer off (`sweepAuth()` still works). @default 60000
   */
  readonly authSweepIntervalMs?: number;
  /**
   * `false` switches authentication off: every request is tenant `public` with every role.
   * Only for local experiments and the no-auth baseline of the benchmark.
   * @default true
   */
  readonly auth?: boolean;
  /** @default "127.0.0.1" */
  readonly host?: string;
  /** 0 picks a free port. @default 8080 */
  readonly port?: number;
  /** @default 1 MiB */
  readonly bodyLimit?: number;
  /** @default 16 MiB */
  readonly batchBodyLimit?: number;
  /** @default 10000 */
  readonly maxBatchEvents?: number;
  /** @default 1000 */
  readonly maxPageSize?: number;
  /** @default 10000 */
  readonly requestTimeoutMs?: number;
  /** Upper bound of `minSeq` waits. @default 5000 */
  readonly maxWaitMs?: number;
  /** Per-tenant rate limit; `false` switches it off. @default 2000/s, burst 4000 */
  readonly rateLimit?: RateLimitOptions | false;
  /** Sign-in attempts per client address. @default 10/s, burst 20 */
  readonly signInRateLimit?: RateLimitOptions;
  /** Verified tokens kept in memory. @default 50000 */
  readonly tokenCacheSize?: number;
  /** The projection engine; without it (and without `readModels`) the projection routes answer 503. */
  readonly projections?: ProjectionEngine;
  /** Any other read-model source (tests, benchmarks); `projections` wins when both are given. */
  readonly readModels?: ReadModels;
  /**
   * Client for the workflow routes. @default one created on `nc` and closed with the
   * gateway; `false` leaves the routes answering 503
   */
  readonly workflows?: WorkflowClient | false;
  /** The plugins for `/v1/plugins`. @default none: the routes answer 503 */
  readonly plugins?: PluginsApi;
  /** Extra lag sources for `/metrics` (consumers of the processor runtime). */
  readonly lagSources?: LagSources;
  /**
   * What else `/metrics` reports (processors, workflows, other publishers); the gateway adds
   * its own publisher, the projections it serves, the streams' sizes and its NATS connection.
   */
  readonly metricSources?: Omit<MetricSources, keyof LagSources | "nats" | "streams" | "deadLetters">;
  /**
   * Extra `/readyz` checks by name (e.g. `processors`, `workflows`); a check that returns
   * `ok: false` or throws makes the instance not ready (503).
   */
  readonly readiness?: Readonly<Record<string, () => ReadinessCheck | Promise<ReadinessCheck>>>;
  /** @default 10000 */
  readonly maxReadyLag?: number;
  /** Publisher for batch ingest and appends. @default one created and closed by the gateway */
  readonly publisher?: Publisher;
  /**
   * Fast-ingest batches for `POST /v1/events` (the gateway's own publisher, `batching` of
   * `createPublisher`; nats-server 2.14+, else one ack per event): the server acknowledges
   * each batch, not each event. A batched event's result then has `batched: true`, a `seq`
   * that is the batch's last sequence (the event is stored at or before it; usable as
   * `minSeq`) and no `duplicate`. Ignored with `publisher`.
   * @default "off"
   */
  readonly ingestBatching?: "auto" | "off";
  /**
   * How often per-route figures are published as `MetricsReported` events on
   * `evt._system.metrics.gateway` (the `performance_metrics` read model); 0 turns them off.
   * @default 60000 (on minute boundaries)
   */
  readonly metricsIntervalMs?: number;
  /**
   * Where the gateway logs: a pino logger (`flexcore up` passes its `{ area: "gateway" }`
   * child), `true` for Fastify's own, `false` for none. Every 5xx is logged at error level
   * with the request id (`reqId`, also the `request-id` response header) and the error with
   * its `cause` chain; other requests are not logged (`/metrics` counts them).
   * @default false
   */
  readonly logger?: boolean | FastifyBaseLogger;
  /**
   * Folder of the built console served at `/console` (`npm run build` writes it); `false`
   * serves no console (the routes then do not exist).
   * @default `<package root>/dist/console`
   */
  readonly consoleDir?: string | false;
  /** Trust `X-Forwarded-For` for the client address. @default false */
  readonly trustProxy?: boolean;
}

export type { Limits, ReadinessCheck, RouteContext } from "./route-context.js";

/** A running gateway. */
export interface Gateway extends AsyncDisposable {
  readonly app: FastifyInstance;
  /** Starts listening; resolves with the base URL (`http://127.0.0.1:PORT`). */
  listen(): Promise<string>;
  /** The base URL once listening. */
  readonly url: string | undefined;
  /** Signing keys (undefined with an external issuer). */
  readonly keys: KeyStore | undefined;
  /** Issuer of FlexCore's tokens (undefined with an external issuer). */
  readonly issuer: TokenIssuer | undefined;
  readonly verifier: TokenVerifier | undefined;
  readonly users: UserStore;
  readonly sessions: SessionService | undefined;
  readonly revocations: Revocations;
  readonly metrics: GatewayMetrics;
  /** Removes expired sessions and revocations from `flex_auth` now (what the sweep timer runs). */
  sweepAuth(): Promise<SweepReport>;
  /** Every route with its policy (undefined: public), in registration order. */
  readonly routes: ReadonlyArray<{ readonly method: string; readonly url: string; readonly policy: PolicyName | undefined }>;
  close(): Promise<void>;
}

function int(field: string, value: number | undefined, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < min) throw new InvalidOptionError(field, value, `an integer from ${min} and up`);
  return value;
}

/** Creates the HTTP gateway (Fastify): auth, tenancy, RBAC, routes, limits, metrics and OpenAPI. */
export async function createGateway(options: GatewayOptions): Promise<Gateway> {
  if (!options || typeof options !== "object" || !options.nc) throw new InvalidOptionError("nc", options?.nc, "a NatsConnection");
  const nc = options.nc;
  const limits: Limits = {
    bodyLimit: int("bodyLimit", options.bodyLimit, DEFAULT_BODY_LIMIT, 1),
    batchBodyLimit: int("batchBodyLimit", options.batchBodyLimit, DEFAULT_BATCH_BODY_LIMIT, 1),
    maxBatchEvents: int("maxBatchEvents", options.maxBatchEvents, DEFAULT_MAX_BATCH_EVENTS, 1),
    defaultPageSize: Math.min(DEFAULT_PAGE_SIZE, int("maxPageSize", options.maxPageSize, DEFAULT_MAX_PAGE_SIZE, 1)),
    maxPageSize: int("maxPageSize", options.maxPageSize, DEFAULT_MAX_PAGE_SIZE, 1),
    requestTimeoutMs: int("requestTimeoutMs", options.requestTimeoutMs, DEFAULT_REQUEST_TIMEOUT_MS, 1),
    maxWaitMs: int("maxWaitMs", options.maxWaitMs, DEFAULT_MAX_WAIT_MS, 0),
    maxReadyLag: int("maxReadyLag", options.maxReadyLag, DEFAULT_MAX_READY_LAG, 0),
  };
  const host = options.host ?? "127.0.0.1";
  const port = int("port", options.port, 8080, 0);
  const authOn = options.auth ?? true;
  const limiter = options.rateLimit === false ? undefined : resolveRateLimit(options.rateLimit ?? {});
  const signInLimiter = resolveRateLimit(options.signInRateLimit ?? SIGN_IN_RATE_LIMIT, "signInRateLimit");

  const sweepIntervalMs = int("authSweepIntervalMs", options.authSweepIntervalMs, DEFAULT_AUTH_SWEEP_INTERVAL_MS, 0);
  const given = typeof options.logger === "object" ? options.logger : undefined;
  const log = given ? (line: string): void => given.info(line) : (line: string): void => void process.stderr.write(`${line}\n`);
  const revocations = await openRevocations(nc, { log });
  // Closed in reverse if the gateway fails to start, so a failed start leaks no watcher or client.
  const opened: Array<() => Promise<void>> = [() => revocations.close()];
  try {
    const sweeper = await openAuthSweeper(nc, { intervalMs: sweepIntervalMs, log });
    opened.push(() => sweeper.close());
    return await build(options, nc, limits, revocations, opened, { host, port, authOn, limiter, signInLimiter, sweeper, log });
  } catch (err) {
    for (const close of opened.reverse()) await close().catch(() => undefined);
    throw err;
  }
}

interface BuildParts {
  readonly host: string;
  readonly port: number;
  readonly authOn: boolean;
  readonly limiter: RateLimit | undefined;
  readonly signInLimiter: RateLimit;
  readonly sweeper: AuthSweeper;
  readonly log: (line: string) => void;
}

async function build(options: GatewayOptions, nc: NatsConnection, limits: Limits, revocations: Revocations, opened: Array<() => Promise<void>>, parts: BuildParts): Promise<Gateway> {
  const { host, port, authOn, limiter, signInLimiter, sweeper } = parts;
  const users = await openUserStore(nc);
  let keys: KeyStore | undefined;
  let issuer: TokenIssuer | undefined;
  let verifier: TokenVerifier | undefined;
  let sessions: SessionService | undefined;
  if (options.external) {
    verifier = createTokenVerifier({ external: options.external, revocations, ...(options.tokenCacheSize !== undefined ? { cacheSize: options.tokenCacheSize } : {}) });
  } else {
    const keyOptions = options.keys ?? { dir: join(options.dataDir ?? "data", "gateway", "keys") };
    keys = await openKeyStore(keyOptions);
    issuer = createTokenIssuer(keys, options.issuer ?? {});
    verifier = createTokenVerifier({ keys, local: options.issuer ?? {}, revocations, ...(options.clockToleranceSeconds !== undefined ? { clockToleranceSeconds: options.clockToleranceSeconds } : {}), ...(options.tokenCacheSize !== undefined ? { cacheSize: options.tokenCacheSize } : {}) });
    sessions = await openSessions(nc, users, issuer, revocations);
  }
  const jsm = await jetstreamManager(nc);
  const ownsPublisher = options.publisher === undefined;
  if (options.ingestBatching !== undefined && options.ingestBatching !== "auto" && options.ingestBatching !== "off") throw new InvalidOptionError("ingestBatching", options.ingestBatching, '"auto" or "off"');
  const publisher = options.publisher ?? createPublisher(nc, { batching: options.ingestBatching ?? "off" });
  if (ownsPublisher) opened.push(() => publisher.close());
  const store = await createEventStore(nc, { publisher });
  const readModels = options.projections ? projectionReadModels(options.projections) : options.readModels;
  const ownsWorkflows = options.workflows === undefined;
  const workflows = options.workflows === false ? undefined : (options.workflows ?? (await createWorkflowClient(nc)));
  if (ownsWorkflows && workflows) opened.push(() => workflows.close());
  const reports = createRouteReports(publisher, int("metricsIntervalMs", options.metricsIntervalMs, 60_000, 0), parts.log);
  opened.push(() => reports.close());
  const extra = options.metricSources ?? {};
  const projections = options.projections;
  const deadLetterCounts = createDeadLetters(nc);
  const metrics = createMetrics({
    ...(readModels?.lag ? { projections: () => readModels.lag!() } : {}),
    ...options.lagSources,
    ...extra,
    ...(projections ? { projectionStatus: () => projections.status() } : {}),
    publishers: (): Record<string, PublisherReading> => ({ ...extra.publishers?.(), gateway: publisher.stats }),
    streams: () => Promise.all(Object.values(STREAMS).map((name) => jsm.streams.info(name).then((i) => ({ stream: name, messages: i.state.messages, bytes: i.state.bytes }), () => undefined)))
      .then((all) => all.filter((x) => x !== undefined)),
    deadLetters: () => deadLetterCounts.list(undefined),
    nats: nc,
  });
  opened.push(async () => metrics.close());

  const app = Fastify({
    ...(typeof options.logger === "object" ? { loggerInstance: options.logger } : { logger: options.logger ?? false }),
    // One line per request would cost more than the request at ingest rates.
    logController: new LogController({ disableRequestLogging: true }),
    // Unique across instances and restarts, so a client can quote it and the log finds it.
    genReqId: () => randomUUID(),
    bodyLimit: limits.bodyLimit,
    // Node's own limit on receiving the whole request (slow clients); handlers have `timed`.
    requestTimeout: limits.requestTimeoutMs + 1_000,
    routerOptions: { maxParamLength: 512 },
    return503OnClosing: true,
    trustProxy: options.trustProxy ?? false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: true, allErrors: false, allowUnionTypes: true } },
  });
  opened.push(() => app.close());
  app.decorateRequest("principal", undefined);
  // Before any route is added: the plugin adds its hook to each route as it is declared.
  await app.register(rateLimit, tenantRateLimit(limiter));

  await app.register(swagger, {
    openapi: {
      openapi: "3.1.0",
      info: { title: "FlexCore gateway", version: "1", description: "Tenant-scoped HTTP API of FlexCore. The tenant always comes from the bearer token. Roles per route: docs/gateway.md." },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer", bearerFormat: "JWT" } } },
      tags: [
        { name: "auth" }, { name: "streams" }, { name: "projections" }, { name: "derived" }, { name: "users" }, { name: "workflows" }, { name: "ops" },
      ],
    },
  });

  app.addContentTypeParser(["application/x-ndjson", "application/ndjson"], { parseAs: "string", bodyLimit: limits.batchBodyLimit }, (_req, body, done) => done(null, body));

  const routes: Array<{ method: string; url: string; policy: PolicyName | undefined }> = [];
  // Everything a request needs from its route (policy, roles, media types, metric labels) is
  // worked out here, once per route, and handed to hooks of that route alone.
  app.addHook("onRoute", (route) => {
    const policy = route.config?.policy;
    for (const method of [route.method].flat()) if (method !== "HEAD" && route.schema?.hide !== true) routes.push({ method, url: route.url, policy });
    if (policy !== undefined && !(policy in POLICY)) throw new InvalidOptionError(`policy of ${route.method} ${route.url}`, policy, `one of ${Object.keys(POLICY).join(", ")}`);
    if (policy !== undefined) {
      route.schema = { ...route.schema, security: [{ bearer: [] }] };
      const allowed = POLICY[policy].join(", ");
      route.schema.description = `${route.schema.description ?? ""}\n\nRoles: ${allowed}.`.trim();
      const existing = [route.onRequest ?? []].flat();
      if (!existing.some((h) => ours.has(h))) route.onRequest = [mark(authenticate(policy, route.config?.accepts)), ...existing];
    }
    // Fastify copies a GET route's options, hooks included, into its HEAD route.
    const after = [route.onResponse ?? []].flat();
    if (!after.some((h) => ours.has(h))) route.onResponse = [mark(observe(route.url)), ...after];
  });
  const ours = new WeakSet<object>();
  const mark = <H extends object>(hook: H): H => {
    ours.add(hook);
    return hook;
  };

  const authenticate = createAuthHook(authOn ? verifier : undefined);

  const observe = (url: string): onResponseHookHandler => {
    const labels = new Map<string, { method: string; route: string; status: string }>();
    return (request, reply, done) => {
      const key = `${request.method} ${reply.statusCode}`;
      let l = labels.get(key);
      if (!l) labels.set(key, (l = { method: request.method, route: url, status: String(reply.statusCode) }));
      metrics.requestDuration.observe(l, reply.elapsedTime / 1000);
      reports.record(`${request.method} ${url}`, reply.statusCode, reply.elapsedTime);
      done();
    };
  };
  // Requests that matched no route (404s, and errors before routing) are counted as "unmatched".
  app.addHook("onResponse", (request, reply, done) => {
    if (request.is404) metrics.requestDuration.observe({ method: request.method, route: "unmatched", status: String(reply.statusCode) }, reply.elapsedTime / 1000);
    done();
  });

  app.setErrorHandler((err, request, reply) => {
    const limit = request.routeOptions.bodyLimit ?? limits.bodyLimit;
    const e = toHttpError(err, limit);
    if (e.status >= 500) request.log.error({ err, code: e.body.error.code, status: e.status, method: request.method, route: request.routeOptions.url ?? "unmatched" }, "request failed");
    void reply.code(e.status).headers({ ...e.headers, "request-id": request.id }).send(e.body);
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send(notFoundBody(request.method, request.url));
  });

  const { timed, deadline } = createDeadlines(limits.requestTimeoutMs);

  const ctx: RouteContext = { app, nc, jsm, store, publisher, limits, metrics, users, sessions, revocations, keys, signInRateLimit: clientRateLimit(signInLimiter), readModels, workflows, plugins: options.plugins, readiness: options.readiness ?? {}, timed, deadline };
  registerHealthRoutes(ctx);
  registerAuthRoutes(ctx);
  registerUserRoutes(ctx);
  registerStreamRoutes(ctx);
  registerEventRoutes(ctx);
  // The console's event explorer (GET /v1/events, /v1/events/live).
  registerExplorerRoutes(ctx);
  registerProjectionRoutes(ctx);
  // The operator's rebuild (issue #16): asks the running engine over NATS, progress as SSE.
  registerProjectionRebuildRoute(ctx);
  registerDerivedRoutes(ctx);
  registerDlqRoutes(ctx);
  registerWorkflowRoutes(ctx);
  registerPluginRoutes(ctx);
  registerOverviewRoutes(ctx);
  // console pages: processors (issue #16 part 2c)
  registerProcessorRoutes(ctx);
  if (options.consoleDir !== false) registerConsoleRoutes(ctx, options.consoleDir ?? defaultConsoleDir());
  registerDocsRoutes(app);

  await app.ready();

  let url: string | undefined;
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await app.close();
    metrics.close();
    await sweeper.close();
    await reports.close();
    await store.close();
    if (ownsPublisher) await publisher.close();
    await revocations.close();
    if (ownsWorkflows) await workflows?.close();
  };
  return {
    app,
    async listen() {
      url = await app.listen({ host, port });
      return url;
    },
    get url() {
      return url;
    },
    keys,
    issuer,
    verifier,
    users,
    sessions,
    revocations,
    metrics,
    sweepAuth: () => sweeper.sweep(),
    routes,
    close,
    [Symbol.asyncDispose]: close,
  };
}
