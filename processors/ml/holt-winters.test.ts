import { describe, expect, it } from "vitest";
import { fitHoltWinters, forecastHoltWinters, initHoltWinters, inverseNormal, zFor } from "./holt-winters.js";
import { createRandom } from "./random.js";

const m = 12;
const exact = (t: number): number => 50 + 0.5 * t + 8 * Math.sin((2 * Math.PI * t) / m);

describe("Holt-Winters (unit)", () => {
  it("forecasts a noiseless trend + season almost exactly", () => {
    const values = Array.from({ length: 6 * m }, (_, t) => exact(t));
    const params = { alpha: 0.3, beta: 0.1, gamma: 0.1, phi: 1 };
    const model = initHoltWinters(values, m, params);
    const f = forecastHoltWinters(model, params, m, 0.95);
    f.forEach((p, h) => expect(p.value).toBeCloseTo(exact(6 * m + h), 0));
  });

  it("intervals widen with the horizon and cover about 95% of noisy outcomes", () => {
    const rng = createRandom(4);
    const series = Array.from({ length: 40 * m }, (_, t) => exact(t) + rng.normal() * 2);
    const params = fitHoltWinters(series.slice(0, 8 * m), m, 0.98);
    let covered = 0;
    let total = 0;
    for (let start = 8 * m; start + 3 <= series.length; start += 3) {
      const model = initHoltWinters(series.slice(0, start), m, params);
      const f = forecastHoltWinters(model, params, 3, 0.95);
      expect(f[2]!.upper - f[2]!.lower).toBeGreaterThan(f[0]!.upper - f[0]!.lower);
      f.forEach((p, h) => {
        total++;
        if (series[start + h]! >= p.lower && series[start + h]! <= p.upper) covered++;
      });
    }
    expect(covered / total).toBeGreaterThan(0.88);
    expect(covered / total).toBeLessThan(0.995);
  });

  it("inverse normal matches known quantiles", () => {
    expect(zFor(0.95)).toBeCloseTo(1.959964, 5);
    expect(inverseNormal(0.5)).toBeCloseTo(0, 9);
    expect(inverseNormal(0.001)).toBeCloseTo(-3.090232, 5);
    expect(inverseNormal(0.999)).toBeCloseTo(3.090232, 5);
  });
});
