import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { InvalidEventError } from "../../streams/index.js";
import { ConfigError } from "../errors.js";
import { createRandom, shuffle } from "../ml/random.js";
import type { ProcessorInput } from "../types.js";
import { classify } from "./classify.js";
import type { Prediction } from "./classify.js";

const P = "processors[3].options";
const inputs = (rows: unknown[]): ProcessorInput[] =>
  rows.map((data, i) => ({ tenant: "t", key: "m1", subject: "evt.t.rows.m1", seq: i + 1, type: "row", data, time: "2026-01-01T00:00:00Z" }));

const iris = readFileSync(new URL("../datasets/iris.csv", import.meta.url), "utf8")
  .trim()
  .split("\n")
  .slice(1)
  .map((line) => {
    const p = line.split(",");
    return { features: p.slice(0, 4).map(Number), label: p[4]! };
  });

describe("classify processor (unit)", () => {
  it("validates options, naming the path", () => {
    expect(() => classify.validateOptions({ algorithm: "svm" }, P)).toThrow(ConfigError);
    expect(() => classify.validateOptions({ algorithm: "svm" }, P)).toThrow('processors[3].options.algorithm: expected one of "naive-bayes", "logistic", "tree", got "svm"');
    expect(() => classify.validateOptions({ max_depth: 0 }, P)).toThrow(/options\.max_depth: expected integer ≥ 1/);
    expect(classify.validateOptions(undefined, P).algorithm).toBe("naive-bayes");
  });

  for (const algorithm of ["naive-bayes", "logistic", "tree"] as const) {
    it(`${algorithm}: learns iris from labelled events and predicts held-out rows (≥ 90%)`, () => {
      const o = classify.validateOptions({ algorithm }, P);
      const order = shuffle(iris.map((_, i) => i), createRandom(1));
      const train = order.slice(0, 100).map((i) => iris[i]!);
      const test = order.slice(100).map((i) => iris[i]!);
      const events = [...train, ...test.map((r) => ({ features: r.features }))];
      const r = classify.process(classify.initialState(o, "m1"), inputs(events), o);
      expect(r.outputs.slice(0, 100).every((x) => x.length === 0)).toBe(true);
      const predictions = r.outputs.slice(100).map((x) => x[0]!.data as Prediction);
      const right = predictions.filter((p, i) => p.label === test[i]!.label).length;
      expect(right / test.length).toBeGreaterThanOrEqual(0.9);
      expect(predictions[0]!.modelVersion).toBe(100);
      expect(Object.values(predictions[0]!.probabilities).reduce((a, b) => a + b)).toBeCloseTo(1, 9);
    });
  }

  it("versions the model, accepts named features, and replays identically", () => {
    const o = classify.validateOptions({ algorithm: "logistic", retrain_every: 3, emit_training: true }, P);
    const rows = [
      { label: "x", a: 0, b: 1 },
      { label: "y", a: 5, b: 0 },
      { label: "x", a: 1, b: 1 },
      { label: "y", b: 0, a: 6 },
      { a: 0.5, b: 1 },
    ];
    const r = classify.process(classify.initialState(o, "m1"), inputs(rows), o);
    expect(r.outputs.slice(0, 4).map((x) => (x[0]!.data as { modelVersion: number }).modelVersion)).toEqual([1, 2, 3, 4]);
    expect((r.outputs[4]![0]!.data as Prediction).label).toBe("x");
    expect(r.state.featureNames).toEqual(["a", "b"]);
    const again = classify.process(JSON.parse(JSON.stringify(classify.initialState(o, "m1"))), inputs(rows), o);
    expect(JSON.stringify(again)).toBe(JSON.stringify(r));
  });

  it("predicts label null before any training, and rejects malformed rows naming the field", () => {
    const o = classify.validateOptions({}, P);
    const r = classify.process(classify.initialState(o, "m1"), inputs([{ features: [1, 2] }]), o);
    expect(r.outputs[0]![0]!.data).toMatchObject({ label: null, modelVersion: 0 });
    expect(() => classify.process(r.state, inputs([{ features: [1, "2"] }]), o)).toThrow(InvalidEventError);
    expect(() => classify.process(r.state, inputs([{ features: [1, 2, 3] }]), o)).toThrow(/inputs\[0\]\.data\.features/);
    expect(() => classify.process(r.state, inputs([{ features: [1, 2], label: { x: 1 } }]), o)).toThrow(/inputs\[0\]\.data\.label/);
  });
});
