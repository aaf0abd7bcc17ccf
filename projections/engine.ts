import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createPublisher, InvalidOptionError, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { builtinProjections } from "./builtin/index.js";
import { acquireLock, generationFile, generationsOnDisk, lastGeneration, projectionsDir, readManifest, removeDatabase, writeManifest } from "./catalog.js";
import { DEFAULT_SYNC, openReader, readCheckpoints, readFailures } from "./database.js";
import type { StoredFailure, SyncMode } from "./database.js";
import { deadLetter } from "./dead-letter.js";
import { Reapplier } from "./reapply.js";
import { ProjectionEngineClosedError, ProjectionNotFoundError, ProjectionStoppedError, RebuildInProgressError } from "./errors.js";
import { Member } from "./member.js";
import type { BatchOutcome, DeadLetterFn } from "./member.js";
import { checkProjection } from "./projection.js";
import type { ColumnType, FailurePolicy, Projection, ProjectionSource, SourceStream } from "./projection.js";
import { InvalidQueryError } from "./errors.js";
import { runQuery } from "./query.js";
import type { QueryOptions, QueryPage } from "./query.js";
import { DEFAULT_PROJECTION_BATCH_SIZE, DEFAULT_FOLD_WINDOW, ProjectionRunner } from "./runner.js";
import { rebuildBeside } from "./rebuild.js";
import type { RebuildHost, RebuildOptions, RebuildResult, Served } from "./rebuild.js";
import { PositionWaiters } from "./waiters.js";

/** How long `waitFor` waits when no timeout is given. */
export const DEFAULT_WAIT_TIMEOUT_MS = 5_000;
/** JetStream API timeout: a busy server must not fail a start or a rebuild. */
const API_TIMEOUT_MS = 30_000;

/** Options of {@link createProjectionEngine}. */
export interface ProjectionEngineOptions {
  /** The data directory; databases go to `<dataDir>/projections/`. */
  readonly dataDir: string;
  /** The read models to run. @default the built-in ones ({@link builtinProjections}) */
  readonly projections?: readonly Projection[];
  /** SQLite `synchronous` level. @default "full" */
  readonly sync?: SyncMode;
  /** Most events per transaction of a projection without `fold`. @default 16384 */
  readonly batchSize?: number;
  /**
   * Most events per transaction of a projection with `fold` (the built-ins): during a
   * catch-up or rebuild each window writes each key once. @default 262144
   */
  readonly foldWindow?: number;
  /** `waitFor` timeout when the call names none, in ms. @default 5000 */
  readonly waitTimeoutMs?: number;
  /**
   * Open the served databases for queries and status only: no consumer, no lock, no
   * writes (for the CLI while `flexcore up` runs the engine). @default false
   */
  readonly readOnly?: boolean;
  /** Log lines for people. @default stderr */
  readonly log?: (line: string, level?: "warn" | "error") => void;
}

/** Options of {@link ProjectionEngine.waitFor}. */
export interface WaitOptions {
  /** Which stream `seq` belongs to. @default "FLEX_EVENTS" */
  readonly stream?: SourceStream;
  /** In ms. @default 5000 (the engine's `waitTimeoutMs`) */
  readonly timeout?: number;
  readonly signal?: AbortSignal;
}

/** Told when a served read model changed. */
export interface ChangeEvent {
  readonly projection: string;
  /** `apply`: events were applied; `rebuild`: a rebuilt copy replaced the model. */
  readonly kind: "apply" | "rebuild";
  readonly stream: SourceStream | undefined;
  /** The model's position in `stream` after the change. */
  readonly seq: number;
  /** Events applied in this change. */
  readonly events: number;
  /** Tenants whose rows may have changed (all tenants for a rebuild: empty array). */
  readonly tenants: readonly string[];
}

export type ChangeListener = (change: ChangeEvent) => void;

/** A reader as described by {@link ProjectionEngine.list}. */
export interface ReaderInfo {
  readonly name: string;
  readonly description: string;
  readonly columns: Readonly<Record<string, ColumnType>>;
  readonly key: readonly string[];
  readonly defaultSort: string | undefined;
}

/** A projection as described by {@link ProjectionEngine.list}. */
export interface ProjectionInfo {
  readonly name: string;
  readonly version: number;
  readonly description: string;
  readonly sources: readonly ProjectionSource[];
  readonly onError: FailurePolicy;
  readonly readers: readonly ReaderInfo[];
}

/** One source stream of a projection's status. */
export interface StreamStatus {
  readonly stream: SourceStream;
  /** Stored checkpoint: last sequence whose rows are committed. */
  readonly checkpoint: number;
  /** Sequence up to which the model reflects the stream (ahead of `checkpoint` while only ignored events arrived). */
  readonly position: number;
  /** The stream's last sequence (undefined when NATS could not be asked). */
  readonly lastSeq: number | undefined;
  /** `lastSeq - position`: events not yet reflected. */
  readonly lag: number | undefined;
  /** `Flex-Time` of the last applied event. */
  readonly lastEventTime: string | null;
  /** ms since JetStream stored the last applied event. */
  readonly lastEventAgeMs: number | undefined;
}

/** What `flexcore projections status` and `/metrics` show. */
export interface ProjectionStatus {
  readonly name: string;
  readonly version: number;
  readonly generation: number;
  readonly file: string;
  /** `live`: caught up and following; `catching-up`: lag > 0; `stopped`: halted by the `stop` policy; `stale`: built by another version, being rebuilt; `read-only`: opened by a read-only engine. */
  readonly state: "live" | "catching-up" | "stopped" | "stale" | "read-only";
  readonly rebuilding: boolean;
  readonly streams: readonly StreamStatus[];
  /** Sum of the streams' lags. */
  readonly lag: number | undefined;
  readonly failures: { readonly count: number; readonly last: readonly StoredFailure[] };
  readonly stoppedAt: { readonly stream: string; readonly seq: number; readonly error: string } | undefined;
  /** Events applied by this process. */
  readonly applied: number;
}

/**
 * Folds `FLEX_EVENTS` and `FLEX_DERIVED` into SQLite read models, exactly once, and serves
 * tenant-scoped queries on them.
 */
export interface ProjectionEngine extends AsyncDisposable {
  /** Opens the databases (rebuilding those of another version in the background) and follows the streams. */
  start(): Promise<void>;
  /** The registered projections and their readers. */
  list(): ProjectionInfo[];
  /** Checkpoints, lag, failures. @throws ProjectionNotFoundError */
  status(name?: string): Promise<ProjectionStatus[]>;
  /** The served model's position per source stream. */
  position(name: string): Readonly<Partial<Record<SourceStream, number>>>;
  /**
   * Read-your-writes: resolves once the served model reflects `seq` of `options.stream`.
   * @throws WaitTimeoutError, ProjectionStoppedError, AbortedError, ProjectionNotFoundError
   */
  waitFor(name: string, seq: number, options?: WaitOptions): Promise<void>;
  /**
   * One page of a tenant's rows of a reader. Each call reads one committed snapshot.
   * @throws TenantRequiredError, InvalidQueryError, SubjectTokenError, ProjectionNotFoundError
   */
  query<T = Record<string, unknown>>(name: string, options: QueryOptions): Promise<QueryPage<T>>;
  /**
   * Builds fresh copies from sequence 1 beside the served ones and swaps them in once
   * caught up: readers see the old model until the new one is complete.
   * @throws RebuildInProgressError, ProjectionNotFoundError, AbortedError
   */
  rebuild(names: string | readonly string[], options?: RebuildOptions): Promise<RebuildResult>;
  /** Calls `listener` after each change of the served model; returns the unsubscribe function. */
  onChange(name: string, listener: ChangeListener): () => void;
  /** Stops following, writes pending checkpoints, closes the databases. */
  close(): Promise<void>;
}

/** What {@link ProjectionEngine.list} says about a projection. */
export function describeProjection(p: Projection): ProjectionInfo {
  return {
    name: p.name,
    version: p.version,
    description: p.description,
    sources: p.sources,
    onError: p.onError ?? "dlq",
    readers: Object.entries(p.readers).map(([name, r]) => ({ name, description: r.description, columns: r.columns, key: r.key, defaultSort: r.defaultSort })),
  };
}

function checkOptions(o: ProjectionEngineOptions): void {
  if (o === null || typeof o !== "object") throw new InvalidOptionError("options", o, "an object with `dataDir`");
  if (typeof o.dataDir !== "string" || o.dataDir.length === 0) throw new InvalidOptionError("dataDir", o.dataDir, "a directory path");
  if (o.sync !== undefined && o.sync !== "full" && o.sync !== "normal") throw new InvalidOptionError("sync", o.sync, '"full" or "normal"');
  if (o.batchSize !== undefined && (!Number.isInteger(o.batchSize) || o.batchSize < 1)) throw new InvalidOptionError("batchSize", o.batchSize, "an integer from 1 and up");
  if (o.foldWindow !== undefined && (!Number.isInteger(o.foldWindow) || o.foldWindow < 1)) throw new InvalidOptionError("foldWindow", o.foldWindow, "an integer from 1 and up");
  if (o.waitTimeoutMs !== undefined && (!Number.isInteger(o.waitTimeoutMs) || o.waitTimeoutMs < 0)) throw new InvalidOptionError("waitTimeoutMs", o.waitTimeoutMs, "an integer from 0 and up");
}

/**
 * Creates a projection engine on `nc` (the topology must exist). Nothing is opened until
 * {@link ProjectionEngine.start}.
 */
export function createProjectionEngine(nc: NatsConnection, options: ProjectionEngineOptions): ProjectionEngine {
  checkOptions(options);
  const projections = options.projections ?? builtinProjections();
  if (!Array.isArray(projections) || projections.length === 0) throw new InvalidOptionError("projections", projections, "a non-empty array of projections");
  const names = new Set<string>();
  projections.forEach((p, i) => {
    checkProjection(p, `projections[${i}]`);
    if (names.has(p.name)) throw new InvalidOptionError(`projections[${i}].name`, p.name, "a name not used by another projection");
    names.add(p.name);
  });
  return new Engine(nc, options, projections);
}

class Engine implements ProjectionEngine {
  readonly #nc: NatsConnection;
  readonly #dir: string;
  readonly #sync: SyncMode;
  readonly #limits: { readonly batchSize: number; readonly foldWindow: number };
  readonly #waitTimeoutMs: number;
  readonly #readOnly: boolean;
  readonly #log: (line: string, level?: "warn" | "error") => void;
  readonly #projections: ReadonlyMap<string, Projection>;
  readonly #served = new Map<string, Served>();
  readonly #waiters = new PositionWaiters();
  readonly #listeners = new Map<string, Set<ChangeListener>>();
  readonly #rebuilding = new Set<string>();
  readonly #rebuilds = new Set<Promise<unknown>>();
  readonly #closing = new AbortController();
  #jsm: JetStreamManager | undefined;
  #live: ProjectionRunner | undefined;
  #reapplier: Reapplier | undefined;
  #publisher: Publisher | undefined;
  #release: (() => void) | undefined;
  #state: "new" | "starting" | "running" | "closed" = "new";

  constructor(nc: NatsConnection, options: ProjectionEngineOptions, projections: readonly Projection[]) {
    this.#nc = nc;
    this.#dir = projectionsDir(options.dataDir);
    this.#sync = options.sync ?? DEFAULT_SYNC;
    this.#limits = { batchSize: options.batchSize ?? DEFAULT_PROJECTION_BATCH_SIZE, foldWindow: options.foldWindow ?? DEFAULT_FOLD_WINDOW };
    this.#waitTimeoutMs = options.waitTimeoutMs ?? DEFAULT_WAIT_TIMEOUT_MS;
    this.#readOnly = options.readOnly ?? false;
    this.#log = options.log ?? ((line) => void process.stderr.write(`${line}\n`));
    this.#projections = new Map(projections.map((p) => [p.name, p]));
  }

  async start(): Promise<void> {
    if (this.#state !== "new") throw new ProjectionEngineClosedError(`start() was already called (${this.#state})`);
    this.#state = "starting";
    try {
      mkdirSync(this.#dir, { recursive: true });
      this.#jsm = await jetstreamManager(this.#nc, { timeout: API_TIMEOUT_MS });
      if (this.#readOnly) {
        for (const p of this.#projections.values()) this.#openReadOnly(p);
        this.#state = "running";
        return;
      }
      this.#release = acquireLock(this.#dir);
      this.#live = new ProjectionRunner(this.#nc, this.#deadLetterFn(), (m, s, o) => this.#onLiveBatch(m, s, o), this.#log, this.#limits);
      const stale: string[] = [];
      const live: Member[] = [];
      for (const p of this.#projections.values()) {
        const served = this.#openServed(p);
        this.#served.set(p.name, served);
        if (served.stale) stale.push(p.name);
        else live.push(served.member!);
      }
      await this.#live.add(...live);
      this.#reapplier = this.#startReapplier(this.#live);
      this.#state = "running";
      if (stale.length > 0) {
        this.#log(`flexcore: projections: ${stale.join(", ")} changed version; rebuilding beside the served copy`);
        this.#track(this.rebuild(stale).catch((err: unknown) => this.#log(`flexcore: projections: rebuild of ${stale.join(", ")} failed: ${(err as Error).message}`, "error")));
      }
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  #openServed(p: Projection): Served {
    const manifest = readManifest(this.#dir, p.name);
    let generation: number;
    let stale = false;
    if (manifest && existsSync(join(this.#dir, manifest.file))) {
      generation = manifest.generation;
      stale = manifest.version !== p.version;
    } else {
      generation = Math.max(lastGeneration(this.#dir, p.name), manifest?.generation ?? 0) + 1;
    }
    const file = generationFile(p.name, generation);
    // Copies of crashed rebuilds and copies replaced by one are deleted.
    for (const f of generationsOnDisk(this.#dir, p.name)) if (f !== file) removeDatabase(this.#dir, f);
    const member = new Member(p, join(this.#dir, file), generation, this.#sync);
    if (!manifest || manifest.file !== file) writeManifest(this.#dir, { name: p.name, version: p.version, generation, file });
    return { member, reader: openReader(join(this.#dir, file)), file, generation, stale };
  }

  #openReadOnly(p: Projection): void {
    const manifest = readManifest(this.#dir, p.name);
    if (!manifest || !existsSync(join(this.#dir, manifest.file))) return;
    this.#served.set(p.name, { member: undefined, reader: openReader(join(this.#dir, manifest.file)), file: manifest.file, generation: manifest.generation, stale: manifest.version !== p.version });
  }

  #track(p: Promise<unknown>): void {
    this.#rebuilds.add(p);
    void p.finally(() => this.#rebuilds.delete(p));
  }

  #deadLetterFn(): DeadLetterFn {
    return async (projection, stream, event, error, policy) => {
      this.#publisher ??= createPublisher(this.#nc);
      await deadLetter(this.#publisher, projection, stream, event, error, policy);
    };
  }

  #startReapplier(live: ProjectionRunner): Reapplier {
    const servedMember = (name: string): Member | undefined => this.#served.get(name)?.member;
    const r = new Reapplier({
      nc: this.#nc,
      live,
      member: servedMember,
      members: () => [...this.#served.values()].flatMap((s) => (s.member ? [s.member] : [])),
      deadLetter: async (member, stream, event, error, redriven) => {
        this.#publisher ??= createPublisher(this.#nc);
        await deadLetter(this.#publisher, member.name, stream, event, error, "dlq", redriven);
      },
      applied: (member, stream, tenant) => this.#onLiveBatch(member, stream, { applied: 1, failed: 0, tenants: new Set([tenant]) }),
      log: this.#log,
    });
    r.start();
    return r;
  }

  #rebuildHost(): RebuildHost {
    return {
      nc: this.#nc,
      dir: this.#dir,
      sync: this.#sync,
      limits: this.#limits,
      log: this.#log,
      jsm: this.#jsm!,
      live: this.#live!,
      served: this.#served,
      closing: this.#closing.signal,
      deadLetterFn: () => this.#deadLetterFn(),
      rebuilt: (m) => {
        // The new copy takes the redrives from its own position (0): those of events it failed again.
        this.#reapplier?.restart();
        this.#settleWaiters(m.name);
        this.#emit(m.name, { projection: m.name, kind: "rebuild", stream: undefined, seq: m.position(STREAMS.events), events: 0, tenants: [] });
      },
    };
  }

  #projection(name: string): Projection {
    const p = typeof name === "string" ? this.#projections.get(name) : undefined;
    if (!p) throw new ProjectionNotFoundError(String(name), [...this.#projections.keys()]);
    return p;
  }

  #servedOf(name: string): Served {
    this.#projection(name);
    if (this.#state !== "running") throw new ProjectionEngineClosedError(this.#state === "closed" ? "it was closed" : "call start() first");
    const s = this.#served.get(name);
    if (!s) throw new ProjectionEngineClosedError(`projection \`${name}\` has no database yet (read-only engine before the first start)`);
    return s;
  }

  #onLiveBatch(member: Member, stream: SourceStream, outcome: BatchOutcome | undefined): void {
    const served = this.#served.get(member.name);
    if (served?.member !== member) return;
    this.#settleWaiters(member.name);
    if (outcome && outcome.applied > 0) {
      const listeners = this.#listeners.get(member.name);
      if (listeners && listeners.size > 0) {
        this.#emit(member.name, { projection: member.name, kind: "apply", stream, seq: member.position(stream), events: outcome.applied, tenants: [...outcome.tenants] });
      }
    }
  }

  #emit(name: string, change: ChangeEvent): void {
    for (const l of this.#listeners.get(name) ?? []) {
      try {
        l(change);
      } catch (err) {
        this.#log(`flexcore: projections: a change listener of ${name} threw: ${(err as Error).message}`, "warn");
      }
    }
  }

  #settleWaiters(name: string): void {
    this.#waiters.settle(name, this.#served.get(name)?.member);
  }

  list(): ProjectionInfo[] {
    return [...this.#projections.values()].map(describeProjection);
  }

  position(name: string): Readonly<Partial<Record<SourceStream, number>>> {
    const served = this.#servedOf(name);
    const out: Partial<Record<SourceStream, number>> = {};
    if (served.member) for (const s of served.member.streams.keys()) out[s] = served.member.position(s);
    else for (const c of readCheckpoints(served.reader)) out[c.stream as SourceStream] = c.seq;
    return out;
  }

  async status(name?: string): Promise<ProjectionStatus[]> {
    const names = name === undefined ? [...this.#projections.keys()] : [this.#projection(name).name];
    if (this.#state !== "running") throw new ProjectionEngineClosedError("call start() first");
    const lastSeqs = new Map<string, number | undefined>();
    for (const stream of [STREAMS.events, STREAMS.derived]) {
      lastSeqs.set(stream, await this.#jsm!.streams.info(stream).then((i) => i.state.last_seq, () => undefined));
    }
    const now = Date.now();
    const out: ProjectionStatus[] = [];
    for (const n of names) {
      const p = this.#projection(n);
      const served = this.#served.get(n);
      if (!served) continue;
      const stored = new Map(readCheckpoints(served.reader).map((c) => [c.stream, c]));
      const member = served.member;
      const streams: StreamStatus[] = p.sources.map((src) => {
        const c = stored.get(src.stream);
        const checkpoint = c?.seq ?? 0;
        const position = member ? member.position(src.stream) : checkpoint;
        const lastSeq = lastSeqs.get(src.stream);
        const storedAt = c?.lastStoredAt ?? null;
        return {
          stream: src.stream,
          checkpoint,
          position,
          lastSeq,
          lag: lastSeq === undefined ? undefined : Math.max(0, lastSeq - position),
          lastEventTime: c?.lastEventTime ?? null,
          lastEventAgeMs: storedAt === null ? undefined : Math.max(0, now - storedAt),
        };
      });
      const lag = streams.some((s) => s.lag === undefined) ? undefined : streams.reduce((a, s) => a + s.lag!, 0);
      const state: ProjectionStatus["state"] = !member ? "read-only" : member.stopped ? "stopped" : served.stale ? "stale" : (lag ?? 1) > 0 ? "catching-up" : "live";
      out.push({
        name: n,
        version: p.version,
        generation: served.generation,
        file: join(this.#dir, served.file),
        state,
        rebuilding: this.#rebuilding.has(n),
        streams,
        lag,
        failures: readFailures(served.reader),
        stoppedAt: member?.stopped,
        applied: member?.applied ?? 0,
      });
    }
    return out;
  }

  async waitFor(name: string, seq: number, options: WaitOptions = {}): Promise<void> {
    const served = this.#servedOf(name);
    const p = this.#projection(name);
    const stream = options.stream ?? STREAMS.events;
    if (!p.sources.some((s) => s.stream === stream)) throw new InvalidOptionError("stream", stream, `a source stream of \`${name}\` (${p.sources.map((s) => s.stream).join(", ")})`);
    if (!Number.isInteger(seq) || seq < 0) throw new InvalidOptionError("seq", seq, "an integer from 0 and up");
    const timeout = options.timeout ?? this.#waitTimeoutMs;
    if (!Number.isInteger(timeout) || timeout < 0) throw new InvalidOptionError("timeout", timeout, "an integer from 0 and up (ms)");
    const member = served.member;
    if (!member) throw new ProjectionEngineClosedError("the engine is read-only");
    if (member.position(stream) >= seq) return;
    if (member.stopped) throw new ProjectionStoppedError(name, member.stopped.stream, member.stopped.seq, member.stopped.error);
    await this.#waiters.wait(name, stream, seq, timeout, options.signal, () => this.#served.get(name)?.member?.position(stream) ?? 0);
  }

  async query<T = Record<string, unknown>>(name: string, options: QueryOptions): Promise<QueryPage<T>> {
    const served = this.#servedOf(name);
    const p = this.#projection(name);
    const readerName = options?.reader ?? Object.keys(p.readers)[0]!;
    const spec = Object.hasOwn(p.readers, readerName) ? p.readers[readerName] : undefined;
    if (!spec) throw new InvalidQueryError("reader", readerName, `one of ${Object.keys(p.readers).join(", ")}`);
    return runQuery(served.reader, readerName, spec, options) as QueryPage<T>;
  }

  onChange(name: string, listener: ChangeListener): () => void {
    this.#projection(name);
    if (typeof listener !== "function") throw new InvalidOptionError("listener", listener, "a function (change) => void");
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    const listeners = set;
    listeners.add(listener);
    return () => void listeners.delete(listener);
  }

  async rebuild(names: string | readonly string[], options: RebuildOptions = {}): Promise<RebuildResult> {
    const list = [...new Set(typeof names === "string" ? [names] : [...names])];
    if (list.length === 0) throw new InvalidOptionError("names", names, "a projection name or a non-empty array of names");
    const projections = list.map((n) => this.#projection(n));
    if (this.#state !== "running") throw new ProjectionEngineClosedError("call start() first");
    if (this.#readOnly) throw new ProjectionEngineClosedError("the engine is read-only");
    for (const n of list) if (this.#rebuilding.has(n)) throw new RebuildInProgressError(n);
    for (const n of list) this.#rebuilding.add(n);
    const work = rebuildBeside(this.#rebuildHost(), projections, options);
    this.#track(work);
    try {
      return await work;
    } finally {
      for (const n of list) this.#rebuilding.delete(n);
    }
  }

  async close(): Promise<void> {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#closing.abort(new ProjectionEngineClosedError("it was closed"));
    await Promise.allSettled([...this.#rebuilds]);
    await this.#reapplier?.close();
    await this.#live?.close();
    this.#waiters.rejectAll((name) => new ProjectionEngineClosedError(`closed while waiting on \`${name}\``));
    for (const served of this.#served.values()) {
      if (served.member) {
        try {
          served.member.flushCheckpoints();
        } catch (err) {
          this.#log(`flexcore: projections: could not write the checkpoint of ${served.member.name}: ${(err as Error).message}`, "error");
        }
        served.member.close();
      }
      if (served.reader.open) served.reader.close();
    }
    this.#served.clear();
    await this.#publisher?.close().catch(() => undefined);
    this.#release?.();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
