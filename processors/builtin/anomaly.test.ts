import { describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import type { ProcessorInput } from "../types.js";
import { anomaly, ANOMALY_METHODS, anomalyOptions, scoreSeries, SEED_SEASONS } from "./anomaly.js";
import type { AnomalyState } from "./anomaly.js";

// Deterministic noise: a seeded LCG, so the test data is the same on every run.
function noise(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296 - 0.5;
  };
}

function series(n: number, spikes: ReadonlySet<number>, seasonal = false): number[] {
  const r = noise(7);
  return Array.from({ length: n }, (_, i) => 100 + (seasonal ? 20 * Math.sin((2 * Math.PI * i) / 24) : 0) + r() * 2 + (spikes.has(i) ? 25 : 0));
}

function inputs(values: readonly number[], key = "k1"): ProcessorInput[] {
  return values.map((v, i) => ({ tenant: "acme", key, subject: `evt.acme.sensor.${key}`, seq: i + 1, type: "Reading", data: { value: v }, time: new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString() }));
}

function flaggedSeqs(out: ReadonlyArray<ReadonlyArray<{ data: unknown }>>): number[] {
  return out.flatMap((o) => o.filter((x) => (x.data as { flagged: boolean }).flagged).map((x) => (x.data as { seq: number }).seq));
}

interface Scored {
  readonly flagged: boolean;
  readonly expected: number | null;
}

function scored(out: ReadonlyArray<ReadonlyArray<{ data: unknown }>>, i: number): Scored {
  return out[i]![0]!.data as Scored;
}

describe("anomaly", () => {
  const spikes = new Set([150, 300, 420]);
  const expected = [...spikes].map((i) => i + 1);

  for (const method of ANOMALY_METHODS) {
    it(`${method}: flags the injected spikes and nothing else`, () => {
      const opts = anomaly.validateOptions({ method, emit: "all" }, "options");
      const { outputs } = anomaly.process(anomaly.initialState(opts, "k1"), inputs(series(500, spikes)), opts);
      expect(outputs).toHaveLength(500);
      expect(flaggedSeqs(outputs)).toEqual(expected);
    });
  }

  it("removes a season with `season` and still finds the spikes", () => {
    const values = series(600, spikes, true);
    const plain = anomaly.validateOptions({ method: "zscore", window: 12 }, "o");
    const seasonal = anomaly.validateOptions({ method: "robust", window: 48, season: 24 }, "o");
    const withSeason = anomaly.process(anomaly.initialState(seasonal, "k"), inputs(values), seasonal);
    expect(flaggedSeqs(withSeason.outputs)).toEqual(expected);
    // Without differencing a short window mistakes the sine's slope for anomalies or misses spikes.
    const without = anomaly.process(anomaly.initialState(plain, "k"), inputs(values), plain);
    expect(flaggedSeqs(without.outputs)).not.toEqual(expected);
  });

  it("ewma with `season` flags the spikes only (its variance starts at the first residual, not at 0)", () => {
    const opts = anomaly.validateOptions({ method: "ewma", season: 24, emit: "all" }, "o");
    const { outputs } = anomaly.process(anomaly.initialState(opts, "k"), inputs(series(600, spikes, true)), opts);
    expect(flaggedSeqs(outputs)).toEqual(expected);
  });

  for (const method of ["zscore", "robust", "ewma"] as const) {
    it(`${method}: a spike missed while warming up does not come back as a false flag one season later`, () => {
      // Point 30 is in the second season, before anything is scored: the spike cannot be flagged.
      const values = series(600, new Set([30, 300]), true);
      const opts = anomaly.validateOptions({ method, season: 24, emit: "all" }, "o");
      const { outputs } = anomaly.process(anomaly.initialState(opts, "k"), inputs(values), opts);
      expect(scored(outputs, 30).flagged).toBe(false);
      expect(flaggedSeqs(outputs)).toEqual([301]);
    });
  }

  it("a spike below the threshold moves the seasonal baseline a season later by a bounded step only", () => {
    const at = 200;
    const spike = 2.5;
    const opts = anomaly.validateOptions({ method: "zscore", season: 24, threshold: 5, emit: "all" }, "o");
    const clean = series(400, new Set(), true);
    const dirty = clean.map((v, i) => (i === at ? v + spike : v));
    const a = anomaly.process(anomaly.initialState(opts, "k"), inputs(clean), opts).outputs;
    const b = anomaly.process(anomaly.initialState(opts, "k"), inputs(dirty), opts).outputs;
    expect(scored(b, at).flagged).toBe(false);
    expect(flaggedSeqs(b)).toEqual([]);
    // Plain seasonal differencing would expect x[t−24] itself: the whole spike.
    for (const later of [at + 24, at + 48]) {
      expect(Math.abs(scored(b, later).expected! - scored(a, later).expected!)).toBeLessThan(0.1 * spike);
    }
  });

  it("seeds the seasonal baseline with the median of the first seasons, so a spike among them is ignored", () => {
    const opts = anomaly.validateOptions({ method: "zscore", season: 24, emit: "all" }, "o");
    const values = series(200, new Set([5]), true);
    const { outputs, state } = anomaly.process(anomaly.initialState(opts, "k"), inputs(values), opts);
    expect(outputs.slice(0, SEED_SEASONS * 24).every((o) => (o[0]!.data as { reason: string }).reason.startsWith("warming up"))).toBe(true);
    expect(flaggedSeqs(outputs)).toEqual([]);
    expect(state.baseline).toHaveLength(24);
    expect(state.baseline[5]).toBeCloseTo(100 + 20 * Math.sin((2 * Math.PI * 5) / 24), 0);
  });

  for (const method of ["zscore", "robust"] as const) {
    it(`${method}: after a constant stretch (spread 0) a level shift is flagged, then learnt`, () => {
      const opts = anomaly.validateOptions({ method, window: 20, emit: "all" }, "o");
      const values = Array.from({ length: 120 }, (_, i) => (i < 40 ? 100 : 110));
      const { outputs } = anomaly.process(anomaly.initialState(opts, "k"), inputs(values), opts);
      const flagged = flaggedSeqs(outputs);
      expect(flagged[0]).toBe(41);
      expect(flagged.every((seq) => seq <= 60)).toBe(true);
    });
  }

  it("emits only flagged points by default, with score, reason and expected value", () => {
    const opts = anomaly.validateOptions({}, "o");
    const { outputs } = anomaly.process(anomaly.initialState(opts, "k1"), inputs(series(200, new Set([120]))), opts);
    const emitted = outputs.flat();
    expect(emitted).toHaveLength(1);
    expect(emitted[0]!.type).toBe("AnomalyScored");
    expect(emitted[0]!.data).toMatchObject({ flagged: true, method: "zscore", seq: 121 });
    expect((emitted[0]!.data as { reason: string }).reason).toMatch(/^z-score [\d.]+ > 3$/);
    expect((emitted[0]!.data as { expected: number }).expected).toBeCloseTo(100, 0);
  });

  it("is deterministic and resumable: split batches and a JSON round trip of the state give the same outputs", () => {
    for (const [method, season] of ANOMALY_METHODS.flatMap((m) => [[m, 0] as const, [m, 24] as const])) {
      const opts = anomaly.validateOptions({ method, season, emit: "all", window: 50 }, "o");
      const all = inputs(series(400, spikes, season > 0));
      const once = anomaly.process(anomaly.initialState(opts, "k1"), all, opts);
      let state = anomaly.initialState(opts, "k1");
      const pieces: unknown[] = [];
      for (let i = 0; i < all.length; i += 37) {
        const r = anomaly.process(JSON.parse(JSON.stringify(state)) as AnomalyState, all.slice(i, i + 37), opts);
        state = r.state;
        pieces.push(...r.outputs);
      }
      expect(JSON.stringify(pieces)).toBe(JSON.stringify(once.outputs));
      expect(JSON.stringify(state)).toBe(JSON.stringify(once.state));
    }
  });

  it("scores typed arrays like process does", () => {
    const opts = anomalyOptions({ method: "zscore" });
    const values = Float64Array.from(series(300, spikes));
    const scores = new Float64Array(values.length);
    const flags = new Uint8Array(values.length);
    const n = scoreSeries(anomaly.initialState(opts, "k"), opts, "k", values, scores, flags);
    expect(n).toBe(1);
    expect([...flags].flatMap((f, i) => (f ? [i + 1] : []))).toEqual([151]);
  });

  it("throws on a non-numeric value and leaves the state unchanged", () => {
    const opts = anomaly.validateOptions({}, "o");
    const state = anomaly.initialState(opts, "k");
    const bad = [...inputs([1, 2]), { ...inputs([3])[0]!, data: { value: "x" } }];
    expect(() => anomaly.process(state, bad, opts)).toThrow(/inputs\[2\]\.data\.value/);
    expect(state.n).toBe(0);
  });

  it("rejects bad options naming the path", () => {
    expect(() => anomaly.validateOptions({ window: "ten" }, "processors[2].options")).toThrow('processors[2].options.window: expected integer ≥ 2, got "ten"');
    expect(() => anomaly.validateOptions({ method: "magic" }, "p.options")).toThrow(ConfigError);
    expect(() => anomaly.validateOptions({ windw: 3 }, "p.options")).toThrow(/p\.options\.windw: unknown key/);
    expect(() => anomaly.validateOptions({ method: "iforest", threshold: 2 }, "p.options")).toThrow(/p\.options\.threshold: expected number > 0 and < 1, got 2/);
    expect(() => anomaly.validateOptions({ window: 5, min_points: 9 }, "p.options")).toThrow(/min_points/);
  });
});
