/**
 * Read-your-writes: callers of `waitFor(name, seq)` wait here until the served copy of a
 * projection has applied `seq` of a stream, the projection stops on a poison event, the
 * timeout passes, the signal aborts, or the engine closes.
 */
import { AbortedError } from "../streams/index.js";
import { ProjectionStoppedError, WaitTimeoutError } from "./errors.js";
import type { Member } from "./member.js";
import type { SourceStream } from "./projection.js";

interface Waiter {
  readonly stream: SourceStream;
  readonly seq: number;
  resolve(): void;
  reject(err: Error): void;
}

/** The waiters of every projection. */
export class PositionWaiters {
  readonly #waiters = new Map<string, Set<Waiter>>();

  /** Resolves the waiters `member` has reached, and rejects them all when it stopped. */
  settle(name: string, member: Member | undefined): void {
    const waiters = this.#waiters.get(name);
    if (!waiters || waiters.size === 0 || !member) return;
    for (const w of waiters) {
      if (member.position(w.stream) >= w.seq) w.resolve();
      else if (member.stopped) w.reject(new ProjectionStoppedError(name, member.stopped.stream, member.stopped.seq, member.stopped.error));
    }
  }

  /** Waits until {@link settle} sees `seq` of `stream` applied; `position` reads where the projection is for the timeout's error. */
  wait(name: string, stream: SourceStream, seq: number, timeout: number, signal: AbortSignal | undefined, position: () => number): Promise<void> {
    if (signal?.aborted) return Promise.reject(new AbortedError("waitFor", { cause: signal.reason }));
    return new Promise<void>((resolve, reject) => {
      let set = this.#waiters.get(name);
      if (!set) this.#waiters.set(name, (set = new Set()));
      const waiters = set;
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        waiters.delete(waiter);
      };
      const waiter: Waiter = {
        stream,
        seq,
        resolve: () => {
          done();
          resolve();
        },
        reject: (err) => {
          done();
          reject(err);
        },
      };
      const onAbort = (): void => waiter.reject(new AbortedError("waitFor", { cause: signal?.reason }));
      const timer = setTimeout(() => waiter.reject(new WaitTimeoutError(name, stream, seq, position(), timeout)), timeout);
      signal?.addEventListener("abort", onAbort, { once: true });
      waiters.add(waiter);
    });
  }

  /** Rejects every waiter (the engine closes). */
  rejectAll(error: (name: string) => Error): void {
    for (const [name, waiters] of this.#waiters) for (const w of waiters) w.reject(error(name));
  }
}
