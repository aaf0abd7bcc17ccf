/**
 * `anomaly`: online anomaly detection per key over a sliding window.
 *
 * Methods (option `method`):
 * - `zscore`: |x − mean| / std over the last `window` points (sliding Welford sums, O(1)).
 * - `robust`: 0.6745·|x − median| / MAD over the window (sorted window, O(window)).
 * - `ewma`: |x − m| / s with exponentially weighted mean and variance (`alpha`).
 * - `iforest`: isolation forest (Liu, Ting & Zhou 2008) fitted on the window every
 *   `refit_every` points, over the features (level, first difference); score in (0, 1).
 *
 * With `season: P` the detector sees the residual x − b[t mod P] against a seasonal baseline:
 * one exponentially weighted level per phase of the period (gain `season_alpha`). The
 * baseline is robust: it is seeded with the per-phase median of the first
 * {@link SEED_SEASONS} seasons (nothing is scored before), and every later update is
 * clipped to ±{@link BASELINE_CLIP}·σ̂ of the residuals (σ̂ from their clipped mean absolute
 * value), so a spike, flagged or missed, moves it by a bounded amount and does not come back
 * as a false flag one season later. Plain seasonal differencing (x − x[t−P]) would compare
 * against one noisy point (residual variance 2σ²) and replay every missed spike. A flagged
 * point enters the detector's window clamped to the threshold (winsorised), so one spike does
 * not inflate the spread either.
 *
 * Input: an event whose data is a number, or an object holding a number at `field`
 * (a dot path, default `value`). Anything else is a poison message (dead-lettered).
 * Output `AnomalyScored` `{ value, score, flagged, method, reason, expected, seq, time }`
 * for flagged points only (`emit: flagged`, the default) or every point (`emit: all`).
 * Deterministic: the forest's random draws are seeded from `seed`, the key and the point
 * count, so a replay gives byte-identical outputs.
 */
import { compileSchema, InvalidEventError, issue, pathAt } from "../../streams/index.js";
import type { SchemaIssue } from "../../streams/index.js";
import { booleanSchema, camelKeys, checkBetween, checkOptions, enumSchema, integerSchema, numberSchema, objectSchema, SEED_SCHEMA, throwIssues } from "../options.js";
import type { ProcessorDefinition, ProcessorInput, ProcessorOutput, ProcessResult } from "../types.js";

export const ANOMALY_METHODS = ["zscore", "robust", "ewma", "iforest"] as const;
export type AnomalyMethod = (typeof ANOMALY_METHODS)[number];

/** Default flag thresholds per method (|z| for the z-scores, the isolation score for `iforest`). */
export const DEFAULT_THRESHOLDS: Readonly<Record<AnomalyMethod, number>> = { zscore: 3, robust: 3.5, ewma: 3, iforest: 0.8 };
export const DEFAULT_WINDOW = 100;
export const DEFAULT_MIN_POINTS = 10;
export const DEFAULT_ALPHA = 0.1;
export const DEFAULT_SEASON_ALPHA = 0.1;
export const DEFAULT_TREES = 50;
export const DEFAULT_SAMPLE_SIZE = 128;
// A score is capped so that a spread of 0 (a constant window) stays JSON-serialisable.
const MAX_SCORE = 1e6;
// 0.6745 = Φ⁻¹(0.75): makes the MAD a consistent estimator of σ for normal data.
const MAD_TO_SIGMA = 0.6745;
/** Seasonal baseline updates are clipped to this many σ̂ of the residuals (Huber-style). */
export const BASELINE_CLIP = 2;
// Residuals feeding σ̂ are clipped to this many σ̂, so one spike cannot inflate it.
const SCALE_CLIP = 3;
// √(π/2): the mean absolute value of N(0, σ²) is σ·√(2/π).
const ABS_TO_SIGMA = Math.sqrt(Math.PI / 2);
// Median of the range of three N(0, σ²) draws, in σ.
const RANGE3_TO_SIGMA = 1.588;
/** Seasons that seed the seasonal baseline (median of three per phase) before anything is scored. */
export const SEED_SEASONS = 3;

/** Validated options of the `anomaly` processor. */
export interface AnomalyOptions {
  /** @default "zscore" */
  readonly method: AnomalyMethod;
  /** Dot path of the number inside the event data. @default "value" */
  readonly field: string;
  /** Points in the sliding window. @default 100 */
  readonly window: number;
  /** Flag threshold. @default 3 (zscore, ewma), 3.5 (robust), 0.8 (iforest) */
  readonly threshold: number;
  /** Points seen before any flag is raised. @default 10 (at most `window`) */
  readonly minPoints: number;
  /** EWMA smoothing factor in (0, 1). @default 0.1 */
  readonly alpha: number;
  /** Seasonal period in points: the detector scores residuals against a per-phase baseline; 0 turns it off. @default 0 */
  readonly season: number;
  /** Gain of the per-phase seasonal baseline in (0, 1) (about 1/`season_alpha` seasons of memory). @default 0.1 */
  readonly seasonAlpha: number;
  /** `flagged`: only anomalies are emitted; `all`: every score. @default "flagged" */
  readonly emit: "flagged" | "all";
  /** Isolation trees. @default 50 */
  readonly trees: number;
  /** Points per isolation tree. @default min(128, window) */
  readonly sampleSize: number;
  /** Refit the forest every this many points. @default window */
  readonly refitEvery: number;
  /** @default 42 */
  readonly seed: number;
  /** Clamp flagged points before they enter the window. @default true */
  readonly winsorize: boolean;
}

/** Per-key state: plain JSON. */
export interface AnomalyState {
  /** Points scored so far. */
  n: number;
  /** The window as a ring of detector inputs (after seasonal differencing). */
  ring: number[];
  head: number;
  /** Sliding mean and sum of squared deviations of the ring (zscore). */
  mean: number;
  m2: number;
  /** The ring sorted (robust). */
  sorted: number[];
  /** EWMA mean and variance. */
  ewMean: number;
  ewVar: number;
  /**
   * Seasonal baseline: one level per phase of the period (phase = n mod season). While the
   * first seasons seed it, it holds up to two seasons of raw values.
   */
  baseline: number[];
  /** Clipped mean absolute seasonal residual, exponentially weighted (σ̂ = absDev·√(π/2)). */
  absDev: number;
  /** Previous cleaned value, for the first-difference feature of the forest. */
  prev: number;
  /** Training rows of the current forest, flattened [level, diff, level, diff, ...], and when it was fitted. */
  fitRows: number[];
  fitAt: number;
}

/** What one point scored. */
export interface PointScore {
  readonly score: number;
  readonly flagged: boolean;
  /** The detector's expected value of `value` (mean, median, EWMA) when it has one. */
  readonly expected: number | null;
  /** False while the window holds fewer than `minPoints` points. */
  readonly ready: boolean;
}

const MAX_SEASON = 100_000;
const OPTIONS = compileSchema<{ method: AnomalyMethod; window: number; threshold?: number; min_points?: number; sample_size?: number; refit_every?: number }>(objectSchema({
  method: enumSchema(ANOMALY_METHODS, "zscore"),
  field: { type: "string", pattern: "^[^.\\s]+(\\.[^.\\s]+)*$", default: "value", expected: "a dot path such as value or reading.temp" },
  window: integerSchema(DEFAULT_WINDOW, 2),
  threshold: { type: "number", exclusiveMinimum: 0, expected: "number > 0 (iforest: < 1)" },
  min_points: integerSchema(undefined, 2),
  alpha: numberSchema(DEFAULT_ALPHA, 0, 1, true),
  season: integerSchema(0, 0, MAX_SEASON),
  season_alpha: numberSchema(DEFAULT_SEASON_ALPHA, 0, 1, true),
  emit: enumSchema(["flagged", "all"], "flagged"),
  trees: integerSchema(DEFAULT_TREES, 1, 1_000),
  sample_size: integerSchema(undefined, 4),
  refit_every: integerSchema(undefined, 1),
  seed: SEED_SCHEMA,
  winsorize: booleanSchema(true),
}));

function validateOptions(raw: unknown, path: string): AnomalyOptions {
  const o = checkOptions(OPTIONS, raw, path);
  // What the schema cannot say: defaults and bounds that follow the method and the window.
  const issues: SchemaIssue[] = [];
  const threshold = o.threshold ?? DEFAULT_THRESHOLDS[o.method];
  if (o.method === "iforest" && threshold >= 1) issues.push(issue(pathAt(path, "threshold"), "number > 0 and < 1", threshold));
  const minPoints = o.min_points ?? Math.min(DEFAULT_MIN_POINTS, o.window);
  checkBetween(issues, pathAt(path, "min_points"), minPoints, 2, o.window);
  const sampleSize = o.sample_size ?? Math.min(DEFAULT_SAMPLE_SIZE, o.window);
  checkBetween(issues, pathAt(path, "sample_size"), sampleSize, 4, o.window);
  throwIssues(issues);
  return camelKeys<AnomalyOptions>({ ...o, threshold, min_points: minPoints, sample_size: sampleSize, refit_every: o.refit_every ?? o.window });
}

function initialState(): AnomalyState {
  return { n: 0, ring: [], head: 0, mean: 0, m2: 0, sorted: [], ewMean: 0, ewVar: 0, baseline: [], absDev: 0, prev: 0, fitRows: [], fitAt: -1 };
}

// ---- sorted window helpers (robust) ----

function lowerBound(a: readonly number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function medianOfSorted(a: readonly number[]): number {
  const m = a.length >> 1;
  return a.length % 2 ? a[m]! : (a[m - 1]! + a[m]!) / 2;
}

// Median of |a[i] - med| for sorted `a`: the deviations left of the median grow leftwards and
// those right of it grow rightwards, so a two-pointer merge finds the middle ones in O(n).
function madOfSorted(a: readonly number[], med: number): number {
  const n = a.length;
  let r = lowerBound(a, med);
  let l = r - 1;
  const want = n >> 1;
  let prev = 0;
  let cur = 0;
  for (let k = 0; k <= want; k++) {
    const dl = l >= 0 ? med - a[l]! : Infinity;
    const dr = r < n ? a[r]! - med : Infinity;
    prev = cur;
    if (dl <= dr) {
      cur = dl;
      l--;
    } else {
      cur = dr;
      r++;
    }
  }
  return n % 2 ? cur : (prev + cur) / 2;
}

// ---- isolation forest ----

interface IsoTree {
  // Node arrays: feature (-1 for a leaf), split value, left, right, leaf size.
  readonly feature: Int8Array;
  readonly split: Float64Array;
  readonly left: Int32Array;
  readonly right: Int32Array;
  readonly size: Int32Array;
  // Bounding box of the node's training points: [lo0, hi0, lo1, hi1] per node.
  readonly box: Float64Array;
}

const EULER = 0.5772156649;
/** Average path length of an unsuccessful BST search among n points. */
function cFactor(n: number): number {
  if (n <= 1) return 0;
  if (n === 2) return 1;
  return 2 * (Math.log(n - 1) + EULER) - (2 * (n - 1)) / n;
}

function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hashSeed(seed: number, key: string, at: number): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193) >>> 0;
  h = Math.imul(h ^ (at & 0xffffffff), 0x01000193) >>> 0;
  return Math.imul(h ^ Math.floor(at / 4294967296), 0x01000193) >>> 0;
}

const FEATURES = 2;

function buildTree(rows: readonly number[], idx: number[], heightLimit: number, rnd: () => number): IsoTree {
  const cap = 2 * idx.length + 1;
  const feature = new Int8Array(cap).fill(-1);
  const split = new Float64Array(cap);
  const left = new Int32Array(cap);
  const right = new Int32Array(cap);
  const size = new Int32Array(cap);
  const box = new Float64Array(cap * 2 * FEATURES);
  let nodes = 0;
  const grow = (items: number[], depth: number): number => {
    const node = nodes++;
    size[node] = items.length;
    for (let f = 0; f < FEATURES; f++) {
      let lo = Infinity;
      let hi = -Infinity;
      for (const i of items) {
        const v = rows[i * FEATURES + f]!;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      box[node * 2 * FEATURES + 2 * f] = lo;
      box[node * 2 * FEATURES + 2 * f + 1] = hi;
    }
    if (depth >= heightLimit || items.length <= 1) return node;
    // Pick a feature that is not constant on these items; a leaf if none.
    const start = Math.floor(rnd() * FEATURES);
    for (let t = 0; t < FEATURES; t++) {
      const f = (start + t) % FEATURES;
      const lo = box[node * 2 * FEATURES + 2 * f]!;
      const hi = box[node * 2 * FEATURES + 2 * f + 1]!;
      if (!(hi > lo)) continue;
      const s = lo + rnd() * (hi - lo);
      const l: number[] = [];
      const r: number[] = [];
      for (const i of items) (rows[i * FEATURES + f]! < s ? l : r).push(i);
      feature[node] = f;
      split[node] = s;
      left[node] = grow(l, depth + 1);
      right[node] = grow(r, depth + 1);
      return node;
    }
    return node;
  };
  grow(idx, 0);
  return { feature, split, left, right, size, box };
}

interface Forest {
  readonly trees: readonly IsoTree[];
  readonly c: number;
}

function fitForest(rows: readonly number[], options: AnomalyOptions, seed: number): Forest {
  const n = rows.length / FEATURES;
  const psi = Math.min(options.sampleSize, n);
  const heightLimit = Math.ceil(Math.log2(Math.max(2, psi)));
  const rnd = mulberry32(seed);
  const trees: IsoTree[] = [];
  const all = Array.from({ length: n }, (_, i) => i);
  for (let t = 0; t < options.trees; t++) {
    // Partial Fisher–Yates: the first psi items are a uniform sample without replacement.
    for (let i = 0; i < psi; i++) {
      const j = i + Math.floor(rnd() * (n - i));
      const tmp = all[i]!;
      all[i] = all[j]!;
      all[j] = tmp;
    }
    trees.push(buildTree(rows, all.slice(0, psi), heightLimit, rnd));
  }
  return { trees, c: cFactor(psi) };
}

function outside(box: Float64Array, node: number, level: number, diff: number): boolean {
  const b = node * 2 * FEATURES;
  for (let f = 0; f < FEATURES; f++) {
    const lo = box[b + 2 * f]!;
    const hi = box[b + 2 * f + 1]!;
    const v = f === 0 ? level : diff;
    const width = hi - lo;
    if (v > hi + width || v < lo - width) return true;
  }
  return false;
}

function isolationScore(forest: Forest, level: number, diff: number): number {
  let total = 0;
  for (const tree of forest.trees) {
    let node = 0;
    let depth = 0;
    let isolated = false;
    while (tree.feature[node]! >= 0) {
      // A point farther outside the node's box than the box is wide would be cut off by
      // (almost) any split there: count it isolated at this depth. Plain isolation trees
      // score far-out points no higher than the most extreme training point.
      if (outside(tree.box, node, level, diff)) {
        isolated = true;
        break;
      }
      const v = tree.feature[node] === 0 ? level : diff;
      node = v < tree.split[node]! ? tree.left[node]! : tree.right[node]!;
      depth++;
    }
    total += isolated ? depth : depth + cFactor(tree.size[node]!);
  }
  return forest.c === 0 ? 0.5 : 2 ** (-(total / forest.trees.length) / forest.c);
}

// Forests are rebuilt from the training rows kept in the state, so they need not be stored;
// this cache only saves the rebuild. Keyed by key and fit point, so a stale entry cannot match.
const FOREST_CACHE_SIZE = 4_096;
const forestCache = new Map<string, Forest>();

function forestFor(state: AnomalyState, options: AnomalyOptions, key: string): Forest {
  const id = `${key}\u0000${state.fitAt}\u0000${options.seed}\u0000${options.trees}\u0000${options.sampleSize}`;
  let forest = forestCache.get(id);
  if (!forest) {
    forest = fitForest(state.fitRows, options, hashSeed(options.seed, key, state.fitAt));
    if (forestCache.size >= FOREST_CACHE_SIZE) forestCache.delete(forestCache.keys().next().value!);
    forestCache.set(id, forest);
  }
  return forest;
}

// ---- the detector ----

// Detector inputs before the current point: with `season` the seeding seasons are not fed to
// it. Derived from `n` rather than counted, to keep the z-score loop to its few stores.
function fedBefore(s: AnomalyState, options: AnomalyOptions): number {
  return options.season > 0 ? s.n - SEED_SEASONS * options.season : s.n;
}

function windowAdd(s: AnomalyState, options: AnomalyOptions, y: number): void {
  let evicted: number | undefined;
  if (s.ring.length < options.window) {
    s.ring.push(y);
  } else {
    evicted = s.ring[s.head]!;
    s.ring[s.head] = y;
    s.head = (s.head + 1) % options.window;
  }
  if (options.method === "zscore") {
    if (evicted !== undefined) {
      const count = s.ring.length;
      // Replace `evicted` by `y` in the Welford sums of a window of constant size.
      const oldMean = s.mean;
      s.mean += (y - evicted) / count;
      s.m2 += (y - evicted) * (y - s.mean + evicted - oldMean);
      if (s.m2 < 0) s.m2 = 0;
    } else {
      const count = s.ring.length;
      const d = y - s.mean;
      s.mean += d / count;
      s.m2 += d * (y - s.mean);
    }
  } else if (options.method === "robust") {
    if (evicted !== undefined) s.sorted.splice(lowerBound(s.sorted, evicted), 1);
    s.sorted.splice(lowerBound(s.sorted, y), 0, y);
  } else if (options.method === "ewma") {
    // Counted in detector inputs, not in points: with `season` the seeding seasons never reach
    // the detector, and starting from a mean and variance of 0 flagged everything.
    if (fedBefore(s, options) === 0) {
      s.ewMean = y;
      s.ewVar = 0;
    } else {
      const d = y - s.ewMean;
      s.ewMean += options.alpha * d;
      s.ewVar = (1 - options.alpha) * (s.ewVar + options.alpha * d * d);
    }
  }
}

function capped(z: number): number {
  return Math.max(-MAX_SCORE, Math.min(MAX_SCORE, z));
}

/** Scores one detector input `y` against the window; returns the score, flag and the value to store. */
function detect(s: AnomalyState, options: AnomalyOptions, key: string, y: number): { score: number; flagged: boolean; center: number | null; stored: number; ready: boolean } {
  const count = options.method === "ewma" ? fedBefore(s, options) : s.ring.length;
  const ready = count >= options.minPoints;
  const thr = options.threshold;
  if (options.method === "zscore" || options.method === "ewma") {
    const center = options.method === "zscore" ? s.mean : s.ewMean;
    const variance = options.method === "zscore" ? (count > 1 ? s.m2 / (count - 1) : 0) : s.ewVar;
    const sd = Math.sqrt(variance);
    if (!ready) return { score: 0, flagged: false, center: count > 0 ? center : null, stored: y, ready };
    const dev = y - center;
    const z = sd > 0 ? capped(dev / sd) : dev === 0 ? 0 : Math.sign(dev) * MAX_SCORE;
    const flagged = Math.abs(z) > thr;
    // With a spread of 0 there is no bound to clamp to: clamping to the centre would keep the
    // spread at 0 and flag every later change for ever.
    const stored = flagged && options.winsorize && sd > 0 ? center + Math.sign(dev) * thr * sd : y;
    return { score: z, flagged, center, stored, ready };
  }
  if (options.method === "robust") {
    if (!ready) return { score: 0, flagged: false, center: count > 0 ? medianOfSorted(s.sorted) : null, stored: y, ready };
    const med = medianOfSorted(s.sorted);
    const mad = madOfSorted(s.sorted, med);
    const dev = y - med;
    const z = mad > 0 ? capped((MAD_TO_SIGMA * dev) / mad) : dev === 0 ? 0 : Math.sign(dev) * MAX_SCORE;
    const flagged = Math.abs(z) > thr;
    const stored = flagged && options.winsorize && mad > 0 ? med + (Math.sign(dev) * thr * mad) / MAD_TO_SIGMA : y;
    return { score: z, flagged, center: med, stored, ready };
  }
  // iforest: refit on the current window when due, then score (level, diff).
  if (!ready) return { score: 0, flagged: false, center: null, stored: y, ready };
  if (s.fitAt < 0 || s.n - s.fitAt >= options.refitEvery || s.ring.length >= s.fitRows.length) {
    const rows: number[] = [];
    const len = s.ring.length;
    for (let i = 0; i < len; i++) {
      const v = s.ring[(s.head + i) % len]!;
      const p = i === 0 ? v : s.ring[(s.head + i - 1) % len]!;
      rows.push(v, v - p);
    }
    s.fitRows = rows;
    s.fitAt = s.n;
  }
  const forest = forestFor(s, options, key);
  const last = s.ring.length > 0 ? s.ring[(s.head + s.ring.length - 1) % s.ring.length]! : y;
  const score = isolationScore(forest, y, y - last);
  const flagged = score > thr;
  return { score, flagged, center: null, stored: flagged && options.winsorize ? last : y, ready };
}

function median3(a: number, b: number, c: number): number {
  return Math.max(Math.min(a, b), Math.min(Math.max(a, b), c));
}

/**
 * Folds point `x` of the first {@link SEED_SEASONS} seasons into the seasonal baseline: the
 * first two seasons are kept as they are, the third turns each phase into the median of its
 * three values, so one spike among them cannot seed the baseline. σ̂ starts from the median of
 * the per-phase ranges.
 */
function seedBaseline(s: AnomalyState, period: number, x: number): void {
  if (s.n < 2 * period) {
    s.baseline.push(x);
    return;
  }
  const p = s.n - 2 * period;
  const a = s.baseline[p]!;
  const b = s.baseline[period + p]!;
  s.baseline[p] = median3(a, b, x);
  // The second season's slot is free now: it keeps the phase's range until the season ends.
  s.baseline[period + p] = Math.max(a, b, x) - Math.min(a, b, x);
  if (p === period - 1) {
    const ranges = s.baseline.slice(period).sort((u, v) => u - v);
    s.absDev = medianOfSorted(ranges) / RANGE3_TO_SIGMA / ABS_TO_SIGMA;
    s.baseline.length = period;
  }
}

// Folds the residual `r` of the point at phase n mod period into the seasonal baseline and
// σ̂, each update clipped so that no single point, flagged or missed, moves them far.
function updateBaseline(s: AnomalyState, options: AnomalyOptions, r: number): void {
  const period = options.season;
  const phase = s.n % period;
  const sigma = s.absDev * ABS_TO_SIGMA;
  // Running means until the gains reach their floors: the baseline over the seasons seen so
  // far, σ̂ over the residuals seen so far (its seed counting as one).
  const gain = Math.max(options.seasonAlpha, 1 / (Math.floor(s.n / period) + 1));
  // σ̂ = 0 (a constant series so far) gives no bound to clip to; clipping to 0 would freeze both.
  const bound = sigma > 0 ? BASELINE_CLIP * sigma : Infinity;
  s.baseline[phase] = s.baseline[phase]! + gain * Math.max(-bound, Math.min(bound, r));
  const scaleGain = 1 / Math.min(fedBefore(s, options) + 2, options.window);
  s.absDev += scaleGain * (Math.min(Math.abs(r), sigma > 0 ? SCALE_CLIP * sigma : Infinity) - s.absDev);
}

// scorePoint with `season`: the residual against the seasonal baseline goes to the detector.
function scoreSeasonal(s: AnomalyState, options: AnomalyOptions, key: string, x: number): PointScore {
  const period = options.season;
  s.prev = x;
  if (s.n < SEED_SEASONS * period) {
    seedBaseline(s, period, x);
    s.n += 1;
    return { score: 0, flagged: false, expected: null, ready: false };
  }
  const base = s.baseline[s.n % period]!;
  const y = x - base;
  const r = detect(s, options, key, y);
  updateBaseline(s, options, y);
  windowAdd(s, options, r.stored);
  s.n += 1;
  return { score: r.score, flagged: r.flagged, expected: r.center === null ? null : base + r.center, ready: r.ready };
}

/**
 * Scores one point and folds it into the state (mutated in place). The building block of
 * {@link anomaly}.process and of the typed-array path {@link scoreSeries}.
 */
export function scorePoint(s: AnomalyState, options: AnomalyOptions, key: string, x: number): PointScore {
  if (options.season > 0) return scoreSeasonal(s, options, key, x);
  const r = detect(s, options, key, x);
  windowAdd(s, options, r.stored);
  s.prev = x;
  s.n += 1;
  return { score: r.score, flagged: r.flagged, expected: r.center, ready: r.ready };
}

/**
 * Scores a series of one key held in a typed array: the pool's fast path (no objects per
 * point). Writes scores and flags into the given arrays and returns the flagged count.
 */
export function scoreSeries(s: AnomalyState, options: AnomalyOptions, key: string, values: Float64Array, scores: Float64Array, flags: Uint8Array): number {
  let flagged = 0;
  for (let i = 0; i < values.length; i++) {
    const r = scorePoint(s, options, key, values[i]!);
    scores[i] = r.score;
    flags[i] = r.flagged ? 1 : 0;
    if (r.flagged) flagged++;
  }
  return flagged;
}

function readValue(input: ProcessorInput, field: string, index: number): number {
  let v: unknown = input.data;
  if (typeof v !== "number") {
    for (const part of field.split(".")) {
      v = v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>)[part] : undefined;
    }
  }
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new InvalidEventError(`inputs[${index}].data.${field}`, v, "a finite number (the series value)");
  }
  return v;
}

function round(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

function reasonOf(options: AnomalyOptions, r: PointScore): string {
  const name = { zscore: "z-score", robust: "robust z-score (median/MAD)", ewma: "EWMA z-score", iforest: "isolation score" }[options.method];
  const cmp = r.flagged ? ">" : "≤";
  const score = options.method === "iforest" ? r.score : Math.abs(r.score);
  const season = options.season > 0 ? ` against the seasonal baseline (period ${options.season})` : "";
  if (r.ready) return `${name} ${round(score)} ${cmp} ${options.threshold}${season}`;
  const seeding = options.season > 0 ? `${SEED_SEASONS} seasons to seed the baseline, then ` : "";
  return `warming up: needs ${seeding}${options.minPoints} points in the window`;
}

function processBatch(state: AnomalyState, inputs: readonly ProcessorInput[], options: AnomalyOptions): ProcessResult<AnomalyState> {
  // Validate the whole batch before touching the state, so a bad input leaves it unchanged.
  const values = inputs.map((input, i) => readValue(input, options.field, i));
  const s: AnomalyState = { ...state, ring: [...state.ring], sorted: [...state.sorted], baseline: [...state.baseline] };
  const outputs: ProcessorOutput[][] = [];
  for (let i = 0; i < inputs.length; i++) {
    const input = inputs[i]!;
    const r = scorePoint(s, options, input.key, values[i]!);
    if (!r.flagged && options.emit === "flagged") {
      outputs.push([]);
      continue;
    }
    outputs.push([
      {
        type: "AnomalyScored",
        data: {
          value: values[i],
          score: round(r.score),
          flagged: r.flagged,
          method: options.method,
          reason: reasonOf(options, r),
          expected: r.expected === null ? null : round(r.expected),
          seq: input.seq,
          time: input.time,
        },
      },
    ]);
  }
  return { state: s, outputs };
}

/** The `anomaly` processor definition. */
export const anomaly: ProcessorDefinition<AnomalyOptions, AnomalyState> = {
  kind: "anomaly",
  description: "Flags outliers per key: z-score, robust z (median/MAD), EWMA, or isolation forest over a sliding window",
  validateOptions,
  optionsSchema: OPTIONS.schema,
  initialState,
  process: processBatch,
};

/** Validates anomaly options outside a config file (benches, workflows). */
export function anomalyOptions(raw: Record<string, unknown> = {}, path = "options"): AnomalyOptions {
  return validateOptions(raw, path);
}
