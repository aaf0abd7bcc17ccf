import { describe, expect, it } from "vitest";
import { createRandom, seedFor, shuffle } from "./random.js";

describe("createRandom (unit)", () => {
  it("gives the same sequence for the same seed and resumes from its state", () => {
    const a = createRandom(7);
    const first = [a.next(), a.next(), a.next()];
    const b = createRandom(7);
    expect([b.next(), b.next(), b.next()]).toEqual(first);
    const resumed = createRandom(a.state);
    expect(resumed.next()).toBe(a.next());
  });

  it("draws uniform numbers in [0, 1) with mean 1/2 and normals with variance 1", () => {
    const r = createRandom(1);
    let sum = 0;
    let sq = 0;
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < 20_000; i++) {
      const u = r.next();
      lo = Math.min(lo, u);
      hi = Math.max(hi, u);
      sum += u;
      const z = r.normal();
      sq += z * z;
    }
    expect(lo).toBeGreaterThanOrEqual(0);
    expect(hi).toBeLessThan(1);
    expect(sum / 20_000).toBeCloseTo(0.5, 1);
    expect(sq / 20_000).toBeCloseTo(1, 1);
  });

  it("seeds per key independently of other keys, and shuffles reproducibly", () => {
    expect(seedFor(42, "a")).toBe(seedFor(42, "a"));
    expect(seedFor(42, "a")).not.toBe(seedFor(42, "b"));
    expect(seedFor(1, "a")).not.toBe(seedFor(2, "a"));
    const s1 = shuffle([1, 2, 3, 4, 5, 6], createRandom(3));
    expect(shuffle([1, 2, 3, 4, 5, 6], createRandom(3))).toEqual(s1);
    expect([...s1].sort()).toEqual([1, 2, 3, 4, 5, 6]);
  });
});
