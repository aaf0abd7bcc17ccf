import { createInbox } from "@nats-io/transport-node";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { AbortedError, FlexError } from "../streams/index.js";
import type { ProjectionEngine } from "./engine.js";
import { RebuildInProgressError } from "./errors.js";
import type { RebuildProgress, RebuildResult } from "./rebuild.js";

/**
 * Subject on which a running engine (`flexcore up`) accepts rebuild requests, so that
 * `flexcore projections rebuild` swaps the copy the running gateway serves instead of
 * writing files behind its back.
 */
export const REBUILD_SUBJECT = "flexcore.control.projections.rebuild";

/** How long the CLI waits for a running engine to accept a rebuild. */
export const CONTROL_TIMEOUT_MS = 3_000;

interface RebuildRequest {
  readonly names: readonly string[];
  /** Where progress and the result go. */
  readonly inbox: string;
}

/** Messages sent to a rebuild request's inbox. */
export type RebuildMessage =
  | { readonly kind: "progress"; readonly progress: RebuildProgress }
  | { readonly kind: "done"; readonly result: RebuildResult }
  | { readonly kind: "error"; readonly code: string; readonly message: string };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function errorMessage(err: unknown): RebuildMessage {
  return { kind: "error", code: err instanceof FlexError ? err.code : "FLEX_INTERNAL", message: (err as Error).message ?? String(err) };
}

/** A control endpoint of an engine; `close()` unsubscribes. */
export interface ProjectionControl {
  close(): Promise<void>;
}

/**
 * Answers rebuild requests for `engine` on {@link REBUILD_SUBJECT}, one at a time: a request
 * while one it accepted is still running is refused with `FLEX_REBUILD_IN_PROGRESS`, whatever
 * projections it names (each rebuild reads every tenant's events and shares the machine with
 * the live pipeline; the CLI and the gateway's operator route both come here).
 */
export function serveProjectionControl(nc: NatsConnection, engine: ProjectionEngine): ProjectionControl {
  let running: readonly string[] | undefined;
  const sub: Subscription = nc.subscribe(REBUILD_SUBJECT, {
    callback: (err, msg) => {
      if (err) return;
      let request: RebuildRequest;
      try {
        request = JSON.parse(decoder.decode(msg.data)) as RebuildRequest;
        if (!Array.isArray(request.names) || typeof request.inbox !== "string") throw new Error("expected { names, inbox }");
      } catch (e) {
        msg.respond(encoder.encode(JSON.stringify(errorMessage(e))));
        return;
      }
      const send = (m: RebuildMessage): void => {
        if (!nc.isClosed()) nc.publish(request.inbox, encoder.encode(JSON.stringify(m)));
      };
      if (running) {
        msg.respond(encoder.encode(JSON.stringify(errorMessage(new RebuildInProgressError(running.join(", "))))));
        return;
      }
      let accepted = false;
      const names = [...request.names];
      running = names.length > 0 ? names : ["all projections"];
      const run = engine.rebuild(request.names, { onProgress: (progress) => send({ kind: "progress", progress }) });
      void run.then(() => undefined, () => undefined).finally(() => (running = undefined));
      // Errors found before any work (unknown name, rebuild running) answer the request itself.
      void Promise.race([run.then(() => undefined), new Promise((r) => setTimeout(r, 50))]).then(() => {
        accepted = true;
        msg.respond(encoder.encode(JSON.stringify({ kind: "accepted" })));
      }, (e: unknown) => msg.respond(encoder.encode(JSON.stringify(errorMessage(e)))));
      run.then((result) => send({ kind: "done", result }), (e: unknown) => {
        if (accepted) send(errorMessage(e));
      });
    },
  });
  return {
    close: async () => {
      if (!nc.isClosed()) sub.unsubscribe();
    },
  };
}

/** A rebuild a running engine accepted. */
export interface AcceptedRebuild {
  /** Resolves with the result; rejects with the engine's coded error (a {@link FlexError}) or {@link AbortedError}. */
  readonly done: Promise<RebuildResult>;
}

/**
 * Asks a running engine to rebuild and resolves once it has accepted (progress then goes to
 * `onProgress`, the end to `done`), or with `undefined` when no engine answers.
 * @throws FlexError with the engine's code when it refuses (unknown projection, a rebuild already running)
 */
export async function startRebuild(nc: NatsConnection, names: readonly string[], onProgress?: (p: RebuildProgress) => void, signal?: AbortSignal): Promise<AcceptedRebuild | undefined> {
  const inbox = createInbox();
  // Subscribed before asking: progress may arrive before the acceptance does.
  const sub = nc.subscribe(inbox);
  const stop = (): void => {
    if (!nc.isClosed() && !sub.isClosed()) sub.unsubscribe();
  };
  let answer: RebuildMessage | { kind: "accepted" };
  try {
    const reply = await nc.request(REBUILD_SUBJECT, encoder.encode(JSON.stringify({ names, inbox } satisfies RebuildRequest)), { timeout: CONTROL_TIMEOUT_MS });
    answer = JSON.parse(decoder.decode(reply.data)) as RebuildMessage | { kind: "accepted" };
  } catch (err) {
    stop();
    // No responders / timeout: no engine runs on this server.
    if (/no responders|timeout/iu.test(String((err as Error).message)) || (err as { name?: string }).name === "NoRespondersError" || (err as { name?: string }).name === "TimeoutError") return undefined;
    throw err;
  }
  if (answer.kind === "error") {
    stop();
    throw new FlexError(answer.code, answer.message);
  }
  const done = (async (): Promise<RebuildResult> => {
    const onAbort = (): void => stop();
    if (signal?.aborted) stop();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for await (const m of sub) {
        const message = JSON.parse(decoder.decode(m.data)) as RebuildMessage;
        if (message.kind === "progress") onProgress?.(message.progress);
        else if (message.kind === "done") return message.result;
        else throw new FlexError(message.code, message.message);
      }
      throw new AbortedError("rebuild request");
    } finally {
      signal?.removeEventListener("abort", onAbort);
      stop();
    }
  })();
  return { done };
}

/**
 * Asks a running engine to rebuild; resolves with its result, or with `undefined` when no
 * engine answers (then the caller may rebuild locally).
 * @throws FlexError with the engine's code when it refuses or the rebuild fails
 */
export async function requestRebuild(nc: NatsConnection, names: readonly string[], onProgress?: (p: RebuildProgress) => void, signal?: AbortSignal): Promise<RebuildResult | undefined> {
  const accepted = await startRebuild(nc, names, onProgress, signal);
  return accepted === undefined ? undefined : accepted.done;
}
