// The latency window's percentiles: exact over the last samples, sorted again at most every
// PERCENTILES_REFRESH_MS while samples keep coming, and exact again once they stop.
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { LATENCY_SAMPLES, LatencyWindow, PERCENTILES_REFRESH_MS } from "./metrics.js";

describe("LatencyWindow", () => {
  it("gives nearest-rank percentiles over the last samples, zeros when empty", async () => {
    const w = new LatencyWindow();
    expect(w.percentiles()).toEqual({ p50: 0, p95: 0, p99: 0 });
    for (let i = 1; i <= 100; i++) w.add(i);
    expect(w.percentiles()).toEqual({ p50: 50, p95: 95, p99: 99 });
    // The ring keeps the last LATENCY_SAMPLES: older ones fall out.
    for (let i = 0; i < LATENCY_SAMPLES; i++) w.add(1000);
    await sleep(PERCENTILES_REFRESH_MS + 20);
    expect(w.percentiles()).toEqual({ p50: 1000, p95: 1000, p99: 1000 });
  });

  it("does not sort again for samples added within the refresh interval, and does once it passed", async () => {
    const w = new LatencyWindow();
    for (let i = 1; i <= 100; i++) w.add(i);
    const started = performance.now();
    expect(w.percentiles().p50).toBe(50);
    for (let i = 0; i < 300; i++) w.add(500);
    const cached = w.percentiles();
    if (performance.now() - started < PERCENTILES_REFRESH_MS) expect(cached.p50).toBe(50);
    await sleep(PERCENTILES_REFRESH_MS + 20);
    expect(w.percentiles()).toEqual({ p50: 500, p95: 500, p99: 500 });
    w.reset();
    expect(w.percentiles()).toEqual({ p50: 0, p95: 0, p99: 0 });
    w.add(7);
    expect(w.percentiles().p50).toBe(7);
  });
});
