/**
 * Additive Holt-Winters (triple exponential smoothing) with a damped trend, updated one
 * observation at a time, with h-step prediction intervals (Hyndman, Koehler, Ord &
 * Snyder 2008, class 1 variance: σ²(1 + Σ c_j²), c_j = α(1 + βφ_j) + γ[j ≡ 0 mod m]).
 * The model is a plain JSON object so it can live in processor state.
 */
/** Smoothing parameters. */
export interface HoltWintersParams {
  /** Level smoothing, (0, 1). */
  readonly alpha: number;
  /** Trend smoothing, [0, 1). */
  readonly beta: number;
  /** Seasonal smoothing, [0, 1). */
  readonly gamma: number;
  /** Trend damping, (0, 1]; 1 is Holt's linear trend. */
  readonly phi: number;
}

/** Model state (JSON). */
export interface HoltWintersModel {
  /** Season length. */
  m: number;
  level: number;
  trend: number;
  /** Seasonal components; `season[t mod m]` belongs to time `t`. */
  season: number[];
  /** Observations folded in (time of the next one). */
  t: number;
  /** Sum and count of squared one-step errors, for the interval width. */
  sse: number;
  errors: number;
}

export interface ForecastPoint {
  /** Steps ahead, 1-based. */
  readonly step: number;
  readonly value: number;
  readonly lower: number;
  readonly upper: number;
}

/**
 * Starts a model from the first two (or more) whole seasons: level is the first season's
 * mean, trend the per-step change between the first two season means, seasonals the
 * average deviation from each season's mean. Then folds every given point in, so the
 * error statistics are warm.
 */
export function initHoltWinters(values: readonly number[], m: number, params: HoltWintersParams): HoltWintersModel {
  if (values.length < 2 * m) throw new RangeError(`Holt-Winters needs two seasons (${2 * m} points), got ${values.length}`);
  const seasons = Math.floor(values.length / m);
  const means: number[] = [];
  for (let s = 0; s < seasons; s++) {
    let sum = 0;
    for (let i = 0; i < m; i++) sum += values[s * m + i]!;
    means.push(sum / m);
  }
  // Trend from the first to the last whole season's mean; seasonals are deviations from
  // that trend line (not from the flat season mean, which would bake the trend in).
  const trend = (means[seasons - 1]! - means[0]!) / ((seasons - 1) * m);
  const mid = (m - 1) / 2;
  const season = new Array<number>(m).fill(0);
  for (let i = 0; i < m; i++) {
    let dev = 0;
    for (let s = 0; s < seasons; s++) dev += values[s * m + i]! - (means[s]! + trend * (i - mid));
    season[i] = dev / seasons;
  }
  const model: HoltWintersModel = {
    m,
    // The first season's mean sits at its middle; the level is set one step before the
    // first point so folding that point in lands on it.
    level: means[0]! - trend * (mid + 1),
    trend,
    season,
    t: 0,
    sse: 0,
    errors: 0,
  };
  for (const v of values) updateHoltWinters(model, v, params);
  return model;
}

/** One-step-ahead forecast of the next observation. */
export function nextValue(model: HoltWintersModel, params: HoltWintersParams): number {
  return model.level + params.phi * model.trend + model.season[model.t % model.m]!;
}

/** Folds one observation in (mutates `model`); returns the one-step error. */
export function updateHoltWinters(model: HoltWintersModel, value: number, params: HoltWintersParams): number {
  const { alpha, beta, gamma, phi } = params;
  const i = model.t % model.m;
  const s = model.season[i]!;
  const error = value - (model.level + phi * model.trend + s);
  const level = alpha * (value - s) + (1 - alpha) * (model.level + phi * model.trend);
  model.trend = beta * (level - model.level) + (1 - beta) * phi * model.trend;
  model.level = level;
  model.season[i] = gamma * (value - level) + (1 - gamma) * s;
  model.t++;
  model.sse += error * error;
  model.errors++;
  return error;
}

/** z of a two-sided interval of coverage `coverage` (0.95 → 1.959964). */
export function zFor(coverage: number): number {
  return inverseNormal(1 - (1 - coverage) / 2);
}

// Acklam's rational approximation (relative error < 1.2e-9); simple-statistics' probit
// is a coarser approximation (1.9572 for 0.975).
const A = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
const B = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
const C = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
const D = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
const P_LOW = 0.02425;

/** Quantile function of the standard normal, for p in (0, 1). */
export function inverseNormal(p: number): number {
  const [a0, a1, a2, a3, a4, a5] = A as [number, number, number, number, number, number];
  const [b0, b1, b2, b3, b4] = B as [number, number, number, number, number];
  const [c0, c1, c2, c3, c4, c5] = C as [number, number, number, number, number, number];
  const [d0, d1, d2, d3] = D as [number, number, number, number];
  if (p <= 0) return -Infinity;
  if (p >= 1) return Infinity;
  if (p < P_LOW) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5) / ((((d0 * q + d1) * q + d2) * q + d3) * q + 1);
  }
  if (p > 1 - P_LOW) return -inverseNormal(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return ((((((a0 * r + a1) * r + a2) * r + a3) * r + a4) * r + a5) * q) / (((((b0 * r + b1) * r + b2) * r + b3) * r + b4) * r + 1);
}

/** Forecasts `horizon` steps with intervals of the given coverage. */
export function forecastHoltWinters(model: HoltWintersModel, params: HoltWintersParams, horizon: number, coverage: number): ForecastPoint[] {
  const { alpha, beta, gamma, phi } = params;
  const sigma2 = model.errors > 0 ? model.sse / model.errors : 0;
  const z = zFor(coverage);
  const out: ForecastPoint[] = [];
  let damp = 0; // φ + φ² + ... + φ^h
  let pow = 1;
  let sumC2 = 0; // Σ_{j<h} c_j²
  for (let h = 1; h <= horizon; h++) {
    pow *= phi;
    damp += pow;
    if (h > 1) {
      // c_{h-1}, with φ_{h-1} = damp − φ^h.
      const j = h - 1;
      const c = alpha * (1 + beta * (damp - pow)) + (j % model.m === 0 ? gamma : 0);
      sumC2 += c * c;
    }
    const value = model.level + damp * model.trend + model.season[(model.t + h - 1) % model.m]!;
    const half = z * Math.sqrt(sigma2 * (1 + sumC2));
    out.push({ step: h, value, lower: value - half, upper: value + half });
  }
  return out;
}

/** Mean squared one-step error of `params` over `values` (after the two-season start). */
export function holtWintersLoss(values: readonly number[], m: number, params: HoltWintersParams): number {
  const init = initHoltWinters(values.slice(0, 2 * m), m, params);
  const model: HoltWintersModel = { ...init, season: [...init.season], sse: 0, errors: 0 };
  for (let i = 2 * m; i < values.length; i++) updateHoltWinters(model, values[i]!, params);
  return model.errors > 0 ? model.sse / model.errors : init.sse / Math.max(1, init.errors);
}

const ALPHAS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9];
const BETAS = [0, 0.01, 0.05, 0.1, 0.2];
const GAMMAS = [0.01, 0.05, 0.1, 0.2, 0.4];

/**
 * Grid search of α, β, γ (φ fixed) minimising the one-step squared error over `values`:
 * 175 runs of an O(n) filter — deterministic, and cheap next to a gradient method for
 * the few seasons a key keeps.
 */
export function fitHoltWinters(values: readonly number[], m: number, phi: number): HoltWintersParams {
  let best: HoltWintersParams = { alpha: 0.3, beta: 0.05, gamma: 0.1, phi };
  let bestLoss = Infinity;
  for (const alpha of ALPHAS) {
    for (const beta of BETAS) {
      for (const gamma of GAMMAS) {
        const params = { alpha, beta, gamma, phi };
        const loss = holtWintersLoss(values, m, params);
        if (loss < bestLoss) {
          bestLoss = loss;
          best = params;
        }
      }
    }
  }
  return best;
}
