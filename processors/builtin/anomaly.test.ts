import { describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import type { ProcessorInput } from "../types.js";
import { anomaly, ANOMALY_METHODS, anomalyOptions, scoreSeries } from "./anomaly.js";
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
    for (const method of ANOMALY_METHODS) {
      const opts = anomaly.validateOptions({ method, emit: "all", window: 50 }, "o");
      const all = inputs(series(400, spikes));
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
