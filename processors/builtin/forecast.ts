/**
 * `forecast`: additive Holt-Winters with a damped trend per key, updated with every
 * observation (online), with `horizon` steps of forecasts and prediction intervals.
 * With `optimize` (the default), α, β, γ are chosen by grid search over the kept history
 * when the model starts and every `refit_every` points after.
 */
import { fitHoltWinters, forecastHoltWinters, initHoltWinters, nextValue, updateHoltWinters } from "../ml/holt-winters.js";
import type { ForecastPoint, HoltWintersModel, HoltWintersParams } from "../ml/holt-winters.js";
import type { ProcessorDefinition, ProcessorOutput } from "../types.js";
import { badInput, isRecord, readBoolean, readInteger, readNumber, readObject } from "./option-readers.js";

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

const KEYS = ["period", "horizon", "coverage", "alpha", "beta", "gamma", "phi", "optimize", "history", "refit_every"] as const;

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
    const o = readObject(raw, path, KEYS);
    const period = readInteger(o, path, "period", 24, 2, 100_000);
    const fixed = o["alpha"] !== undefined || o["beta"] !== undefined || o["gamma"] !== undefined;
    return Object.freeze({
      period,
      horizon: readInteger(o, path, "horizon", 1, 1, 10_000),
      coverage: readNumber(o, path, "coverage", 0.95, 0, 1, true),
      alpha: readNumber(o, path, "alpha", 0.3, 0, 1, true),
      beta: readNumber(o, path, "beta", 0.05, 0, 1),
      gamma: readNumber(o, path, "gamma", 0.1, 0, 1),
      phi: readNumber(o, path, "phi", 0.98, 0.5, 1),
      optimize: readBoolean(o, path, "optimize", !fixed),
      history: readInteger(o, path, "history", 4 * period, 2 * period, 1_000_000),
      refitEvery: readInteger(o, path, "refit_every", period, 1),
    });
  },
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
