/**
 * k-means on flat `Float64Array`s (row-major, `n × d`): greedy k-means++ seeding,
 * Lloyd iterations with Hamerly's bounds (most points skip the distance scan once
 * clusters settle), and Sculley's mini-batch update for streams.
 * Everything is driven by a seeded {@link Random}, so the same data and seed give the
 * same centroids bit for bit.
 */
import { createRandom } from "./random.js";
import type { Random } from "./random.js";

/** Options of {@link kmeans}. */
export interface KMeansOptions {
  /** Number of clusters, `1 ≤ k ≤ n`. */
  readonly k: number;
  /** Seed of the k-means++ sampling. @default 42 */
  readonly seed?: number;
  /** Lloyd iterations at most. @default 100 */
  readonly maxIterations?: number;
  /**
   * Stop when the largest squared centroid move is at most `tolerance × mean feature
   * variance` (scale-free, as scikit-learn). @default 1e-6
   */
  readonly tolerance?: number;
  /** Start from these centroids (`k × d`) instead of k-means++ (warm start). */
  readonly initial?: Float64Array;
  /**
   * Independent k-means++ starts (ignored with `initial`). Each start runs
   * {@link SCREEN_ITERATIONS} Lloyd iterations; only the one with the lowest inertia is run
   * to convergence. A single start lands in a poor local optimum (two centres sharing a
   * blob) often enough to matter; screening makes extra starts cost a few iterations
   * each, not a full run. @default 3
   */
  readonly restarts?: number;
}

export interface KMeansResult {
  /** `k × d`, row-major. */
  readonly centroids: Float64Array;
  /** Cluster of each point. */
  readonly assignments: Int32Array;
  /** Sum of squared distances of points to their centroid. */
  readonly inertia: number;
  readonly iterations: number;
  readonly converged: boolean;
}

export const DEFAULT_KMEANS_SEED = 42;
export const DEFAULT_MAX_ITERATIONS = 100;
export const DEFAULT_TOLERANCE = 1e-6;
export const DEFAULT_RESTARTS = 3;
/** Lloyd iterations each start gets before the best one is chosen. */
export const SCREEN_ITERATIONS = 8;

function sqDist(a: Float64Array, ai: number, b: Float64Array, bi: number, d: number): number {
  let s = 0;
  for (let j = 0; j < d; j++) {
    const t = a[ai + j]! - b[bi + j]!;
    s += t * t;
  }
  return s;
}

/**
 * Greedy k-means++ (Arthur & Vassilvitskii 2007, with the `2 + ⌊ln k⌋` local trials of
 * scikit-learn): each new centre is the best of a few D²-sampled candidates, which
 * gives markedly lower starting inertia than plain k-means++ for a few extra passes.
 */
export function kmeansPlusPlus(points: Float64Array, n: number, d: number, k: number, rng: Random): Float64Array {
  const centroids = new Float64Array(k * d);
  const trials = 2 + Math.floor(Math.log(k));
  const first = rng.int(n);
  centroids.set(points.subarray(first * d, first * d + d), 0);
  const closest = new Float64Array(n);
  let potential = 0;
  for (let i = 0; i < n; i++) {
    closest[i] = sqDist(points, i * d, centroids, 0, d);
    potential += closest[i]!;
  }
  const candidateDist = new Float64Array(n);
  const bestDist = new Float64Array(n);
  for (let c = 1; c < k; c++) {
    let bestPotential = Infinity;
    let bestIndex = -1;
    for (let t = 0; t < trials; t++) {
      // D² sampling; when all points coincide with centres, fall back to uniform.
      let candidate = n - 1;
      if (potential > 0) {
        let r = rng.next() * potential;
        for (let i = 0; i < n; i++) {
          r -= closest[i]!;
          if (r < 0) {
            candidate = i;
            break;
          }
        }
      } else {
        candidate = rng.int(n);
      }
      let candPotential = 0;
      const ci = candidate * d;
      for (let i = 0; i < n; i++) {
        const dist = Math.min(closest[i]!, sqDist(points, i * d, points, ci, d));
        candidateDist[i] = dist;
        candPotential += dist;
      }
      if (candPotential < bestPotential) {
        bestPotential = candPotential;
        bestIndex = candidate;
        bestDist.set(candidateDist);
      }
    }
    centroids.set(points.subarray(bestIndex * d, bestIndex * d + d), c * d);
    closest.set(bestDist);
    potential = bestPotential;
  }
  return centroids;
}

/** Index of the nearest centroid and the squared distance to it. */
export function nearest(point: Float64Array | readonly number[], offset: number, centroids: Float64Array, k: number, d: number): { index: number; distance: number } {
  let best = 0;
  let bestD = Infinity;
  for (let c = 0; c < k; c++) {
    let s = 0;
    const base = c * d;
    for (let j = 0; j < d; j++) {
      const t = point[offset + j]! - centroids[base + j]!;
      s += t * t;
    }
    if (s < bestD) {
      bestD = s;
      best = c;
    }
  }
  return { index: best, distance: bestD };
}

function meanVariance(points: Float64Array, n: number, d: number): number {
  let total = 0;
  for (let j = 0; j < d; j++) {
    let mean = 0;
    for (let i = 0; i < n; i++) mean += points[i * d + j]!;
    mean /= n;
    let v = 0;
    for (let i = 0; i < n; i++) {
      const t = points[i * d + j]! - mean;
      v += t * t;
    }
    total += v / n;
  }
  return total / d;
}

/**
 * Lloyd's k-means with Hamerly's (2010) bounds: per point an upper bound on the distance
 * to its centre and a lower bound on the second nearest; a point is rescanned only when
 * the bounds cross. Results equal plain Lloyd's (same assignments each iteration).
 */
export function kmeans(points: Float64Array, n: number, d: number, options: KMeansOptions): KMeansResult {
  const restarts = options.initial ? 1 : (options.restarts ?? DEFAULT_RESTARTS);
  if (restarts <= 1) return lloyd(points, n, d, options);
  const maxIterations = options.maxIterations ?? DEFAULT_MAX_ITERATIONS;
  const screen = Math.min(SCREEN_ITERATIONS, maxIterations);
  const rng = createRandom(options.seed ?? DEFAULT_KMEANS_SEED);
  let best: KMeansResult | null = null;
  for (let r = 0; r < restarts; r++) {
    const result = lloyd(points, n, d, { ...options, seed: (rng.next() * 0x100000000) >>> 0, maxIterations: screen });
    if (best === null || result.inertia < best.inertia) best = result;
  }
  if (best!.converged || screen >= maxIterations) return best!;
  const rest = lloyd(points, n, d, { ...options, initial: best!.centroids, maxIterations: maxIterations - screen });
  return { ...rest, iterations: rest.iterations + screen };
}

function lloyd(points: Float64Array, n: number, d: number, options: KMeansOptions): KMeansResult {
  const { k } = options;
  if (!Number.isInteger(k) || k < 1 || k > n) throw new RangeError(`k must be an integer in [1, ${n}], got ${k}`);
  if (points.length < n * d) throw new RangeError(`points holds ${points.length} numbers, expected n × d = ${n * d}`);
  const maxIterations = options.maxIterations ?? DEFAULT_MAX_ITERATIONS;
  const tol = (options.tolerance ?? DEFAULT_TOLERANCE) * meanVariance(points, n, d);
  const centroids = options.initial ? Float64Array.from(options.initial) : kmeansPlusPlus(points, n, d, k, createRandom(options.seed ?? DEFAULT_KMEANS_SEED));

  const assignments = new Int32Array(n);
  const upper = new Float64Array(n);
  const lower = new Float64Array(n);
  const sums = new Float64Array(k * d);
  const counts = new Float64Array(k);
  const moved = new Float64Array(k);
  const halfGap = new Float64Array(k);

  // Initial full assignment.
  for (let i = 0; i < n; i++) {
    let b1 = Infinity;
    let b2 = Infinity;
    let best = 0;
    for (let c = 0; c < k; c++) {
      const s = sqDist(points, i * d, centroids, c * d, d);
      if (s < b1) {
        b2 = b1;
        b1 = s;
        best = c;
      } else if (s < b2) b2 = s;
    }
    assignments[i] = best;
    upper[i] = Math.sqrt(b1);
    lower[i] = Math.sqrt(b2);
  }

  let iterations = 0;
  let converged = false;
  const reseeded = new Set<number>();
  while (iterations < maxIterations) {
    iterations++;
    reseeded.clear();
    // Update step.
    sums.fill(0);
    counts.fill(0);
    for (let i = 0; i < n; i++) {
      const c = assignments[i]!;
      counts[c]!++;
      const base = c * d;
      const pi = i * d;
      for (let j = 0; j < d; j++) sums[base + j] = sums[base + j]! + points[pi + j]!;
    }
    let maxShift = 0;
    for (let c = 0; c < k; c++) {
      const base = c * d;
      let shift = 0;
      if (counts[c]! > 0) {
        for (let j = 0; j < d; j++) {
          const next = sums[base + j]! / counts[c]!;
          const t = next - centroids[base + j]!;
          shift += t * t;
          centroids[base + j] = next;
        }
      } else {
        // Empty cluster: move it onto the point worst served by its centre.
        let worst = -1;
        for (let i = 0; i < n; i++) if (!reseeded.has(i) && (worst < 0 || upper[i]! > upper[worst]!)) worst = i;
        reseeded.add(worst);
        for (let j = 0; j < d; j++) {
          const t = points[worst * d + j]! - centroids[base + j]!;
          shift += t * t;
          centroids[base + j] = points[worst * d + j]!;
        }
      }
      moved[c] = Math.sqrt(shift);
      if (shift > maxShift) maxShift = shift;
    }
    if (maxShift <= tol) {
      converged = true;
      break;
    }
    // Bounds after the move.
    let m1 = -1;
    let m2 = -1;
    for (let c = 0; c < k; c++) {
      if (m1 < 0 || moved[c]! > moved[m1]!) {
        m2 = m1;
        m1 = c;
      } else if (m2 < 0 || moved[c]! > moved[m2]!) m2 = c;
    }
    for (let c = 0; c < k; c++) {
      let s = Infinity;
      for (let o = 0; o < k; o++) if (o !== c) s = Math.min(s, sqDist(centroids, c * d, centroids, o * d, d));
      halfGap[c] = k > 1 ? Math.sqrt(s) / 2 : Infinity;
    }
    let changed = 0;
    for (let i = 0; i < n; i++) {
      const a = assignments[i]!;
      upper[i] = upper[i]! + moved[a]!;
      lower[i] = lower[i]! - (a === m1 ? (m2 >= 0 ? moved[m2]! : 0) : moved[m1]!);
      const bound = Math.max(halfGap[a]!, lower[i]!);
      if (upper[i]! <= bound) continue;
      upper[i] = Math.sqrt(sqDist(points, i * d, centroids, a * d, d));
      if (upper[i]! <= bound) continue;
      let b1 = Infinity;
      let b2 = Infinity;
      let best = a;
      for (let c = 0; c < k; c++) {
        const s = sqDist(points, i * d, centroids, c * d, d);
        if (s < b1) {
          b2 = b1;
          b1 = s;
          best = c;
        } else if (s < b2) b2 = s;
      }
      if (best !== a) {
        assignments[i] = best;
        changed++;
      }
      upper[i] = Math.sqrt(b1);
      lower[i] = Math.sqrt(b2);
    }
    if (changed === 0) {
      converged = true;
      break;
    }
  }
  return { centroids, assignments, inertia: inertia(points, n, d, centroids, assignments), iterations, converged };
}

/** Sum of squared distances of points to their assigned centroid. */
export function inertia(points: Float64Array, n: number, d: number, centroids: Float64Array, assignments: Int32Array): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += sqDist(points, i * d, centroids, assignments[i]! * d, d);
  return s;
}

/**
 * One mini-batch k-means step (Sculley 2010) for one point: the nearest centre moves
 * towards it with rate `1 / count`, so each centre is the running mean of the points it
 * won. Mutates `centroids` and `counts`; returns the cluster and the squared distance
 * before the move.
 */
export function miniBatchStep(point: readonly number[], centroids: Float64Array, counts: Float64Array, k: number, d: number): { index: number; distance: number } {
  const hit = nearest(point, 0, centroids, k, d);
  const c = hit.index;
  counts[c] = counts[c]! + 1;
  const eta = 1 / counts[c]!;
  const base = c * d;
  for (let j = 0; j < d; j++) centroids[base + j] = centroids[base + j]! + eta * (point[j]! - centroids[base + j]!);
  return hit;
}

/**
 * Adjusted Rand index of two labelings (Hubert & Arabie 1985): 1 for identical
 * partitions up to renaming, about 0 for chance.
 */
export function adjustedRandIndex(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = a.length;
  const table = new Map<string, number>();
  const rows = new Map<number, number>();
  const cols = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const x = a[i]!;
    const y = b[i]!;
    const key = `${x}|${y}`;
    table.set(key, (table.get(key) ?? 0) + 1);
    rows.set(x, (rows.get(x) ?? 0) + 1);
    cols.set(y, (cols.get(y) ?? 0) + 1);
  }
  const c2 = (m: number): number => (m * (m - 1)) / 2;
  let index = 0;
  for (const v of table.values()) index += c2(v);
  let sa = 0;
  for (const v of rows.values()) sa += c2(v);
  let sb = 0;
  for (const v of cols.values()) sb += c2(v);
  const expected = (sa * sb) / c2(n);
  const max = (sa + sb) / 2;
  return max === expected ? 1 : (index - expected) / (max - expected);
}
