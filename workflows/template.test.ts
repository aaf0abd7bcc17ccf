import { describe, expect, it } from "vitest";
import { condition, ExpressionError, parseExpression, render, stepRefs } from "./template.js";

const ctx = { input: { n: 2, name: "x" }, steps: { a: { output: { list: [1, 2, 3], ok: true }, status: "succeeded" } }, trigger: { kind: "manual" }, run: { id: "r1" } };

describe("templates", () => {
  it("keeps the type of a whole placeholder and interpolates inside strings", () => {
    expect(render("${{ steps.a.output.list }}", ctx)).toEqual([1, 2, 3]);
    expect(render({ n: "${{ input.n }}", s: "n=${{ input.n }} of ${{ run.id }}", deep: ["${{ steps.a.output.list[1] }}"] }, ctx)).toEqual({ n: 2, s: "n=2 of r1", deep: [2] });
    expect(render("${{ steps.a.output.missing.deeper }}", ctx)).toBeNull();
  });

  it("evaluates conditions", () => {
    expect(condition("steps.a.status == 'succeeded' && input.n >= 2", ctx)).toBe(true);
    expect(condition("${{ !steps.a.output.ok || input.name != \"x\" }}", ctx)).toBe(false);
    expect(condition("(input.n < 1) || steps.a.output.list[2] == 3", ctx)).toBe(true);
    expect(condition("input.nothing", ctx)).toBe(false);
  });

  it("lists the steps an expression reads, and rejects what it cannot parse", () => {
    expect([...stepRefs(parseExpression("steps.a.output.x == steps['b'].status"))]).toEqual(["a", "b"]);
    expect(() => parseExpression("process.env.KEY")).toThrow(ExpressionError);
    expect(() => parseExpression("input.n ==")).toThrow(ExpressionError);
    expect(() => parseExpression("input.n; 1")).toThrow(ExpressionError);
  });
});
