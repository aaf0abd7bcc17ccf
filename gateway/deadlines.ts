/**
 * Request deadlines: handlers run their NATS work under the request timeout, so a slow
 * broker answers 503 (`RequestTimeoutError`) instead of holding the connection.
 */
import { RequestTimeoutError } from "./errors.js";
import type { RouteContext } from "./route-context.js";

/** `timed` (aborts the work's signal at the deadline) and `deadline` (for work that cannot be cancelled). */
export function createDeadlines(timeoutMs: number): Pick<RouteContext, "timed" | "deadline"> {
  const timed = async <T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> => {
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const err = new RequestTimeoutError(timeoutMs);
        ac.abort(err);
        reject(err);
      }, timeoutMs);
    });
    try {
      return await Promise.race([fn(ac.signal), timeout]);
    } finally {
      clearTimeout(timer);
    }
  };

  const deadline = async <T>(work: Promise<T>): Promise<T> => {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RequestTimeoutError(timeoutMs)), timeoutMs);
    });
    try {
      return await Promise.race([work, timeout]);
    } finally {
      clearTimeout(timer);
    }
  };
  return { timed, deadline };
}
