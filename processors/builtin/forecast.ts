/**
 * `forecast`: additive Holt-Winters with a damped trend per key, updated with every
 * observation (online), with `horizon` steps of forecasts and prediction intervals.
 * With `optimize` (the default), α, β, γ are chosen by grid search over the kept history
 * when the model starts and every `refit_every` points after.
 */
import { fitHoltWinters, forecastHoltWinters, initHoltWinters, nextValue, updateHoltWinters } from "../ml/holt-winters.js";
import type { ForecastPoint, HoltWintersModel, HoltWintersParams } from "../ml/holt-winters.js";
import type { ProcessorDefinition, ProcessorOutput } from "../types.js";
import { compileSchema, pathAt } from "../../streams/index.js";
import type { SchemaIssue } from "../../streams/index.js";
import { camelKeys, checkBetween, checkOptions, integerSchema, numberSchema, objectSchema, throwIssues } from "../options.js";
import { badInput, isRecord } from "./input-checks.js";

/** Options of the `forecast` processor (validated, frozen). In `flexcore.yaml` the keys are snake_case (`refit_every` for `refitEvery`). */
export interface ForecastOptions {
  /** Season length in observations (24 for hourly data with a daily cycle). @default 24 */
  readonly period: number;
  /** Steps forecast after each observation. @default 1 */
  readonly horizon: number;
  /** Coverage of the prediction intervals. @default 0.95 */
  readonly coverage: number;
  /** Fixed smoothing parameters; giving any of α, β, γ turns `optimize` off. @default 0.3, 0.05, 0.1 */
  readonly alpha: number;
  readonly beta: number;
  readonly gamma: number;
  /** Trend damping in (0, 1]. @default 0.98 */
  readonly phi: number;
  /** Grid-search α, β, γ over the history. @default true unless α, β or γ is given */
  readonly optimize: boolean;
  /** Observations kept for (re)fitting, ≥ 2 × period. @default 4 × period */
  readonly history: number;
  /** Refit after this many observations (with `optimize`). @default period */
  readonly refitEvery: number;
}

/** Per-key state (JSON). */
export interface ForecastState {
  history: number[];
  model: HoltWintersModel | null;
  params: HoltWintersParams;
  sinceFit: number;
  /** Increments whenever the parameters are refitted (and the model rebuilt). */
  modelVersion: number;
}

/** `data` of a `forecast.predicted` output. */
export interface ForecastResult {
  /** The observation. */
  readonly value: number;
  /** What the model expected for it (null on the observation that started the model). */
  readonly expected: number | null;
  readonly forecasts: readonly ForecastPoint[];
  readonly params: HoltWintersParams;
  readonly modelVersion: number;
}

export const FORECAST_OUTPUT = "ForecastPredicted";

const MAX_HISTORY = 1_000_000;
const OPTIONS = compileSchema<{ period: number; optimize?: boolean; history?: number; refit_every?: number }>(objectSchema({
  period: integerSchema(24, 2, 100_000),
  horizon: integerSchema(1, 1, 10_000),
  coverage: numberSchema(0.95, 0, 1, true),
  alpha: numberSchema(0.3, 0, 1, true),
  beta: numberSchema(0.05, 0, 1),
  gamma: numberSchema(0.1, 0, 1),
  phi: numberSchema(0.98, 0.5, 1),
  optimize: { type: "boolean", expected: "true or false (default: true unless alpha, beta or gamma is given)" },
  history: integerSchema(undefined, 4, MAX_HISTORY),
  refit_every: integerSchema(undefined, 1),
}));

/** Accepts a number or `{ value: number }`. */
export function readObservation(data: unknown, field: string): number {
  const v = isRecord(data) ? data["value"] : data;
  if (typeof v !== "number" || !Number.isFinite(v)) throw badInput(isRecord(data) ? `${field}.value` : field, v, "a finite number (or { value: number })");
  return v;
}

function rebuild(state: ForecastState, options: ForecastOptions): void {
  if (options.optimize) state.params = fitHoltWinters(state.history, options.period, options.phi);
  state.model = initHoltWinters(state.history, options.period, state.params);
  state.sinceFit = 0;
  state.modelVersion++;
}

export const forecast: ProcessorDefinition<ForecastOptions, ForecastState> = {
  kind: "forecast",
  description: "Holt-Winters (additive seasonality, damped trend) per key, online; forecasts `horizon` steps with prediction intervals.",
  validateOptions(raw, path) {
    const given = raw !== null && typeof raw === "object" ? (raw as Record<string, unknown>) : {};
    const o = checkOptions(OPTIONS, raw, path);
    // Smoothing factors given by hand are kept; without them they are fitted.
    const fixed = given["alpha"] !== undefined || given["beta"] !== undefined || given["gamma"] !== undefined;
    const history = o.history ?? 4 * o.period;
    const issues: SchemaIssue[] = [];
    checkBetween(issues, pathAt(path, "history"), history, 2 * o.period, MAX_HISTORY);
    throwIssues(issues);
    return Object.freeze(camelKeys<ForecastOptions>({ ...o, optimize: o.optimize ?? !fixed, history, refit_every: o.refit_every ?? o.period }));
  },
  optionsSchema: OPTIONS.schema,
  initialState(options) {
    const { alpha, beta, gamma, phi } = options;
    return { history: [], model: null, params: { alpha, beta, gamma, phi }, sinceFit: 0, modelVersion: 0 };
  },
  process(prev, inputs, options) {
    const state: ForecastState = structuredClone(prev);
    const outputs = inputs.map((input, i): ProcessorOutput[] => {
      const value = readObservation(input.data, `inputs[${i}].data`);
      state.history.push(value);
      if (state.history.length > options.history) state.history.shift();
      let expected: number | null = null;
      if (state.model === null) {
        if (state.history.length < 2 * options.period) return [];
        rebuild(state, options);
      } else {
        expected = nextValue(state.model, state.params);
        updateHoltWinters(state.model, value, state.params);
        state.sinceFit++;
        if (options.optimize && state.sinceFit >= options.refitEvery) rebuild(state, options);
      }
      const model = state.model!;
      const data: ForecastResult = {
        value,
        expected,
        forecasts: forecastHoltWinters(model, state.params, options.horizon, options.coverage),
        params: state.params,
        modelVersion: state.modelVersion,
      };
      return [{ type: FORECAST_OUTPUT, data }];
    });
    return { state, outputs };
  },
};
