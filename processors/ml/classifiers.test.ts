import { describe, expect, it } from "vitest";
import { predictTree, trainTree } from "./decision-tree.js";
import { createLogistic, observeFeatures, predictLogistic, stepLogistic } from "./logistic.js";
import { createNaiveBayes, predictNaiveBayes, updateNaiveBayes } from "./naive-bayes.js";

describe("naive Bayes (unit)", () => {
  it("keeps exact per-class means and variances online and picks the nearer class", () => {
    const nb = createNaiveBayes();
    for (const [x, y] of [[[1], "a"], [[3], "a"], [[10], "b"], [[14], "b"]] as const) updateNaiveBayes(nb, x, y);
    expect(nb.means).toEqual([[2], [12]]);
    expect(nb.m2.map((m, c) => m[0]! / nb.counts[c]!)).toEqual([1, 4]);
    const p = predictNaiveBayes(nb, [2.5]);
    expect(p[0]).toBeGreaterThan(0.99);
    expect(p[0]! + p[1]!).toBeCloseTo(1, 12);
  });
});

describe("logistic regression (unit)", () => {
  it("learns a separable rule online, whatever the feature scale", () => {
    const m = createLogistic(2);
    const rows: [number[], string][] = [];
    for (let i = 0; i < 40; i++) rows.push([[i * 1000, (i % 7) * 0.001], i < 20 ? "low" : "high"]);
    for (const [x] of rows) observeFeatures(m, x);
    for (let e = 0; e < 20; e++) for (const [x, y] of rows) stepLogistic(m, x, y, { learningRate: 0.5, l2: 0 });
    const right = rows.filter(([x, y]) => {
      const p = predictLogistic(m, x);
      return m.classes[p.indexOf(Math.max(...p))] === y;
    });
    expect(right.length).toBe(40);
  });
});

describe("decision tree (unit)", () => {
  it("finds the single threshold that separates the classes, halfway between values", () => {
    const rows = [
      { x: [5, 1], y: "a" },
      { x: [6, 0], y: "a" },
      { x: [8, 1], y: "b" },
      { x: [9, 0], y: "b" },
    ];
    const tree = trainTree(rows, { maxDepth: 4, minLeaf: 1 });
    expect(tree).toMatchObject({ leaf: false, feature: 0, threshold: 7 });
    expect(predictTree(tree, [6.9, 5])).toEqual({ a: 2 });
    expect(predictTree(tree, [7.1, 5])).toEqual({ b: 2 });
  });

  it("stops at maxDepth and at pure nodes", () => {
    const rows = Array.from({ length: 16 }, (_, i) => ({ x: [i], y: String(i % 4) }));
    const depth = (n: ReturnType<typeof trainTree>): number => (n.leaf ? 0 : 1 + Math.max(depth(n.left), depth(n.right)));
    expect(depth(trainTree(rows, { maxDepth: 2, minLeaf: 1 }))).toBeLessThanOrEqual(2);
    expect(trainTree([{ x: [1], y: "a" }, { x: [2], y: "a" }], { maxDepth: 5, minLeaf: 1 })).toEqual({ leaf: true, counts: { a: 2 } });
  });
});
