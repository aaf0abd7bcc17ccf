import { describe, expect, it } from "vitest";
import { InvalidEventError } from "../../streams/index.js";
import { ConfigError } from "../errors.js";
import type { ProcessorInput } from "../types.js";
import { clustering } from "./clustering.js";
import type { ClusterAssignment } from "./clustering.js";

const P = "processors[2].options";

function inputs(points: unknown[]): ProcessorInput[] {
  return points.map((data, i) => ({ tenant: "t", key: "k1", subject: "evt.t.points.k1", seq: i + 1, type: "point", data, time: "2026-01-01T00:00:00Z" }));
}

function twoBlobs(n: number): number[][] {
  // Deterministic, interleaved: around (0,0) and (20,20).
  return Array.from({ length: n }, (_, i) => (i % 2 ? [20 + ((i * 7) % 5) / 5, 20 - ((i * 3) % 5) / 5] : [((i * 7) % 5) / 5, -((i * 3) % 5) / 5]));
}

describe("clustering processor (unit)", () => {
  it("validates options and names the path", () => {
    expect(() => clustering.validateOptions({ k: "ten" }, P)).toThrow(ConfigError);
    expect(() => clustering.validateOptions({ k: "ten" }, P)).toThrow('processors[2].options.k: expected integer ≥ 2 and ≤ 1000, got "ten"');
    expect(() => clustering.validateOptions({ mode: "batch" }, P)).toThrow(/options\.mode/);
    expect(() => clustering.validateOptions({ kk: 3 }, P)).toThrow(/options\.kk: unknown key/);
    expect(() => clustering.validateOptions({ k: 5, window: 3 }, P)).toThrow(/options\.window/);
    const o = clustering.validateOptions({ k: 2 }, P);
    expect(o).toMatchObject({ k: 2, mode: "streaming", warmup: 20 });
    expect(Object.isFrozen(o)).toBe(true);
  });

  it("streaming: emits nothing during warm-up, then separates the blobs and keeps learning", () => {
    const o = clustering.validateOptions({ k: 2, warmup: 10 }, P);
    const pts = twoBlobs(60);
    const r = clustering.process(clustering.initialState(o, "k1"), inputs(pts), o);
    expect(r.outputs.slice(0, 9).every((x) => x.length === 0)).toBe(true);
    const first = r.outputs[9]![0]!.data as ClusterAssignment;
    expect(first.centroids).toHaveLength(2);
    const labels = r.outputs.slice(9).map((x) => (x[0]!.data as ClusterAssignment).cluster);
    const even = new Set(labels.filter((_, i) => (i + 9) % 2 === 0));
    const odd = new Set(labels.filter((_, i) => (i + 9) % 2 === 1));
    expect(even.size).toBe(1);
    expect(odd.size).toBe(1);
    expect([...even][0]).not.toBe([...odd][0]);
    expect(r.state.counts.reduce((a, b) => a + b)).toBe(60);
    expect(JSON.parse(JSON.stringify(r.state))).toEqual(r.state);
  });

  it("is deterministic, and batch boundaries do not change the outputs", () => {
    const o = clustering.validateOptions({ k: 3, mode: "window", window: 30, refit_every: 7, emit_centroids: "always" }, P);
    const pts = twoBlobs(80).map((p, i) => (i % 5 === 0 ? [p[0]! + 40, p[1]!] : p));
    const all = inputs(pts);
    const once = clustering.process(clustering.initialState(o, "k1"), all, o);
    const again = clustering.process(clustering.initialState(o, "k1"), all, o);
    expect(JSON.stringify(again)).toBe(JSON.stringify(once));
    let state = clustering.initialState(o, "k1");
    const split: unknown[] = [];
    for (let i = 0; i < all.length; i += 13) {
      const r = clustering.process(JSON.parse(JSON.stringify(state)), all.slice(i, i + 13), o);
      state = r.state;
      split.push(...r.outputs);
    }
    expect(JSON.stringify(split)).toBe(JSON.stringify(once.outputs));
    expect(once.state.modelVersion).toBeGreaterThan(1);
  });

  it("rejects a point of the wrong dimension, naming the input", () => {
    const o = clustering.validateOptions({ k: 2 }, P);
    expect(() => clustering.process(clustering.initialState(o, "k1"), inputs([[1, 2], [1, 2, 3]]), o)).toThrow(InvalidEventError);
    expect(() => clustering.process(clustering.initialState(o, "k1"), inputs([[1, 2], { point: [1, "x"] }]), o)).toThrow(/inputs\[1\]\.data\.point\[1\]/);
  });
});
