import { hostname } from "node:os";
import { JetStreamApiCodes, JetStreamApiError, JetStreamError, jetstreamManager } from "@nats-io/jetstream";
import type { StoredMsg } from "@nats-io/jetstream";
import { createInbox, NoRespondersError } from "@nats-io/transport-node";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { AbortedError, BUCKETS, FlexError, InvalidOptionError, MIN_MESSAGE_TTL_MS, openTtlKv } from "../streams/index.js";
import type { ProjectionEngine } from "./engine.js";
import { InstanceRebuildError, RebuildEngineSilentError, RebuildEngineUnansweredError, RebuildInProgressError } from "./errors.js";
import type { InstanceOutcome } from "./errors.js";
import type { RebuildProgress, RebuildResult } from "./rebuild.js";

/**
 * Subject on which every running engine (one per `flexcore up` instance) accepts rebuild
 * requests, so that `flexcore projections rebuild` swaps the copies the running gateways
 * serve instead of writing files behind their back.
 */
export const REBUILD_SUBJECT = "flexcore.control.projections.rebuild";

/**
 * The `flex_leases` key prefix of the engines' membership keys: each running engine keeps
 * `projection-engine.<instance, base64url>` alive (written with a TTL, renewed every third of
 * it, deleted on close), so a requester knows which engines to wait for.
 */
export const ENGINE_KEY_PREFIX = "projection-engine.";

/** How long an engine's membership key lives unrenewed (a dead engine drops out after this). */
export const ENGINE_TTL_MS = 15_000;

/** How long a requester waits for each listed engine to answer (accept or refuse) before naming it as unanswered. */
export const ANSWER_TIMEOUT_MS = 10_000;

/** How often an engine running an accepted rebuild says it is alive (besides its progress). */
export const HEARTBEAT_MS = 1_000;

/** How long an engine that accepted may stay silent before the requester gives it up. */
export const SILENCE_TIMEOUT_MS = 10_000;

/** Longest instance id accepted in a message (longer ones are cut). */
const MAX_INSTANCE_LENGTH = 200;

/** The instance of a message that names none (an engine of an older version). */
const UNNAMED_INSTANCE = "(unnamed)";

interface RebuildRequest {
  readonly names: readonly string[];
  /** Where progress and the result go. */
  readonly inbox: string;
}

/**
 * Messages of the control protocol, each naming the instance whose engine sent it. Every
 * message goes to the request's inbox: first `accepted` or `refused` (also as the reply, when
 * the request has a reply subject), then `progress`, `alive`, and `done` or `error`.
 */
export type RebuildMessage =
  | { readonly kind: "accepted"; readonly instance: string }
  | { readonly kind: "refused"; readonly instance: string; readonly code: string; readonly message: string }
  | { readonly kind: "progress"; readonly instance: string; readonly progress: RebuildProgress }
  | { readonly kind: "alive"; readonly instance: string }
  | { readonly kind: "done"; readonly instance: string; readonly result: RebuildResult }
  | { readonly kind: "error"; readonly instance: string; readonly code: string; readonly message: string };

/** What an engine's membership key holds. */
export interface EngineMember {
  readonly instance: string;
  /** ms since the epoch after which the engine counts as gone (also on a bucket without per-entry TTL). */
  readonly expiresAt: number;
}

/** The `flex_leases` key of an instance's projection engine (the id base64url-encoded: ids may hold `:` or spaces). */
export function engineKey(instance: string): string {
  return `${ENGINE_KEY_PREFIX}${Buffer.from(instance).toString("base64url")}`;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function errorMessage(kind: "error" | "refused", instance: string, err: unknown): RebuildMessage {
  return { kind, instance, code: err instanceof FlexError ? err.code : "FLEX_INTERNAL", message: (err as Error).message ?? String(err) };
}

function encode(m: RebuildMessage): Uint8Array {
  return encoder.encode(JSON.stringify(m));
}

/** A control endpoint of an engine; `close()` unsubscribes and deletes its membership key. */
export interface ProjectionControl {
  /** This engine's instance id, as its messages and its membership key name it. */
  readonly instance: string;
  close(): Promise<void>;
}

/** Options of {@link serveProjectionControl}. */
export interface ProjectionControlOptions {
  /**
   * This instance's id (`runtime.instanceId` of `flexcore up`), carried by every message so
   * a requester tells the engines of a deployment apart. @default `<hostname>-<pid>`
   */
  readonly instance?: string;
  /** How long the membership key lives unrenewed; renewed every third of it. @default ENGINE_TTL_MS */
  readonly ttlMs?: number;
  /** Where a failed renewal of the membership key is told. @default silent */
  readonly log?: (line: string) => void;
}

/**
 * Answers rebuild requests for `engine` on {@link REBUILD_SUBJECT}, one at a time: a request
 * while one it accepted is still running is refused with `FLEX_REBUILD_IN_PROGRESS`, whatever
 * projections it names (each rebuild reads every tenant's events and shares the machine with
 * the live pipeline; the CLI and the gateway's operator route both come here). Every engine of
 * a deployment hears every request and rebuilds its own copy.
 *
 * Resolves once the subscription is on the server and the engine's membership key
 * ({@link engineKey} in `flex_leases`) is written: from then on a requester lists it and waits
 * for its answer. The key is renewed every third of `ttlMs` and deleted by `close()`; a dead
 * engine's key expires.
 */
export async function serveProjectionControl(nc: NatsConnection, engine: ProjectionEngine, options: ProjectionControlOptions = {}): Promise<ProjectionControl> {
  const instance = options.instance ?? `${hostname()}-${process.pid}`;
  const ttlMs = options.ttlMs ?? ENGINE_TTL_MS;
  if (!Number.isFinite(ttlMs) || ttlMs < MIN_MESSAGE_TTL_MS) throw new InvalidOptionError("ttlMs", ttlMs, `a number of milliseconds of at least ${MIN_MESSAGE_TTL_MS}`);
  let running: readonly string[] | undefined;
  const heartbeats = new Set<NodeJS.Timeout>();
  const sub: Subscription = nc.subscribe(REBUILD_SUBJECT, {
    callback: (err, msg) => {
      if (err) return;
      let request: RebuildRequest;
      try {
        request = JSON.parse(decoder.decode(msg.data)) as RebuildRequest;
        if (!Array.isArray(request.names) || typeof request.inbox !== "string") throw new Error("expected { names, inbox }");
      } catch (e) {
        if (msg.reply) msg.respond(encode(errorMessage("refused", instance, e)));
        return;
      }
      const send = (m: RebuildMessage): void => {
        if (!nc.isClosed()) nc.publish(request.inbox, encode(m));
      };
      // Requesters of this version wait on the inbox; one of an older version sent a request with a reply subject.
      const answer = (m: RebuildMessage): void => {
        if (msg.reply && !nc.isClosed()) msg.respond(encode(m));
        send(m);
      };
      if (running) {
        answer(errorMessage("refused", instance, new RebuildInProgressError(running.join(", "))));
        return;
      }
      let accepted = false;
      const names = [...request.names];
      running = names.length > 0 ? names : ["all projections"];
      const run = engine.rebuild(request.names, { onProgress: (progress) => send({ kind: "progress", instance, progress }) });
      // Progress stops between phases; the heartbeat lets the requester tell a quiet engine from a dead one.
      const heartbeat = setInterval(() => send({ kind: "alive", instance }), HEARTBEAT_MS);
      heartbeat.unref();
      heartbeats.add(heartbeat);
      void run.then(() => undefined, () => undefined).finally(() => {
        running = undefined;
        clearInterval(heartbeat);
        heartbeats.delete(heartbeat);
      });
      // Errors found before any work (unknown name, rebuild running) reject `run` before it
      // first waits, and answer the request itself.
      let refused: { readonly error: unknown } | undefined;
      run.then((result) => send({ kind: "done", instance, result }), (e: unknown) => {
        if (accepted) send(errorMessage("error", instance, e));
        else refused = { error: e };
      });
      setImmediate(() => {
        if (refused) {
          answer(errorMessage("refused", instance, refused.error));
          return;
        }
        accepted = true;
        answer({ kind: "accepted", instance });
      });
    },
  });
  const key = engineKey(instance);
  let renew: NodeJS.Timeout | undefined;
  let closed = false;
  try {
    // The server has the subscription before the key says this engine listens.
    await nc.flush();
    const leases = await openTtlKv(nc, BUCKETS.leases);
    const beat = async (): Promise<void> => {
      const body: EngineMember = { instance, expiresAt: Date.now() + ttlMs };
      await leases.put(key, encoder.encode(JSON.stringify(body)), ttlMs);
    };
    await beat();
    renew = setInterval(() => {
      if (closed || nc.isClosed()) return;
      beat().catch((e: unknown) => options.log?.(`projections: renewing the rebuild membership key of instance ${instance} failed: ${(e as Error).message ?? String(e)}`));
    }, Math.max(250, Math.floor(ttlMs / 3)));
    renew.unref();
    return {
      instance,
      close: async () => {
        if (closed) return;
        closed = true;
        clearInterval(renew);
        for (const h of heartbeats) clearInterval(h);
        heartbeats.clear();
        // Out of the member set first: a requester listing from now on does not wait for this engine.
        if (!nc.isClosed()) await leases.kv.delete(key).catch(() => undefined);
        if (!nc.isClosed()) sub.unsubscribe();
      },
    };
  } catch (err) {
    clearInterval(renew);
    if (!nc.isClosed()) sub.unsubscribe();
    throw err;
  }
}

/**
 * The engines a rebuild request waits for: those whose membership key in `flex_leases` is
 * live, sorted. Empty when none runs (or the bucket does not exist yet). One direct batch get
 * of the keys' last values: a request waits one round trip for its list, not one per key.
 */
export async function listRebuildEngines(nc: NatsConnection): Promise<string[]> {
  const jsm = await jetstreamManager(nc, { checkAPI: false });
  const live = new Set<string>();
  const now = Date.now();
  let msgs: AsyncIterable<StoredMsg>;
  try {
    msgs = await jsm.direct.getLastMessagesFor(`KV_${BUCKETS.leases}`, { multi_last: [`$KV.${BUCKETS.leases}.${ENGINE_KEY_PREFIX}>`] });
    for await (const m of msgs) {
      // A deleted or purged key, or the server's marker of an expired one: not a member.
      if (m.header.get("KV-Operation") || m.header.get("Nats-Marker-Reason")) continue;
      try {
        const body = JSON.parse(decoder.decode(m.data)) as Partial<EngineMember>;
        if (typeof body.instance === "string" && body.instance.length > 0 && typeof body.expiresAt === "number" && body.expiresAt > now) live.add(body.instance.slice(0, MAX_INSTANCE_LENGTH));
      } catch {
        // Not a member body: not an engine of this version.
      }
    }
  } catch (err) {
    // No `flex_leases` bucket (the topology is not set up: nobody answers its direct gets), or no key: no engine runs.
    const status = (err as { readonly code?: unknown }).code;
    if (err instanceof NoRespondersError || (err instanceof JetStreamApiError && (err.code === JetStreamApiCodes.StreamNotFound || err.code === JetStreamApiCodes.NoMessageFound)) || (err instanceof JetStreamError && (status === 503 || status === 404))) return [];
    throw err;
  }
  return [...live].sort();
}

/** One engine's part in a rebuild asked of the deployment, as the requester last heard it. */
export interface InstanceRebuildProgress {
  readonly instance: string;
  readonly state: "running" | "done" | "failed";
  /** Its latest progress; undefined before the first. */
  readonly progress: RebuildProgress | undefined;
}

/** Progress of a rebuild asked of the deployment. */
export interface DeploymentRebuildProgress {
  /**
   * The slowest engine's progress (smallest `done / total`; an engine that has sent none counts
   * as 0), so "100%" means every copy has caught up.
   */
  readonly overall: RebuildProgress;
  /** Every engine that accepted, by instance id. */
  readonly instances: readonly InstanceRebuildProgress[];
}

/** How one engine's part ended: `result` when its copy was swapped, else `error`. */
export type InstanceRebuildOutcome = InstanceOutcome<RebuildResult>;

/** A rebuild asked of the deployment, done: every answering engine swapped its copy. */
export interface DeploymentRebuildResult {
  /** One entry per engine, by instance id. */
  readonly instances: ReadonlyArray<{ readonly instance: string; readonly result: RebuildResult }>;
}

/** Options of {@link startRebuild} and {@link requestRebuild}. */
export interface RebuildRequestOptions {
  readonly onProgress?: (progress: DeploymentRebuildProgress) => void;
  /** Stops following (the engines go on); `done` rejects with {@link AbortedError}. */
  readonly signal?: AbortSignal;
  /** How long each listed engine may take to answer (accept or refuse). @default ANSWER_TIMEOUT_MS */
  readonly answerTimeoutMs?: number;
  /** @default SILENCE_TIMEOUT_MS */
  readonly silenceTimeoutMs?: number;
}

/** A rebuild that at least one running engine accepted. */
export interface AcceptedRebuild {
  /** The engines that accepted, by instance id. */
  readonly instances: readonly string[];
  /**
   * Resolves once every engine that accepted has swapped its copy; rejects with an
   * {@link InstanceRebuildError} (the first failing engine's code, every outcome in
   * `instances`) once every engine has ended if one refused, failed or fell silent, or with
   * {@link AbortedError}.
   */
  readonly done: Promise<DeploymentRebuildResult>;
}

interface EngineState {
  readonly instance: string;
  accepted: boolean;
  heard: number;
  progress: RebuildProgress | undefined;
  result: RebuildResult | undefined;
  error: { readonly code: string; readonly message: string } | undefined;
}

function parseMessage(data: Uint8Array): RebuildMessage | undefined {
  try {
    const m = JSON.parse(decoder.decode(data)) as Partial<Record<string, unknown>>;
    // An engine of an older version names no instance: it still counts (as one), so that an
    // answer during a rolling upgrade never looks like "no engine runs".
    const instance = typeof m.instance === "string" && m.instance.length > 0 ? m.instance.slice(0, MAX_INSTANCE_LENGTH) : UNNAMED_INSTANCE;
    switch (m.kind) {
      case "accepted":
      case "alive":
        return { kind: m.kind, instance };
      case "progress":
        return typeof m.progress === "object" && m.progress !== null ? { kind: "progress", instance, progress: m.progress as RebuildProgress } : undefined;
      case "done":
        return typeof m.result === "object" && m.result !== null ? { kind: "done", instance, result: m.result as RebuildResult } : undefined;
      case "error":
      case "refused":
        return { kind: m.kind, instance, code: typeof m.code === "string" ? m.code : "FLEX_INTERNAL", message: typeof m.message === "string" ? m.message : "the engine failed" };
      default:
        return undefined;
    }
  } catch {
    return undefined;
  }
}

/** How far an engine is, for picking the slowest: a swapped copy (2) ranks above any running one. */
function fraction(s: EngineState): number {
  if (s.result) return 2;
  if (!s.progress) return 0;
  return s.progress.total > 0 ? Math.min(1, s.progress.done / s.progress.total) : s.progress.phase === "catching-up" ? 0 : 1;
}

function outcomes(states: Iterable<EngineState>): InstanceRebuildOutcome[] {
  return [...states]
    .map((s) => ({ instance: s.instance, ...(s.result ? { result: s.result } : {}), ...(s.error ? { error: s.error } : {}) }))
    .sort((a, b) => a.instance.localeCompare(b.instance));
}

/** The deployment-wide error once every engine has ended, or undefined when all swapped. */
function failure(states: readonly EngineState[]): InstanceRebuildError | undefined {
  // Refusals first: they are the operator's to act on (wait, fix the name); then failures.
  const failed = [...states.filter((s) => s.error && !s.accepted), ...states.filter((s) => s.error && s.accepted)];
  const first = failed[0];
  if (!first) return undefined;
  const swapped = states.filter((s) => s.result).map((s) => s.instance);
  const message = `${failed.map((s) => `instance \`${s.instance}\`: ${s.error!.message} (${s.error!.code})`).join("; ")}; ${swapped.length} of ${states.length} copies swapped${swapped.length > 0 ? ` (${swapped.join(", ")})` : ""}`;
  return new InstanceRebuildError(first.error!.code, first.instance, message, outcomes(states));
}

/**
 * Asks every running engine to rebuild. The engines to wait for are those whose membership
 * key is live ({@link listRebuildEngines}); the request goes out once, and this waits until
 * every listed engine answered (accept or refuse), each within `answerTimeoutMs` (one that does
 * not is an error naming it, `FLEX_REBUILD_ENGINE_UNANSWERED`). An answer from an engine not
 * listed (it joined meanwhile) counts too. Resolves once at least one accepted (progress then
 * goes to `onProgress`, the end to `done`), or with `undefined` when no engine is listed.
 * @throws InstanceRebuildError when no engine accepted (unknown projection, a rebuild already running, no answer), with the first one's code
 */
export async function startRebuild(nc: NatsConnection, names: readonly string[], options: RebuildRequestOptions = {}): Promise<AcceptedRebuild | undefined> {
  const { onProgress, signal } = options;
  const silenceMs = options.silenceTimeoutMs ?? SILENCE_TIMEOUT_MS;
  const answerMs = options.answerTimeoutMs ?? ANSWER_TIMEOUT_MS;
  if (!Number.isFinite(answerMs) || answerMs <= 0) throw new InvalidOptionError("answerTimeoutMs", answerMs, "a number of milliseconds above 0");
  if (!Number.isFinite(silenceMs) || silenceMs <= 0) throw new InvalidOptionError("silenceTimeoutMs", silenceMs, "a number of milliseconds above 0");
  const listed = await listRebuildEngines(nc);
  if (listed.length === 0) return undefined;
  if (signal?.aborted) throw new AbortedError("rebuild request", { cause: signal.reason });
  const inbox = createInbox();
  const states = new Map<string, EngineState>();
  let changed: (() => void) | undefined;
  const state = (instance: string): EngineState => {
    let s = states.get(instance);
    if (!s) {
      s = { instance, accepted: false, heard: Date.now(), progress: undefined, result: undefined, error: undefined };
      states.set(instance, s);
    }
    s.heard = Date.now();
    return s;
  };
  const report = (): void => {
    if (!onProgress) return;
    const followed = [...states.values()].filter((s) => s.accepted).sort((a, b) => a.instance.localeCompare(b.instance));
    const slowest = followed.filter((s) => !s.error).reduce<EngineState | undefined>((a, s) => (a === undefined || fraction(s) < fraction(a) ? s : a), undefined);
    if (!slowest) return;
    const total = Math.max(0, ...followed.map((s) => s.progress?.total ?? 0));
    const overall: RebuildProgress = slowest.progress ?? { projections: [...names], done: 0, total, eventsPerSecond: 0, etaSeconds: undefined, phase: "catching-up" };
    onProgress({
      overall,
      instances: followed.map((s) => ({ instance: s.instance, state: s.error ? "failed" : s.result ? "done" : "running", progress: s.progress })),
    });
  };
  // Messages may come in any order and twice: each is taken once per state change.
  const take = (message: RebuildMessage): void => {
    const s = state(message.instance);
    if (message.kind === "accepted") {
      s.accepted = true;
    } else if (message.kind === "refused") {
      if (!s.accepted && !s.error) s.error = { code: message.code, message: message.message };
    } else {
      // Only an engine that accepted writes progress or an end, even when its acceptance is late.
      s.accepted = true;
      if (s.result || s.error) return;
      if (message.kind === "progress") s.progress = message.progress;
      else if (message.kind === "done") s.result = message.result;
      else if (message.kind === "error") s.error = { code: message.code, message: message.message };
      if (message.kind !== "alive") report();
    }
    changed?.();
  };
  // Subscribed before asking: the server routes every answer of this request to it.
  const sub = nc.subscribe(inbox, {
    callback: (err, m) => {
      if (err) return;
      const message = parseMessage(m.data);
      if (message) take(message);
    },
  });
  const stop = (): void => {
    if (!nc.isClosed() && !sub.isClosed()) sub.unsubscribe();
  };
  try {
    nc.publish(REBUILD_SUBJECT, encoder.encode(JSON.stringify({ names, inbox } satisfies RebuildRequest)));
    // A permission refusal of the publish surfaces here rather than as a long wait.
    await nc.flush();
    // Every listed engine answers, or its time is up: the set waited for is known, not guessed.
    await new Promise<void>((resolve, reject) => {
      const deadline = Date.now() + answerMs;
      let watch: NodeJS.Timeout | undefined;
      const end = (error?: Error): void => {
        clearInterval(watch);
        signal?.removeEventListener("abort", onAbort);
        changed = undefined;
        if (error) reject(error);
        else resolve();
      };
      const onAbort = (): void => end(new AbortedError("rebuild request", { cause: signal?.reason }));
      const check = (): void => {
        const waiting = listed.filter((i) => { const s = states.get(i); return !s || (!s.accepted && !s.error); });
        if (waiting.length === 0) return end();
        if (Date.now() < deadline) return;
        for (const i of waiting) {
          const e = new RebuildEngineUnansweredError(i, answerMs);
          state(i).error = { code: e.code, message: e.message };
        }
        end();
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      changed = check;
      watch = setInterval(check, Math.max(50, Math.min(250, answerMs / 4)));
      check();
    });
  } catch (err) {
    stop();
    throw err;
  }
  const all = (): EngineState[] => [...states.values()];
  if (!all().some((s) => s.accepted)) {
    stop();
    throw failure(all())!;
  }
  report();
  const done = new Promise<DeploymentRebuildResult>((resolve, reject) => {
    let watch: NodeJS.Timeout | undefined;
    const finish = (error: Error | undefined): void => {
      clearInterval(watch);
      signal?.removeEventListener("abort", onAbort);
      changed = undefined;
      stop();
      if (error) reject(error);
      else resolve({ instances: all().filter((s) => s.result).sort((a, b) => a.instance.localeCompare(b.instance)).map((s) => ({ instance: s.instance, result: s.result! })) });
    };
    const check = (): void => {
      const now = Date.now();
      for (const s of all()) {
        if (s.accepted && !s.result && !s.error && now - s.heard > silenceMs) {
          const e = new RebuildEngineSilentError(s.instance, silenceMs);
          s.error = { code: e.code, message: e.message };
          report();
        }
      }
      if (all().every((s) => s.result || s.error)) finish(failure(all()));
    };
    const onAbort = (): void => finish(new AbortedError("rebuild request", { cause: signal?.reason }));
    if (signal?.aborted) return onAbort();
    signal?.addEventListener("abort", onAbort, { once: true });
    changed = check;
    watch = setInterval(check, Math.max(50, Math.min(250, silenceMs / 4)));
    check();
  });
  return { instances: all().filter((s) => s.accepted).map((s) => s.instance).sort(), done };
}

/**
 * Asks every running engine to rebuild (see {@link startRebuild}); resolves once every one that
 * accepted has swapped its copy, or with `undefined` when no engine is listed (then the caller
 * may rebuild locally).
 * @throws InstanceRebuildError naming the engine when one refuses, fails, does not answer or falls silent
 */
export async function requestRebuild(nc: NatsConnection, names: readonly string[], options: RebuildRequestOptions = {}): Promise<DeploymentRebuildResult | undefined> {
  const accepted = await startRebuild(nc, names, options);
  return accepted === undefined ? undefined : accepted.done;
}
