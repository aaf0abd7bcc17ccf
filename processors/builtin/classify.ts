/**
 * `classify`: learns from labelled events and predicts the label of unlabelled ones, per
 * key. Algorithms:
 * - `naive-bayes` (default): Gaussian naive Bayes, exact online update per labelled row;
 * - `logistic`: softmax regression, one AdaGrad step per labelled row (online), plus a
 *   refit of `epochs` seeded-shuffled passes over the window every `retrain_every` rows;
 * - `tree`: CART tree refitted on the window every `retrain_every` rows.
 * The model carries a `version` that increments whenever its parameters change;
 * predictions name the version they came from.
 */
import { compileSchema } from "../../streams/index.js";
import { predictTree, trainTree } from "../ml/decision-tree.js";
import type { TreeNode } from "../ml/decision-tree.js";
import { createLogistic, observeFeatures, predictLogistic, stepLogistic } from "../ml/logistic.js";
import type { LogisticModel } from "../ml/logistic.js";
import { createNaiveBayes, predictNaiveBayes, updateNaiveBayes } from "../ml/naive-bayes.js";
import type { NaiveBayesModel } from "../ml/naive-bayes.js";
import { createRandom, seedFor, shuffle } from "../ml/random.js";
import type { ProcessorDefinition, ProcessorOutput } from "../types.js";
import { badInput, isRecord, readVector } from "./input-checks.js";
import { booleanSchema, camelKeys, checkOptions, enumSchema, integerSchema, numberSchema, objectSchema, SEED_SCHEMA } from "../options.js";

export type ClassifyAlgorithm = "naive-bayes" | "logistic" | "tree";

/** Options of the `classify` processor (validated, frozen). In `flexcore.yaml` the keys are snake_case (`refit_every` for `refitEvery`). */
export interface ClassifyOptions {
  /** @default "naive-bayes" */
  readonly algorithm: ClassifyAlgorithm;
  /** Labelled rows kept for refits (`logistic`, `tree`). @default 1000 */
  readonly window: number;
  /** Refit after this many labelled rows (`logistic`, `tree`). @default 25 */
  readonly retrainEvery: number;
  /** `logistic`: passes over the window per refit. @default 30 */
  readonly epochs: number;
  /** `logistic`: AdaGrad learning rate. @default 0.5 */
  readonly learningRate: number;
  /** `logistic`: L2 penalty. @default 0.0001 */
  readonly l2: number;
  /** `tree`: depth at most. @default 6 */
  readonly maxDepth: number;
  /** `tree`: rows at least per leaf. @default 2 */
  readonly minLeaf: number;
  /** Emit `classify.trained` for labelled events. @default false */
  readonly emitTraining: boolean;
  /** Seed of the logistic refit shuffles. @default 42 */
  readonly seed: number;
}

/** The model in state; `version` increments on every change. */
export interface ClassifyModel {
  version: number;
  /** Labelled rows learned from. */
  trainedOn: number;
  nb: NaiveBayesModel | null;
  logistic: LogisticModel | null;
  tree: TreeNode | null;
}

/** Per-key state (JSON). */
export interface ClassifyState {
  /** Feature names when rows are objects (sorted), `null` for arrays; fixed by the first row. */
  featureNames: string[] | null;
  d: number;
  window: { x: number[]; y: string }[];
  sinceFit: number;
  rng: number;
  model: ClassifyModel;
}

/** `data` of a `classify.predicted` output. */
export interface Prediction {
  /** The most probable label, `null` before any labelled row. */
  readonly label: string | null;
  readonly probabilities: Readonly<Record<string, number>>;
  readonly modelVersion: number;
  readonly algorithm: ClassifyAlgorithm;
}

export const PREDICTED_OUTPUT = "LabelPredicted";
export const TRAINED_OUTPUT = "ClassifierTrained";

const OPTIONS = compileSchema<Record<string, unknown>>(objectSchema({
  algorithm: enumSchema(["naive-bayes", "logistic", "tree"], "naive-bayes"),
  window: integerSchema(1000, 1, 1_000_000),
  retrain_every: integerSchema(25, 1),
  epochs: integerSchema(30, 1, 10_000),
  learning_rate: numberSchema(0.5, 0, 100, true),
  l2: numberSchema(1e-4, 0, 1),
  max_depth: integerSchema(6, 1, 64),
  min_leaf: integerSchema(2, 1),
  emit_training: booleanSchema(false),
  seed: SEED_SCHEMA,
}));
const RESERVED = new Set(["label", "features"]);

/**
 * Reads `{ features: number[] | Record<string, number>, label? }` or a flat labelled
 * row `{ label?, <name>: number, ... }`.
 */
export function readRow(data: unknown, field: string, state: ClassifyState): { x: number[]; label: string | null } {
  if (!isRecord(data)) throw badInput(field, data, "{ features, label? } or a row of named numbers");
  const raw = data["label"];
  if (raw !== undefined && raw !== null && typeof raw !== "string" && typeof raw !== "number" && typeof raw !== "boolean") {
    throw badInput(`${field}.label`, raw, "a string, number or boolean");
  }
  const label = raw === undefined || raw === null ? null : String(raw);
  const f = data["features"];
  if (Array.isArray(f)) {
    if (state.featureNames) throw badInput(`${field}.features`, f, "an object of named features (earlier rows named them)");
    return { x: readVector(f, `${field}.features`, state.d || undefined), label };
  }
  const named = isRecord(f) ? f : Object.fromEntries(Object.entries(data).filter(([k]) => !RESERVED.has(k)));
  const base = isRecord(f) ? `${field}.features` : field;
  if (state.d > 0 && !state.featureNames) throw badInput(`${field}.features`, f, `an array of ${state.d} numbers (earlier rows were arrays)`);
  const names = state.featureNames ?? Object.keys(named).sort();
  if (names.length === 0) throw badInput(base, named, "at least one numeric feature");
  const x = names.map((name) => {
    const v = named[name];
    if (typeof v !== "number" || !Number.isFinite(v)) throw badInput(`${base}.${name}`, v, "a finite number");
    return v;
  });
  if (Object.keys(named).length !== names.length) throw badInput(base, named, `exactly the features ${names.join(", ")}`);
  if (!state.featureNames) state.featureNames = names;
  return { x, label };
}

function refit(state: ClassifyState, options: ClassifyOptions): void {
  const m = state.model;
  if (options.algorithm === "tree") {
    m.tree = trainTree(state.window, { maxDepth: options.maxDepth, minLeaf: options.minLeaf });
  } else if (options.algorithm === "logistic" && m.logistic) {
    const rng = createRandom(state.rng);
    const order = state.window.map((_, i) => i);
    for (let e = 0; e < options.epochs; e++) {
      for (const i of shuffle(order, rng)) stepLogistic(m.logistic, state.window[i]!.x, state.window[i]!.y, options);
    }
    state.rng = rng.state;
  }
  state.sinceFit = 0;
}

function learn(state: ClassifyState, x: number[], label: string, options: ClassifyOptions): void {
  const m = state.model;
  state.window.push({ x, y: label });
  if (state.window.length > options.window) state.window.shift();
  state.sinceFit++;
  if (options.algorithm === "naive-bayes") {
    m.nb ??= createNaiveBayes();
    updateNaiveBayes(m.nb, x, label);
  } else if (options.algorithm === "logistic") {
    m.logistic ??= createLogistic(x.length);
    observeFeatures(m.logistic, x);
    stepLogistic(m.logistic, x, label, options);
    if (state.sinceFit >= options.retrainEvery) refit(state, options);
  } else if (m.tree === null || state.sinceFit >= options.retrainEvery) {
    refit(state, options);
  }
  m.trainedOn++;
  m.version++;
}

/** Predicts with the current model; exported for the quality bench. */
export function predict(state: ClassifyState, x: readonly number[], options: ClassifyOptions): Prediction {
  const m = state.model;
  let probabilities: Record<string, number> = {};
  if (options.algorithm === "naive-bayes" && m.nb) {
    const p = predictNaiveBayes(m.nb, x);
    probabilities = Object.fromEntries(m.nb.classes.map((c, i) => [c, p[i]!]));
  } else if (options.algorithm === "logistic" && m.logistic) {
    const p = predictLogistic(m.logistic, x);
    probabilities = Object.fromEntries(m.logistic.classes.map((c, i) => [c, p[i]!]));
  } else if (options.algorithm === "tree" && m.tree) {
    const c = predictTree(m.tree, x);
    const n = Object.values(c).reduce((a, b) => a + b, 0);
    probabilities = Object.fromEntries(Object.entries(c).map(([k, v]) => [k, v / n]));
  }
  let label: string | null = null;
  let best = -1;
  for (const [k, p] of Object.entries(probabilities)) {
    if (p > best) {
      best = p;
      label = k;
    }
  }
  return { label, probabilities, modelVersion: m.version, algorithm: options.algorithm };
}

export const classify: ProcessorDefinition<ClassifyOptions, ClassifyState> = {
  kind: "classify",
  description: "Learns a classifier per key from labelled events (naive Bayes, logistic regression, decision tree) and predicts unlabelled ones; models are versioned.",
  validateOptions(raw, path) {
    return Object.freeze(camelKeys<ClassifyOptions>(checkOptions(OPTIONS, raw, path)));
  },
  optionsSchema: OPTIONS.schema,
  initialState(options, key) {
    return { featureNames: null, d: 0, window: [], sinceFit: 0, rng: seedFor(options.seed, key), model: { version: 0, trainedOn: 0, nb: null, logistic: null, tree: null } };
  },
  process(prev, inputs, options) {
    const state: ClassifyState = structuredClone(prev);
    const outputs = inputs.map((input, i): ProcessorOutput[] => {
      const { x, label } = readRow(input.data, `inputs[${i}].data`, state);
      if (state.d === 0) state.d = x.length;
      if (label === null) return [{ type: PREDICTED_OUTPUT, data: predict(state, x, options) }];
      learn(state, x, label, options);
      return options.emitTraining ? [{ type: TRAINED_OUTPUT, data: { label, modelVersion: state.model.version, trainedOn: state.model.trainedOn } }] : [];
    });
    return { state, outputs };
  },
};
