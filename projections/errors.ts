/**
 * Errors raised by the `projections/` area. Each extends {@link FlexError} with a stable
 * `code` listed in `docs/errors.md`; branch on `code` or `instanceof`, never on the message.
 */
import { describeValue, FlexError } from "../streams/index.js";

/** No projection of that name is registered with the engine. */
export class ProjectionNotFoundError extends FlexError {
  readonly projection: string;
  constructor(projection: string, known: readonly string[]) {
    super("FLEX_PROJECTION_NOT_FOUND", `No projection named ${describeValue(projection)}; known: ${known.join(", ") || "none"}`);
    this.name = "ProjectionNotFoundError";
    this.projection = projection;
  }
}

/** A read-model query was made without a tenant. Every read is scoped to one tenant. */
export class TenantRequiredError extends FlexError {
  constructor(value: unknown) {
    super("FLEX_TENANT_REQUIRED", `A projection query needs \`tenant\` (every read is scoped to one tenant), got ${describeValue(value)}`);
    this.name = "TenantRequiredError";
  }
}

/** A query's filter, sort, cursor, limit or reader is not one the read model offers. */
export class InvalidQueryError extends FlexError {
  readonly field: string;
  constructor(field: string, value: unknown, expected: string) {
    super("FLEX_INVALID_QUERY", `Invalid query: expected \`${field}\` to be ${expected}, got ${describeValue(value)}`);
    this.name = "InvalidQueryError";
    this.field = field;
  }
}

/** `waitFor` gave up: the projection had not reached the sequence within the timeout. */
export class WaitTimeoutError extends FlexError {
  readonly projection: string;
  readonly seq: number;
  readonly position: number;
  constructor(projection: string, stream: string, seq: number, position: number, timeoutMs: number) {
    super("FLEX_PROJECTION_WAIT_TIMEOUT", `Projection \`${projection}\` did not reach ${stream} sequence ${seq} within ${timeoutMs} ms (it is at ${position})`);
    this.name = "WaitTimeoutError";
    this.projection = projection;
    this.seq = seq;
    this.position = position;
  }
}

/** The projection was halted by its `stop` failure policy; it will not advance until restarted. */
export class ProjectionStoppedError extends FlexError {
  readonly projection: string;
  readonly seq: number;
  constructor(projection: string, stream: string, seq: number, reason: string) {
    super("FLEX_PROJECTION_STOPPED", `Projection \`${projection}\` is stopped at ${stream} sequence ${seq}: ${reason}`);
    this.name = "ProjectionStoppedError";
    this.projection = projection;
    this.seq = seq;
  }
}

/** A projection's `apply` threw on an event (recorded in status and in the dead letter). */
export class ProjectionApplyError extends FlexError {
  readonly projection: string;
  readonly stream: string;
  readonly seq: number;
  constructor(projection: string, stream: string, seq: number, options: { cause: unknown }) {
    const reason = options.cause instanceof Error ? options.cause.message : String(options.cause);
    super("FLEX_PROJECTION_APPLY", `Projection \`${projection}\` failed to apply ${stream} sequence ${seq}: ${reason}`, options);
    this.name = "ProjectionApplyError";
    this.projection = projection;
    this.stream = stream;
    this.seq = seq;
  }
}

/** A rebuild of this projection is already running. */
export class RebuildInProgressError extends FlexError {
  constructor(projection: string) {
    super("FLEX_REBUILD_IN_PROGRESS", `Projection \`${projection}\` is already being rebuilt; wait for it to finish`);
    this.name = "RebuildInProgressError";
  }
}

/** Another process holds the projection data directory (a running `flexcore up`). */
export class ProjectionLockedError extends FlexError {
  readonly pid: number;
  constructor(dir: string, pid: number) {
    super("FLEX_PROJECTION_LOCKED", `The projections in \`${dir}\` are run by process ${pid}; stop it or talk to it (flexcore projections rebuild asks a running engine)`);
    this.name = "ProjectionLockedError";
    this.pid = pid;
  }
}

/** The engine was closed (or not started) when the call was made. */
export class ProjectionEngineClosedError extends FlexError {
  constructor(what: string) {
    super("FLEX_PROJECTION_CLOSED", `The projection engine is not running: ${what}`);
    this.name = "ProjectionEngineClosedError";
  }
}

/** A read-model database file could not be opened, or failed its integrity check. */
export class ProjectionStorageError extends FlexError {
  readonly file: string;
  constructor(file: string, message: string, options?: { cause?: unknown }) {
    super("FLEX_PROJECTION_STORAGE", `Projection database \`${file}\`: ${message}`, options);
    this.name = "ProjectionStorageError";
    this.file = file;
  }
}

/**
 * A rebuild asked of the deployment did not end well on one engine (or more): it refused,
 * failed or fell silent. `code` is that engine's own code (`FLEX_REBUILD_IN_PROGRESS`,
 * `FLEX_PROJECTION_NOT_FOUND`, `FLEX_REBUILD_ENGINE_SILENT`, ...), `instance` names it, and
 * `instances` holds every answering engine's outcome, swapped copies included.
 */
/**
 * How one engine's part of a deployment-wide rebuild ended: `result` when its copy was
 * swapped, else `error` (control.ts's InstanceRebuildOutcome is this with its RebuildResult).
 */
export interface InstanceOutcome<R = unknown> {
  readonly instance: string;
  readonly result?: R;
  readonly error?: { readonly code: string; readonly message: string };
}

export class InstanceRebuildError extends FlexError {
  readonly instance: string;
  readonly instances: readonly InstanceOutcome[];
  constructor(code: string, instance: string, message: string, instances: readonly InstanceOutcome[]) {
    super(code, message);
    this.name = "InstanceRebuildError";
    this.instance = instance;
    this.instances = instances;
  }
}

/** An engine that accepted a rebuild sent nothing (no progress, no heartbeat) for too long: it died or hangs. */
export class RebuildEngineSilentError extends FlexError {
  readonly instance: string;
  readonly silentMs: number;
  constructor(instance: string, silentMs: number) {
    super("FLEX_REBUILD_ENGINE_SILENT", `The engine of instance \`${instance}\` accepted the rebuild, then sent nothing for ${silentMs} ms; its copy is probably not swapped (see that instance's log, then rebuild again)`);
    this.name = "RebuildEngineSilentError";
    this.instance = instance;
    this.silentMs = silentMs;
  }
}

/** An engine listed as running (its membership key is live) did not answer a rebuild request in time: it died, hangs, or cannot be reached. */
export class RebuildEngineUnansweredError extends FlexError {
  readonly instance: string;
  readonly waitedMs: number;
  constructor(instance: string, waitedMs: number) {
    super("FLEX_REBUILD_ENGINE_UNANSWERED", `The engine of instance \`${instance}\` is listed as running but did not answer the rebuild request within ${waitedMs} ms; its copy is not swapped (see that instance's log, then rebuild again; a dead instance drops out of the list once its key expires)`);
    this.name = "RebuildEngineUnansweredError";
    this.instance = instance;
    this.waitedMs = waitedMs;
  }
}
