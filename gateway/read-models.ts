/**
 * What the gateway needs from the projection engine and the workflow runner, as
 * structural interfaces: `cli/up.ts` passes the real engine (`projections/index.ts`), and
 * the gateway stays testable with any object of this shape.
 */

/** A page of read-model rows. */
export interface ReadModelPage {
  readonly rows: readonly Record<string, unknown>[];
  /** Pass back as `cursor` for the next page; absent on the last page. */
  readonly nextCursor?: string | undefined;
}

/** A tenant-scoped read-model query (the tenant always comes from the token). */
export interface ReadModelQuery {
  readonly tenant: string;
  readonly reader?: string;
  readonly filter?: Readonly<Record<string, unknown>>;
  readonly sort?: string | readonly string[];
  readonly cursor?: string;
  readonly limit?: number;
}

/** A change notification for `/v1/projections/:name/live`. */
export interface ReadModelChange {
  /** Tenants whose rows changed, when the engine knows; a change is sent only to these. */
  readonly tenants?: readonly string[];
  /** Stream sequence the projection has applied. */
  readonly seq?: number;
}

/** One reader of a read model, as `GET /v1/projections` lists it. */
export interface ReadModelReader {
  readonly name: string;
  readonly description: string;
  /** Column → SQLite type (`text`, `integer`, `real`, `json`); `tenant` is never shown. */
  readonly columns: Readonly<Record<string, string>>;
  readonly key: readonly string[];
  readonly defaultSort: string | null;
}

/** A read model a tenant can query, with its deployment-wide state. */
export interface ReadModelEntry {
  readonly name: string;
  readonly description: string;
  readonly readers: readonly ReadModelReader[];
  /** `live`, `catching-up`, `stopped`, `stale`, `read-only`, or `unknown`. */
  readonly state: string;
  /** Events not yet reflected (all tenants); null when NATS could not be asked. */
  readonly lag: number | null;
  readonly rebuilding: boolean;
  /** Copy being served: 1 for the first build, one more after each rebuild or version bump. */
  readonly generation: number | null;
  /** `Flex-Time` of the last event applied. */
  readonly lastEventTime: string | null;
}

/** The projection engine, as the gateway uses it. */
export interface ReadModels {
  query(name: string, query: ReadModelQuery): ReadModelPage | Promise<ReadModelPage>;
  /** Resolves once `name` has applied FLEX_EVENTS sequence `seq`; rejects after `timeoutMs`. */
  waitFor(name: string, seq: number, options: { timeoutMs: number; signal?: AbortSignal }): Promise<void>;
  /** Calls `listener` after the projection applied events; returns the unsubscribe function. */
  onChange(name: string, listener: (change: ReadModelChange) => void): () => void;
  /** Projections whose lag is reported and checked by `/readyz`. */
  lag?(): Promise<ReadonlyArray<{ name: string; lag: number }>> | ReadonlyArray<{ name: string; lag: number }>;
  /** The read models with their readers and state, for `GET /v1/projections`; without it the route answers 503. */
  catalog?(): Promise<readonly ReadModelEntry[]> | readonly ReadModelEntry[];
}

/**
 * How errors of the projection and workflow areas map to HTTP statuses, by their stable
 * `code` (the gateway also serves `ReadModels` that are not the projection engine).
 */
export const FOREIGN_ERROR_STATUS: Readonly<Record<string, number>> = {
  FLEX_PROJECTION_NOT_FOUND: 404,
  FLEX_TENANT_REQUIRED: 400,
  FLEX_INVALID_QUERY: 400,
  FLEX_PROJECTION_WAIT_TIMEOUT: 504,
  FLEX_PROJECTION_STOPPED: 503,
  FLEX_PROJECTION_CLOSED: 503,
  FLEX_REBUILD_IN_PROGRESS: 409,
  // Listed engines that did not answer: none to do the work (as FLEX_ENGINE_UNREACHABLE).
  FLEX_REBUILD_ENGINE_UNANSWERED: 503,
  FLEX_WORKFLOW_INVALID: 400,
  FLEX_STEP_KIND_UNAVAILABLE: 400,
  FLEX_WORKFLOW_NOT_FOUND: 404,
  FLEX_RUN_NOT_FOUND: 404,
  FLEX_RUN_FINISHED: 409,
  FLEX_DLQ_NOT_FOUND: 404,
  FLEX_DLQ_REDRIVE_UNSUPPORTED: 409,
  FLEX_DLQ_PURGE_UNCONFIRMED: 400,
};
