/**
 * `clustering`: k-means per key. Two modes:
 * - `streaming` (default): after `warmup` points, k-means++ and Lloyd on them, then
 *   mini-batch k-means updates the centres with every point (online, River-style).
 * - `window`: k-means over a sliding window of the last `window` points, refitted every
 *   `refit_every` points, warm-started from the previous centres so cluster ids stay put.
 * Each point gets its cluster and its distance to the centre; centres are emitted when
 * they change (`emit_centroids`).
 */
import { kmeans, miniBatchStep, nearest } from "../ml/kmeans.js";
import { createRandom, seedFor } from "../ml/random.js";
import type { ProcessorDefinition, ProcessorInput, ProcessorOutput } from "../types.js";
import { compileSchema, pathAt } from "../../streams/index.js";
import type { SchemaIssue } from "../../streams/index.js";
import { camelKeys, checkBetween, checkOptions, enumSchema, integerSchema, objectSchema, SEED_SCHEMA, throwIssues } from "../options.js";
import { badInput, isRecord, readVector } from "./input-checks.js";

/** Options of the `clustering` processor (validated, frozen). In `flexcore.yaml` the keys are snake_case (`refit_every` for `refitEvery`). */
export interface ClusteringOptions {
  /** Number of clusters. @default 3 */
  readonly k: number;
  /** @default "streaming" */
  readonly mode: "streaming" | "window";
  /** Points held in `window` mode. @default 500 */
  readonly window: number;
  /** Points buffered before the first fit (≥ k). @default 10 × k */
  readonly warmup: number;
  /** `window` mode: refit after this many points. @default 50 */
  readonly refitEvery: number;
  /** Lloyd iterations per fit at most. @default 100 */
  readonly maxIterations: number;
  /** k-means++ starts per cold fit (the lowest inertia wins); refits in `window` mode warm-start instead. @default 3 */
  readonly nInit: number;
  /** When outputs carry the centres. @default "on-change" (after a fit; every point in streaming mode would be "always") */
  readonly emitCentroids: "always" | "on-change" | "never";
  /** Seed of k-means++ (mixed with the key). @default 42 */
  readonly seed: number;
}

/** Per-key state (JSON). */
export interface ClusteringState {
  /** Dimension fixed by the first point; `0` before it. */
  d: number;
  /** PRNG state. */
  rng: number;
  /** Buffered points: warm-up in streaming mode, the sliding window in window mode. */
  buffer: number[][];
  /** `k × d` once fitted. */
  centroids: number[][] | null;
  /** Points won per centre (mini-batch learning rates). */
  counts: number[];
  sinceFit: number;
  /** Increments on every fit. */
  modelVersion: number;
  seen: number;
}

/** `data` of a `clustering.assigned` output. */
export interface ClusterAssignment {
  readonly cluster: number;
  /** Euclidean distance to the centre. */
  readonly distance: number;
  readonly modelVersion: number;
  readonly centroids?: number[][];
}

export const CLUSTERING_OUTPUT = "ClusterAssigned";

const MAX_WINDOW = 1_000_000;
const OPTIONS = compileSchema<{ k: number; window: number; warmup?: number }>(objectSchema({
  k: integerSchema(3, 2, 1000),
  mode: enumSchema(["streaming", "window"], "streaming"),
  window: integerSchema(500, 2, MAX_WINDOW),
  warmup: integerSchema(undefined, 2, MAX_WINDOW),
  refit_every: integerSchema(50, 1),
  max_iterations: integerSchema(100, 1, 10_000),
  n_init: integerSchema(3, 1, 100),
  emit_centroids: enumSchema(["always", "on-change", "never"], "on-change"),
  seed: SEED_SCHEMA,
}));

/** Accepts `[x, y, ...]` or `{ point | features | vector: [...] }`. */
export function readPoint(data: unknown, field: string, d: number): number[] {
  if (Array.isArray(data)) return readVector(data, field, d || undefined);
  if (isRecord(data)) {
    for (const name of ["point", "features", "vector"]) {
      if (data[name] !== undefined) return readVector(data[name], `${field}.${name}`, d || undefined);
    }
  }
  throw badInput(field, data, "an array of numbers or { point: number[] }");
}

function fit(state: ClusteringState, options: ClusteringOptions, warm: boolean): void {
  const n = state.buffer.length;
  const d = state.d;
  const flat = new Float64Array(n * d);
  state.buffer.forEach((p, i) => flat.set(p, i * d));
  const rng = createRandom(state.rng);
  const initial = warm && state.centroids ? Float64Array.from(state.centroids.flat()) : undefined;
  const result = kmeans(flat, n, d, { k: options.k, maxIterations: options.maxIterations, restarts: options.nInit, seed: rng.next() * 0xffffffff, ...(initial ? { initial } : {}) });
  state.rng = rng.state;
  const centroids: number[][] = [];
  for (let c = 0; c < options.k; c++) centroids.push(Array.from(result.centroids.subarray(c * d, c * d + d)));
  const counts = new Array<number>(options.k).fill(0);
  for (const a of result.assignments) counts[a]!++;
  state.centroids = centroids;
  state.counts = counts;
  state.sinceFit = 0;
  state.modelVersion++;
}

export const clustering: ProcessorDefinition<ClusteringOptions, ClusteringState> = {
  kind: "clustering",
  description: "k-means per key: k-means++ and Lloyd over a sliding window, or streaming mini-batch k-means; emits each point's cluster and the centres.",
  validateOptions(raw, path) {
    const o = checkOptions(OPTIONS, raw, path);
    // The window holds at least k points, and the warm-up lies between the two.
    const issues: SchemaIssue[] = [];
    checkBetween(issues, pathAt(path, "window"), o.window, o.k, MAX_WINDOW);
    const warmup = o.warmup ?? Math.min(10 * o.k, o.window);
    checkBetween(issues, pathAt(path, "warmup"), warmup, o.k, o.window);
    throwIssues(issues);
    return Object.freeze(camelKeys<ClusteringOptions>({ ...o, warmup }));
  },
  optionsSchema: OPTIONS.schema,
  initialState(options, key) {
    return { d: 0, rng: seedFor(options.seed, key), buffer: [], centroids: null, counts: [], sinceFit: 0, modelVersion: 0, seen: 0 };
  },
  process(prev, inputs: readonly ProcessorInput[], options) {
    const state: ClusteringState = structuredClone(prev);
    const outputs = inputs.map((input, i): ProcessorOutput[] => {
      const point = readPoint(input.data, `inputs[${i}].data`, state.d);
      if (state.d === 0) state.d = point.length;
      state.seen++;
      const d = state.d;
      const k = options.k;
      let changed = false;
      if (options.mode === "window") {
        state.buffer.push(point);
        if (state.buffer.length > options.window) state.buffer.shift();
        state.sinceFit++;
        if ((state.centroids === null && state.buffer.length >= options.warmup) || (state.centroids !== null && state.sinceFit >= options.refitEvery)) {
          fit(state, options, true);
          changed = true;
        }
      } else if (state.centroids === null) {
        state.buffer.push(point);
        if (state.buffer.length >= options.warmup) {
          fit(state, options, false);
          state.buffer = [];
          changed = true;
        }
      }
      if (state.centroids === null) return [];
      const centroids = Float64Array.from(state.centroids.flat());
      let hit: { index: number; distance: number };
      if (options.mode === "streaming" && !changed) {
        const counts = Float64Array.from(state.counts);
        hit = miniBatchStep(point, centroids, counts, k, d);
        state.counts = Array.from(counts);
        state.centroids = state.centroids.map((_, c) => Array.from(centroids.subarray(c * d, c * d + d)));
      } else {
        hit = nearest(point, 0, centroids, k, d);
      }
      const emit = options.emitCentroids === "always" || (options.emitCentroids === "on-change" && changed);
      const data: ClusterAssignment = { cluster: hit.index, distance: Math.sqrt(hit.distance), modelVersion: state.modelVersion, ...(emit ? { centroids: state.centroids } : {}) };
      return [{ type: CLUSTERING_OUTPUT, data }];
    });
    return { state, outputs };
  },
};
