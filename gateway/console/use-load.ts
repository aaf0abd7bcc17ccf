import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import type { ApiError } from "./api.js";

/** What {@link useLoad} gives a page. */
export interface Loaded<T> {
  readonly data: T | undefined;
  readonly error: ApiError | undefined;
  /** Loads again now (after a change the page made). */
  readonly reload: () => void;
}

/**
 * Loads `load()` when `key` changes (undefined: nothing to load), and again every `everyMs`
 * while the tab is visible (0: once). Answers of a superseded load are dropped.
 */
export function useLoad<T>(key: string | undefined, load: () => Promise<T>, everyMs = 0): Loaded<T> {
  const [data, setData] = useState<T | undefined>();
  const [error, setError] = useState<ApiError | undefined>();
  const [tick, setTick] = useState(0);
  const loader = useRef(load);
  loader.current = load;
  useEffect(() => {
    if (key === undefined) {
      setData(undefined);
      return undefined;
    }
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async (): Promise<void> => {
      if (!document.hidden) {
        try {
          const next = await loader.current();
          if (stopped) return;
          setData(next);
          setError(undefined);
        } catch (err) {
          if (stopped) return;
          setError(err as ApiError);
        }
      }
      if (!stopped && everyMs > 0) timer = setTimeout(() => void run(), everyMs);
    };
    void run();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [key, tick, everyMs]);
  const reload = useCallback(() => setTick((n) => n + 1), []);
  return { data, error, reload };
}

/** What {@link useOnDemand} gives a page. */
export interface OnDemand<T> {
  /** The last answer; undefined before the first and after an error. */
  readonly data: T | undefined;
  readonly error: ApiError | undefined;
  /** A load is on its way (the page disables what would start another). */
  readonly busy: boolean;
  /** Runs `fetch` and keeps its answer or its error. */
  readonly load: (fetch: () => Promise<T>) => Promise<void>;
}

/** A load the page asks for (a search, a page of rows) rather than one made when a key changes. */
export function useOnDemand<T>(): OnDemand<T> {
  const [data, setData] = useState<T | undefined>();
  const [error, setError] = useState<ApiError | undefined>();
  const [busy, setBusy] = useState(false);
  const load = useCallback(async (fetch: () => Promise<T>): Promise<void> => {
    setBusy(true);
    try {
      setData(await fetch());
      setError(undefined);
    } catch (err) {
      setError(err as ApiError);
      setData(undefined);
    } finally {
      setBusy(false);
    }
  }, []);
  return { data, error, busy, load };
}
