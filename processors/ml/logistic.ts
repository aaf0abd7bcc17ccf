/**
 * Multinomial logistic (softmax) regression learned online with AdaGrad and L2, on
 * features standardised by running means and variances (Welford), so raw features of
 * different scales need no preprocessing. Classes can appear at any time.
 */
import { softmaxOfLogs } from "./naive-bayes.js";

/** Model (JSON). */
export interface LogisticModel {
  classes: string[];
  /** Per class: d weights then the bias. */
  weights: number[][];
  /** AdaGrad's sums of squared gradients, same shape as `weights`. */
  g2: number[][];
  /** Running feature means and M2 for standardisation. */
  mean: number[];
  m2: number[];
  n: number;
}

export interface LogisticParams {
  /** AdaGrad base learning rate. */
  readonly learningRate: number;
  /** L2 penalty per step. */
  readonly l2: number;
}

const ADAGRAD_EPS = 1e-8;

export function createLogistic(d: number): LogisticModel {
  return { classes: [], weights: [], g2: [], mean: new Array<number>(d).fill(0), m2: new Array<number>(d).fill(0), n: 0 };
}

function standardise(model: LogisticModel, x: readonly number[]): number[] {
  return x.map((v, j) => {
    const sd = model.n > 1 ? Math.sqrt(model.m2[j]! / (model.n - 1)) : 0;
    return sd > 0 ? (v - model.mean[j]!) / sd : v - model.mean[j]!;
  });
}

/** Folds a row into the running feature statistics (call once per distinct row). */
export function observeFeatures(model: LogisticModel, x: readonly number[]): void {
  model.n++;
  for (let j = 0; j < x.length; j++) {
    const delta = x[j]! - model.mean[j]!;
    model.mean[j] = model.mean[j]! + delta / model.n;
    model.m2[j] = model.m2[j]! + delta * (x[j]! - model.mean[j]!);
  }
}

export function predictLogistic(model: LogisticModel, x: readonly number[]): number[] {
  if (model.classes.length === 0) return [];
  const z = standardise(model, x);
  return softmaxOfLogs(model.weights.map((w) => z.reduce((s, v, j) => s + v * w[j]!, w[z.length]!)));
}

/** One AdaGrad step of the cross-entropy on one row (features already observed). */
export function stepLogistic(model: LogisticModel, x: readonly number[], label: string, params: LogisticParams): void {
  const d = x.length;
  if (!model.classes.includes(label)) {
    model.classes.push(label);
    model.weights.push(new Array<number>(d + 1).fill(0));
    model.g2.push(new Array<number>(d + 1).fill(0));
  }
  const z = standardise(model, x);
  const p = predictLogistic(model, x);
  model.classes.forEach((cls, c) => {
    const err = p[c]! - (cls === label ? 1 : 0);
    const w = model.weights[c]!;
    const g2 = model.g2[c]!;
    for (let j = 0; j <= d; j++) {
      const g = err * (j < d ? z[j]! : 1) + (j < d ? params.l2 * w[j]! : 0);
      g2[j] = g2[j]! + g * g;
      w[j] = w[j]! - (params.learningRate * g) / (Math.sqrt(g2[j]!) + ADAGRAD_EPS);
    }
  });
}
