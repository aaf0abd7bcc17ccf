import { Matrix } from "ml-matrix";
import { describe, expect, it } from "vitest";
import { gram, randomFactors, scoreItems, solveRow, trainAls } from "./als.js";
import { createRandom } from "./random.js";

describe("implicit ALS (unit)", () => {
  it("solves one row's normal equations exactly", () => {
    const items = [
      [1, 0],
      [0, 1],
      [1, 1],
    ];
    const params = { factors: 2, lambda: 0.5, alpha: 2 };
    const x = solveRow(gram(items, 2), items, [[2, 1]], params);
    // A = YᵀY + (c−1) y2 y2ᵀ + λI with c = 3; b = c y2.
    const a = new Matrix([
      [2 + 2 + 0.5, 1 + 2],
      [1 + 2, 2 + 2 + 0.5],
    ]);
    const check = a.mmul(Matrix.columnVector(x)).getColumn(0);
    expect(check[0]).toBeCloseTo(3, 12);
    expect(check[1]).toBeCloseTo(3, 12);
  });

  it("ranks a held-out item of the user's group above the other group's items", () => {
    const rng = createRandom(1);
    const inter: { user: number; item: number; weight: number }[] = [];
    for (let u = 0; u < 6; u++) {
      for (let k = 0; k < 4; k++) {
        if (!(u === 0 && k === 3)) inter.push({ user: u, item: k, weight: 1 });
        inter.push({ user: 6 + u, item: 4 + k, weight: 1 });
      }
    }
    const users = Array.from({ length: 12 }, () => randomFactors(4, rng));
    const items = Array.from({ length: 8 }, () => randomFactors(4, rng));
    trainAls(users, items, inter, { factors: 4, lambda: 1, alpha: 10 }, 10);
    const s = scoreItems(users[0]!, items);
    expect(Math.min(...s.slice(0, 4))).toBeGreaterThan(Math.max(...s.slice(4)) + 0.3);
  });
});
