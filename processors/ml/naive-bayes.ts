/**
 * Gaussian naive Bayes learned one row at a time: per class and feature a Welford mean
 * and variance, so an update is O(d) and the model is exact at every step (no refit).
 */

/** Model (JSON). Classes appear in the order first seen. */
export interface NaiveBayesModel {
  classes: string[];
  /** Rows seen per class. */
  counts: number[];
  /** Per class: feature means. */
  means: number[][];
  /** Per class: sums of squared deviations (Welford's M2). */
  m2: number[][];
}

/** Variance added to every feature: this fraction of the largest feature variance (scikit-learn's `var_smoothing`). */
export const VAR_SMOOTHING = 1e-9;
/** Floor of the smoothing, so a constant feature still has a proper density. */
const MIN_VARIANCE = 1e-12;

export function createNaiveBayes(): NaiveBayesModel {
  return { classes: [], counts: [], means: [], m2: [] };
}

export function updateNaiveBayes(model: NaiveBayesModel, x: readonly number[], label: string): void {
  let c = model.classes.indexOf(label);
  if (c < 0) {
    c = model.classes.length;
    model.classes.push(label);
    model.counts.push(0);
    model.means.push(new Array<number>(x.length).fill(0));
    model.m2.push(new Array<number>(x.length).fill(0));
  }
  const n = ++model.counts[c]!;
  const mean = model.means[c]!;
  const m2 = model.m2[c]!;
  for (let j = 0; j < x.length; j++) {
    const delta = x[j]! - mean[j]!;
    mean[j] = mean[j]! + delta / n;
    m2[j] = m2[j]! + delta * (x[j]! - mean[j]!);
  }
}

/** Class probabilities (same order as `model.classes`). */
export function predictNaiveBayes(model: NaiveBayesModel, x: readonly number[]): number[] {
  const total = model.counts.reduce((a, b) => a + b, 0);
  let maxVar = 0;
  model.m2.forEach((m2, c) => m2.forEach((v) => (maxVar = Math.max(maxVar, v / model.counts[c]!))));
  const eps = Math.max(VAR_SMOOTHING * maxVar, MIN_VARIANCE);
  const logs = model.classes.map((_, c) => {
    const n = model.counts[c]!;
    let lp = Math.log(n / total);
    for (let j = 0; j < x.length; j++) {
      const v = model.m2[c]![j]! / n + eps;
      const t = x[j]! - model.means[c]![j]!;
      lp += -0.5 * Math.log(2 * Math.PI * v) - (t * t) / (2 * v);
    }
    return lp;
  });
  return softmaxOfLogs(logs);
}

/** Normalises log-scores into probabilities without overflow. */
export function softmaxOfLogs(logs: readonly number[]): number[] {
  const max = Math.max(...logs);
  const exps = logs.map((l) => Math.exp(l - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}
