import { describe, expect, it } from "vitest";
import { adjustedRandIndex, kmeans, kmeansPlusPlus, miniBatchStep } from "./kmeans.js";
import { createRandom } from "./random.js";

function blobs(perBlob: number, centres: number[][], spread: number, seed: number): { points: Float64Array; labels: number[]; d: number } {
  const d = centres[0]!.length;
  const rng = createRandom(seed);
  const points = new Float64Array(perBlob * centres.length * d);
  const labels: number[] = [];
  let i = 0;
  for (let p = 0; p < perBlob; p++) {
    centres.forEach((c, label) => {
      for (let j = 0; j < d; j++) points[i * d + j] = c[j]! + rng.normal() * spread;
      labels.push(label);
      i++;
    });
  }
  return { points, labels, d };
}

describe("kmeans (unit)", () => {
  it("finds the two obvious clusters of a tiny data set, with the exact centres and inertia", () => {
    const points = Float64Array.from([0, 0, 0, 1, 10, 10, 10, 11]);
    const r = kmeans(points, 4, 2, { k: 2, seed: 1 });
    const centres = [Array.from(r.centroids.subarray(0, 2)), Array.from(r.centroids.subarray(2, 4))].sort((a, b) => a[0]! - b[0]!);
    expect(centres).toEqual([
      [0, 0.5],
      [10, 10.5],
    ]);
    expect(r.inertia).toBeCloseTo(1, 12);
    expect(r.assignments[0]).toBe(r.assignments[1]);
    expect(r.assignments[2]).toBe(r.assignments[3]);
    expect(r.assignments[0]).not.toBe(r.assignments[2]);
    expect(r.converged).toBe(true);
  });

  it("recovers well-separated blobs (ARI 1) and is deterministic for a seed", () => {
    const { points, labels, d } = blobs(200, [[0, 0, 0], [8, 0, 0], [0, 8, 0], [0, 0, 8]], 0.7, 5);
    const n = labels.length;
    const a = kmeans(points, n, d, { k: 4, seed: 9 });
    const b = kmeans(points, n, d, { k: 4, seed: 9 });
    expect(Array.from(a.centroids)).toEqual(Array.from(b.centroids));
    expect(adjustedRandIndex(labels, a.assignments)).toBeCloseTo(1, 6);
  });

  it("gives the same result as plain Lloyd from the same start (the bounds only skip work)", () => {
    const { points, labels, d } = blobs(150, [[0, 0], [3, 0], [0, 3], [3, 3], [1.5, 1.5]], 1.0, 11);
    const n = labels.length;
    const initial = kmeansPlusPlus(points, n, d, 5, createRandom(3));
    const fast = kmeans(points, n, d, { k: 5, initial, tolerance: 0 });
    // Plain Lloyd, written out.
    const c = Float64Array.from(initial);
    const assign = new Int32Array(n);
    for (let it = 0; it < 300; it++) {
      for (let i = 0; i < n; i++) {
        let best = 0;
        let bd = Infinity;
        for (let q = 0; q < 5; q++) {
          const dx = points[i * 2]! - c[q * 2]!;
          const dy = points[i * 2 + 1]! - c[q * 2 + 1]!;
          if (dx * dx + dy * dy < bd) {
            bd = dx * dx + dy * dy;
            best = q;
          }
        }
        assign[i] = best;
      }
      const sums = new Float64Array(10);
      const counts = new Float64Array(5);
      for (let i = 0; i < n; i++) {
        counts[assign[i]!]!++;
        sums[assign[i]! * 2] = sums[assign[i]! * 2]! + points[i * 2]!;
        sums[assign[i]! * 2 + 1] = sums[assign[i]! * 2 + 1]! + points[i * 2 + 1]!;
      }
      for (let q = 0; q < 5; q++) if (counts[q]! > 0) for (let j = 0; j < 2; j++) c[q * 2 + j] = sums[q * 2 + j]! / counts[q]!;
    }
    expect(Array.from(fast.assignments)).toEqual(Array.from(assign));
    Array.from(fast.centroids).forEach((v, i) => expect(v).toBeCloseTo(c[i]!, 9));
  });

  it("mini-batch step moves the nearest centre to the running mean of its points", () => {
    const centroids = Float64Array.from([0, 0, 10, 10]);
    const counts = Float64Array.from([1, 1]);
    miniBatchStep([2, 2], centroids, counts, 2, 2);
    expect(Array.from(centroids)).toEqual([1, 1, 10, 10]);
    miniBatchStep([4, 4], centroids, counts, 2, 2);
    expect(Array.from(centroids)).toEqual([2, 2, 10, 10]);
    expect(Array.from(counts)).toEqual([3, 1]);
  });

  it("adjusted Rand index is 1 for a renamed partition and near 0 for a random one", () => {
    expect(adjustedRandIndex([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 9, 9])).toBe(1);
    const rng = createRandom(2);
    const a = Array.from({ length: 3000 }, () => rng.int(3));
    const b = Array.from({ length: 3000 }, () => rng.int(3));
    expect(Math.abs(adjustedRandIndex(a, b))).toBeLessThan(0.02);
  });
});
