import { hostname } from "node:os";
import { createInbox, NoRespondersError } from "@nats-io/transport-node";
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { AbortedError, FlexError } from "../streams/index.js";
import type { ProjectionEngine } from "./engine.js";
import { InstanceRebuildError, RebuildEngineSilentError, RebuildInProgressError } from "./errors.js";
import type { RebuildProgress, RebuildResult } from "./rebuild.js";

/**
 * Subject on which every running engine (one per `flexcore up` instance) accepts rebuild
 * requests, so that `flexcore projections rebuild` swaps the copies the running gateways
 * serve instead of writing files behind their back.
 */
export const REBUILD_SUBJECT = "flexcore.control.projections.rebuild";

/** How long a requester waits for the first engine to answer before deciding that none runs. */
export const CONTROL_TIMEOUT_MS = 3_000;

/** After an engine's answer, how long the requester waits for another before it stops gathering answers. */
export const ACCEPT_WINDOW_MS = 400;

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
 * Messages of the control protocol, each naming the instance whose engine sent it. The reply
 * to a request is `accepted` or `refused`, and the same goes to the request's inbox (a reply
 * that comes after the requester's answer window still counts there); the inbox then gets
 * `progress`, `alive`, and `done` or `error`.
 */
export type RebuildMessage =
  | { readonly kind: "accepted"; readonly instance: string }
  | { readonly kind: "refused"; readonly instance: string; readonly code: string; readonly message: string }
  | { readonly kind: "progress"; readonly instance: string; readonly progress: RebuildProgress }
  | { readonly kind: "alive"; readonly instance: string }
  | { readonly kind: "done"; readonly instance: string; readonly result: RebuildResult }
  | { readonly kind: "error"; readonly instance: string; readonly code: string; readonly message: string };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function errorMessage(kind: "error" | "refused", instance: string, err: unknown): RebuildMessage {
  return { kind, instance, code: err instanceof FlexError ? err.code : "FLEX_INTERNAL", message: (err as Error).message ?? String(err) };
}

function encode(m: RebuildMessage): Uint8Array {
  return encoder.encode(JSON.stringify(m));
}

/** A control endpoint of an engine; `close()` unsubscribes. */
export interface ProjectionControl {
  close(): Promise<void>;
}

/** Options of {@link serveProjectionControl}. */
export interface ProjectionControlOptions {
  /**
   * This instance's id (`runtime.instanceId` of `flexcore up`), carried by every message so
   * a requester tells the engines of a deployment apart. @default `<hostname>-<pid>`
   */
  readonly instance?: string;
}

/**
 * Answers rebuild requests for `engine` on {@link REBUILD_SUBJECT}, one at a time: a request
 * while one it accepted is still running is refused with `FLEX_REBUILD_IN_PROGRESS`, whatever
 * projections it names (each rebuild reads every tenant's events and shares the machine with
 * the live pipeline; the CLI and the gateway's operator route both come here). Every engine of
 * a deployment hears every request and rebuilds its own copy.
 */
export function serveProjectionControl(nc: NatsConnection, engine: ProjectionEngine, options: ProjectionControlOptions = {}): ProjectionControl {
  const instance = options.instance ?? `${hostname()}-${process.pid}`;
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
        msg.respond(encode(errorMessage("refused", instance, e)));
        return;
      }
      const send = (m: RebuildMessage): void => {
        if (!nc.isClosed()) nc.publish(request.inbox, encode(m));
      };
      const answer = (m: RebuildMessage): void => {
        msg.respond(encode(m));
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
      // first waits, and answer the request itself. The answer goes out on the next turn, not
      // after a timer: the rebuild's batches may hold timers back past the requester's window.
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
  return {
    close: async () => {
      for (const h of heartbeats) clearInterval(h);
      heartbeats.clear();
      if (!nc.isClosed()) sub.unsubscribe();
    },
  };
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
export interface InstanceRebuildOutcome {
  readonly instance: string;
  readonly result?: RebuildResult;
  readonly error?: { readonly code: string; readonly message: string };
}

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
  /** @default CONTROL_TIMEOUT_MS */
  readonly acceptTimeoutMs?: number;
  /** @default ACCEPT_WINDOW_MS */
  readonly acceptWindowMs?: number;
  /** @default SILENCE_TIMEOUT_MS */
  readonly silenceTimeoutMs?: number;
}

/** A rebuild that at least one running engine accepted. */
export interface AcceptedRebuild {
  /** The engines that accepted within the answer window, by instance id. */
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
 * Asks every running engine to rebuild: gathers their answers (the first within
 * `acceptTimeoutMs`, then each next within `acceptWindowMs` of the previous), and resolves
 * once at least one accepted (progress then goes to `onProgress`, the end to `done`), or with
 * `undefined` when no engine answers.
 * @throws InstanceRebuildError when every answering engine refused (unknown projection, a rebuild already running), with the first one's code
 */
export async function startRebuild(nc: NatsConnection, names: readonly string[], options: RebuildRequestOptions = {}): Promise<AcceptedRebuild | undefined> {
  const { onProgress, signal } = options;
  const silenceMs = options.silenceTimeoutMs ?? SILENCE_TIMEOUT_MS;
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
  // Replies and inbox copies may come in any order and twice: each message is taken once per state change.
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
  // Subscribed before asking: progress (even the end) may arrive before the acceptance does.
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
    const replies = await nc.requestMany(REBUILD_SUBJECT, encoder.encode(JSON.stringify({ names, inbox } satisfies RebuildRequest)), {
      strategy: "stall",
      stall: options.acceptWindowMs ?? ACCEPT_WINDOW_MS,
      maxWait: options.acceptTimeoutMs ?? CONTROL_TIMEOUT_MS,
    });
    for await (const reply of replies as AsyncIterable<Msg>) {
      const message = parseMessage(reply.data);
      if (message?.kind === "accepted" || message?.kind === "refused") take(message);
    }
  } catch (err) {
    // No responders: no engine runs on this server.
    if (!(err instanceof NoRespondersError)) {
      stop();
      throw err;
    }
  }
  const all = (): EngineState[] => [...states.values()];
  if (all().length === 0) {
    stop();
    return undefined;
  }
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
 * Asks every running engine to rebuild; resolves once every one that accepted has swapped its
 * copy, or with `undefined` when no engine answers (then the caller may rebuild locally).
 * @throws InstanceRebuildError naming the engine when one refuses, fails or falls silent
 */
export async function requestRebuild(nc: NatsConnection, names: readonly string[], options: RebuildRequestOptions = {}): Promise<DeploymentRebuildResult | undefined> {
  const accepted = await startRebuild(nc, names, options);
  return accepted === undefined ? undefined : accepted.done;
}
