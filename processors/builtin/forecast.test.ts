import { describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import { createRandom } from "../ml/random.js";
import type { ProcessorInput } from "../types.js";
import { forecast } from "./forecast.js";
import type { ForecastResult } from "./forecast.js";

const P = "processors[1].options";
const inputs = (values: unknown[]): ProcessorInput[] =>
  values.map((data, i) => ({ tenant: "t", key: "s1", subject: "evt.t.metric.s1", seq: i + 1, type: "sample", data, time: "2026-01-01T00:00:00Z" }));

describe("forecast processor (unit)", () => {
  it("validates options, naming the path", () => {
    expect(() => forecast.validateOptions({ period: 1 }, P)).toThrow(ConfigError);
    expect(() => forecast.validateOptions({ period: 1 }, P)).toThrow("processors[1].options.period: expected integer ≥ 2");
    expect(() => forecast.validateOptions({ coverage: 1 }, P)).toThrow(/options\.coverage: expected number > 0 and < 1, got 1/);
    expect(() => forecast.validateOptions({ period: 10, history: 12 }, P)).toThrow(/options\.history/);
    expect(forecast.validateOptions({ alpha: 0.5 }, P).optimize).toBe(false);
    expect(forecast.validateOptions({}, P)).toMatchObject({ period: 24, horizon: 1, optimize: true, history: 96 });
  });

  it("starts after two seasons, then forecasts the horizon with MAPE under 5%", () => {
    const o = forecast.validateOptions({ period: 12, horizon: 12 }, P);
    const rng = createRandom(1);
    const series = Array.from({ length: 12 * 12 }, (_, t) => 100 + 0.2 * t + 10 * Math.sin((2 * Math.PI * t) / 12) + rng.normal());
    const train = series.slice(0, 120);
    const r = forecast.process(forecast.initialState(o, "s1"), inputs(train), o);
    expect(r.outputs.slice(0, 23).every((x) => x.length === 0)).toBe(true);
    expect((r.outputs[23]![0]!.data as ForecastResult).expected).toBeNull();
    const last = r.outputs.at(-1)![0]!.data as ForecastResult;
    expect(last.forecasts).toHaveLength(12);
    const mape = last.forecasts.reduce((s, p, h) => s + Math.abs(p.value - series[120 + h]!) / series[120 + h]!, 0) / 12;
    expect(mape).toBeLessThan(0.05);
    expect(last.modelVersion).toBeGreaterThan(1);
  });

  it("replays identically across batch boundaries and through JSON", () => {
    const o = forecast.validateOptions({ period: 6, horizon: 3, refit_every: 5 }, P);
    const values = Array.from({ length: 60 }, (_, t) => ({ value: 10 + (t % 6) + t * 0.1 }));
    const once = forecast.process(forecast.initialState(o, "s1"), inputs(values), o);
    let state = forecast.initialState(o, "s1");
    const outs: unknown[] = [];
    for (let i = 0; i < 60; i += 7) {
      const r = forecast.process(JSON.parse(JSON.stringify(state)), inputs(values).slice(i, i + 7), o);
      state = r.state;
      outs.push(...r.outputs);
    }
    expect(JSON.stringify(outs)).toBe(JSON.stringify(once.outputs));
  });

  it("rejects a non-number observation, naming the field", () => {
    const o = forecast.validateOptions({}, P);
    expect(() => forecast.process(forecast.initialState(o, "s1"), inputs([1, { value: "x" }]), o)).toThrow(/inputs\[1\]\.data\.value/);
  });
});
