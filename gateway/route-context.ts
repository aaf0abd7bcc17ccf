/**
 * What the route files get from the gateway: its parts and limits. A module of its own so
 * the route files do not import the gateway that imports them.
 */
import type { FastifyInstance } from "fastify";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { EventStore, Publisher } from "../streams/index.js";
import type { WorkflowClient } from "../workflows/index.js";
import type { KeyStore } from "./keys.js";
import type { GatewayMetrics } from "./metrics.js";
import type { clientRateLimit } from "./rate-limit.js";
import type { ReadModels } from "./read-models.js";
import type { Revocations } from "./revocations.js";
import type { SessionService } from "./sessions.js";
import type { UserStore } from "./users.js";

/** One `/readyz` check's result. */
/** One configured plugin as `GET /v1/plugins` shows it. */
export interface PluginView {
  readonly name: string;
  readonly version: string | null;
  /** The owning tenant; `null`: a system plugin (the operator's). */
  readonly tenant: string | null;
  readonly managed: boolean;
  readonly enabled: boolean;
  /** This instance's view: `running`, `standby` (another instance supervises it), `failed`, `disabled`, `external`, ... */
  readonly state: string;
  readonly restarts: number;
  /**
   * A `tenancy: tenant` plugin's instance set of `tenant` (`<name>_<tenant>`): the tenant sees
   * its own set, never another's, and its admin's enable/disable switches only this set.
   */
  readonly instance?: string;
}

/** The plugins of `flexcore up`, for `/v1/plugins` (tenancy is the routes' job). */
export interface PluginsApi {
  list(): readonly PluginView[];
  /** Persists the switch for every instance. */
  setEnabled(name: string, enabled: boolean, by: string): Promise<void>;
}

export interface ReadinessCheck {
  readonly ok: boolean;
  readonly detail?: unknown;
}

/** Resolved limits, shared with the route files. */
export interface Limits {
  readonly bodyLimit: number;
  readonly batchBodyLimit: number;
  readonly maxBatchEvents: number;
  readonly defaultPageSize: number;
  readonly maxPageSize: number;
  readonly requestTimeoutMs: number;
  readonly maxWaitMs: number;
  readonly maxReadyLag: number;
}

/** What the route files get. */
export interface RouteContext {
  readonly app: FastifyInstance;
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly store: EventStore;
  readonly publisher: Publisher;
  readonly limits: Limits;
  readonly metrics: GatewayMetrics;
  readonly users: UserStore;
  readonly sessions: SessionService | undefined;
  readonly revocations: Revocations;
  readonly keys: KeyStore | undefined;
  /** `config.rateLimit` of the sign-in and refresh routes (per client address). */
  readonly signInRateLimit: ReturnType<typeof clientRateLimit>;
  readonly readModels: ReadModels | undefined;
  readonly workflows: WorkflowClient | undefined;
  readonly plugins: PluginsApi | undefined;
  readonly readiness: Readonly<Record<string, () => ReadinessCheck | Promise<ReadinessCheck>>>;
  /** Runs `fn` with the request timeout: aborts its signal and answers 503 when it passes. */
  timed<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T>;
  /** Answers 503 when `work` (which cannot be cancelled) outlasts the request timeout; no AbortController. */
  deadline<T>(work: Promise<T>): Promise<T>;
}
