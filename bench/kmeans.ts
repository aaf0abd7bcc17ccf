/**
 * k-means: FlexCore's (processors/ml/kmeans.ts: greedy k-means++, Hamerly-bounded Lloyd on
 * a flat Float64Array) against ml-kmeans on the same data, k and seed.
 * `kmeansResults()` is meant for the `processors` suite; `suite` runs it alone
 * (`npm run bench -- kmeans`).
 */
import { kmeans as mlKmeans } from "ml-kmeans";
import { createRandom, inertia, kmeans } from "../processors/index.js";
import { ratio, runTasks } from "./harness.js";
import type { BenchResult, Suite } from "./harness.js";

export interface KmeansBenchOptions {
  /** @default 100000 */
  readonly n?: number;
  /** @default 8 */
  readonly d?: number;
  /** @default 8 */
  readonly k?: number;
  /** Seed of the data and of both k-means++ runs. @default 1 */
  readonly seed?: number;
  /** Measured runs each. @default 5 */
  readonly iterations?: number;
  readonly log?: (line: string) => void;
}

/** Speed-up of ours over ml-kmeans the issue asks for. */
export const KMEANS_SPEEDUP_GOAL = 2;
/** Spread of the blobs around their centres, relative to the [-10, 10] box of centres. */
const BLOB_SD = 2.5;

/** `k` Gaussian blobs in `d` dimensions: centres uniform in [-10, 10]^d, sd {@link BLOB_SD}. */
export function blobData(n: number, d: number, k: number, seed: number): { flat: Float64Array; rows: number[][]; labels: Int32Array } {
  const rng = createRandom(seed);
  const centres = Array.from({ length: k }, () => Array.from({ length: d }, () => rng.next() * 20 - 10));
  const flat = new Float64Array(n * d);
  const rows: number[][] = [];
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const c = rng.int(k);
    labels[i] = c;
    const row: number[] = [];
    for (let j = 0; j < d; j++) {
      const v = centres[c]![j]! + rng.normal() * BLOB_SD;
      flat[i * d + j] = v;
      row.push(v);
    }
    rows.push(row);
  }
  return { flat, rows, labels };
}

export async function kmeansResults(options: KmeansBenchOptions = {}): Promise<BenchResult[]> {
  const n = options.n ?? 100_000;
  const d = options.d ?? 8;
  const k = options.k ?? 8;
  const seed = options.seed ?? 1;
  const { flat, rows } = blobData(n, d, k, seed);
  let ours = { inertia: 0, iterations: 0 };
  let theirs = { inertia: 0, iterations: 0 };
  const [flex, ml] = await runTasks(
    [
      {
        name: "kmeans.flexcore",
        unit: "ms",
        fn: () => {
          const t = performance.now();
          const r = kmeans(flat, n, d, { k, seed });
          const ms = performance.now() - t;
          ours = { inertia: r.inertia, iterations: r.iterations };
          return ms;
        },
        extra: { n, d, k, seed },
      },
      {
        name: "kmeans.ml-kmeans",
        unit: "ms",
        fn: () => {
          const t = performance.now();
          const r = mlKmeans(rows, k, { seed, initialization: "kmeans++" });
          const ms = performance.now() - t;
          const assignments = Int32Array.from(r.clusters);
          theirs = { inertia: inertia(flat, n, d, Float64Array.from(r.centroids.flat()), assignments), iterations: r.iterations };
          return ms;
        },
        extra: { n, d, k, seed, baseline: true },
      },
    ],
    { iterations: options.iterations ?? 5, ...(options.log ? { log: options.log } : {}) },
  );
  const inertiaRatio = ours.inertia / theirs.inertia;
  return [
    { ...flex!, extra: { ...flex!.extra, inertia: ours.inertia, lloydIterations: ours.iterations } },
    { ...ml!, extra: { ...ml!.extra, inertia: theirs.inertia, lloydIterations: theirs.iterations } },
    ratio("kmeans.speedup", ml!, flex!, KMEANS_SPEEDUP_GOAL),
    { name: "kmeans.inertia-ratio", unit: "x", median: inertiaRatio, samples: [inertiaRatio], extra: { of: "kmeans.flexcore", to: "kmeans.ml-kmeans", goal: "≤ 1", met: inertiaRatio <= 1 } },
  ];
}

export const suite: Suite = {
  name: "kmeans",
  description: "k-means, 100,000 points × 8 dims, k = 8: FlexCore's against ml-kmeans (same data, same seed)",
  run: async (ctx) => kmeansResults({ log: ctx.log }),
};
