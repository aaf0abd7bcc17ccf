import { describe, expect, it } from "vitest";
import { DEFAULT_FIRST_RESTART_MS, restartDelay } from "./supervisor.js";

const BACKOFF = { initialMs: 500, maxMs: 30_000, firstMs: DEFAULT_FIRST_RESTART_MS };

function range(attempt: number, wasReady: boolean): [number, number] {
  const seen = Array.from({ length: 400 }, () => restartDelay(BACKOFF, attempt, wasReady));
  return [Math.min(...seen), Math.max(...seen)];
}

describe("restartDelay", () => {
  it("restarts quickly after a healthy run: the window's first failure of a process that was ready", () => {
    const [lo, hi] = range(1, true);
    expect(lo).toBeGreaterThanOrEqual(DEFAULT_FIRST_RESTART_MS);
    expect(hi).toBeLessThanOrEqual(Math.round(DEFAULT_FIRST_RESTART_MS * 1.25));
  });

  it("keeps the exponential sequence with jitter for a crash loop: initial × 2^(n-1), capped", () => {
    // A process that never became ready gets no quick restart, even the first time.
    for (const [attempt, wasReady, base] of [[1, false, 500], [2, true, 1_000], [2, false, 1_000], [3, true, 2_000], [4, true, 4_000], [8, true, 30_000]] as const) {
      const [lo, hi] = range(attempt, wasReady);
      expect(lo, `attempt ${attempt}`).toBeGreaterThanOrEqual(base);
      expect(hi, `attempt ${attempt}`).toBeLessThanOrEqual(base * 1.25);
      expect(hi - lo, `attempt ${attempt} has jitter`).toBeGreaterThan(0);
    }
  });
});
