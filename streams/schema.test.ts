import { describe, expect, it } from "vitest";
import { compileSchema, durationMs, durationSchema, expectedOf } from "./schema.js";
import type { SchemaIssue } from "./schema.js";

const options = compileSchema<{ window: number; method: string; every?: number | string }>({
  type: "object",
  additionalProperties: false,
  required: ["method"],
  properties: {
    window: { type: "integer", minimum: 2, maximum: 1000, default: 100 },
    method: { type: "string", enum: ["zscore", "ewma"] },
    every: durationSchema(100),
    name: { type: "string", pattern: "^[a-z]+$", expected: "a lower-case name" },
  },
});

describe("compileSchema", () => {
  it("fills in defaults on a copy and leaves the caller's value as given", () => {
    const raw = { method: "ewma" };
    expect(options.check(raw, "p.options")).toEqual({ value: { method: "ewma", window: 100 }, issues: [] });
    expect(raw).toEqual({ method: "ewma" });
  });

  it("reports every issue with its path, what was expected and what came", () => {
    const { value, issues } = options.check({ window: "ten", colour: 1, every: "soon", name: "A" }, "processors[2].options");
    expect(value).toBeUndefined();
    expect(new Set(issues.map((i) => `${i.path}: ${i.message}`))).toEqual(
      new Set([
        "processors[2].options.method: expected one of \"zscore\", \"ewma\", got nothing",
        "processors[2].options.colour: unknown key; expected one of window, method, every, name",
        'processors[2].options.window: expected integer ≥ 2 and ≤ 1000, got "ten"',
        // A failed union is one issue in its own words, not one per branch.
        'processors[2].options.every: expected a duration ≥ 100 ms (milliseconds, or "500ms", "2s", "1m"), got "soon"',
        'processors[2].options.name: expected a lower-case name, got "A"',
      ]),
    );
  });

  it("names a key that fails a propertyNames pattern by the key, with what a name must look like", () => {
    const env = compileSchema({ type: "object", propertyNames: { type: "string", pattern: "^[A-Z]+$", expected: "an upper-case name" } });
    expect(env.check({ OK: 1, "no-way": 2 }, "env").issues).toEqual([{ path: "env.no-way", message: 'expected an upper-case name, got "no-way"' }]);
  });

  it("names the document itself by its root name", () => {
    expect(options.check([1], "").issues).toEqual([{ path: "(root)", message: "expected an object (a mapping of keys), got an array" }]);
    expect(compileSchema({ type: "object" }, "$").check(3, "").issues).toEqual([{ path: "$", message: "expected an object (a mapping of keys), got 3" }]);
    expect(options.check(() => 1, "x").issues).toEqual([{ path: "x", message: "expected plain data (YAML or JSON values), got () => 1" }]);
  });

  it("reads durations, and refuses a string below the minimum the schema cannot see", () => {
    const issues: SchemaIssue[] = [];
    expect([durationMs(250, "a", 100, issues), durationMs("2s", "b", 100, issues), durationMs("1.5m", "c", 100, issues), durationMs("20ms", "d", 100, issues)]).toEqual([250, 2_000, 90_000, 100]);
    expect(issues).toEqual([{ path: "d", message: 'expected a duration ≥ 100 ms (milliseconds, or "500ms", "2s", "1m"), got "20ms"' }]);
  });

  it("says what a schema accepts", () => {
    expect(expectedOf({ type: "number", exclusiveMinimum: 0, exclusiveMaximum: 1 })).toBe("number > 0 and < 1");
    expect(expectedOf({ type: "array", minItems: 1 })).toBe("a list of at least 1 item(s)");
    expect(expectedOf({ type: "boolean" })).toBe("true or false");
  });
});
