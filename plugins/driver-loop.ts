/**
 * What the sink and source drivers share: one background loop, stopped by `close()` through
 * an abort signal that also cuts short the loop's pauses and calls.
 */
export abstract class DriverLoop implements AsyncDisposable {
  readonly #abort = new AbortController();
  #closed = false;
  #loop: Promise<void> | undefined;

  constructor(readonly what: string) {}

  /** Whether `close()` was called. */
  protected get closed(): boolean {
    return this.#closed;
  }

  /** Aborted by `close()`: pass it to calls and pauses. */
  protected get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /** Whether the loop runs (or ran): `start()` is idempotent. */
  protected get started(): boolean {
    return this.#loop !== undefined || this.#closed;
  }

  /** Runs `loop` in the background until `close()`. */
  protected runLoop(loop: Promise<void>): void {
    this.#loop = loop;
  }

  /** Waits `ms`, or less when the driver closes. */
  protected pause(ms: number): Promise<void> {
    const signal = this.#abort.signal;
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const t = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#abort.abort(new Error(`${this.what} closed`));
    await this.#loop?.catch(() => undefined);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
