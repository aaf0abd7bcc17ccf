import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { MANIFEST_FILE, parseManifest } from "../index.js";
import { TRANSFORM_OPTIONS_SCHEMA, TransformOptionsError, castValue, checkTransformOptions, compileTransform } from "./transform.js";

describe("json-transform: the transform", () => {
  it("picks, renames, defaults, casts and filters on dotted paths, in that order", () => {
    const t = compileTransform({
      pick: ["user.name", "user.age", "amount", "when", "tags"],
      rename: { "user.name": "name", "user.age": "profile.age" },
      default: { currency: "EUR", "profile.age": 0 },
      cast: { amount: "number", "profile.age": "integer", when: "date-iso" },
      filter: [{ path: "amount", op: "gte", value: 10 }, { path: "currency", op: "in", value: ["EUR", "USD"] }],
    });
    const input = { user: { name: "Ada", age: "36.7", secret: "x" }, amount: "12.5", when: 0, tags: ["a"], drop: 1 };
    const frozen = JSON.stringify(input);
    expect(t(input)).toEqual({ kept: true, data: { name: "Ada", profile: { age: 36 }, amount: 12.5, when: "1970-01-01T00:00:00.000Z", tags: ["a"], currency: "EUR", user: {} } });
    expect(JSON.stringify(input)).toBe(frozen);
    expect(t({ amount: "9" })).toEqual({ kept: false });
  });

  it("keeps everything when there is no pick, and sets defaults only where missing or null", () => {
    const t = compileTransform({ default: { a: 1, b: 2, "c.d": 3 } });
    expect(t({ a: null, b: 5, x: true })).toEqual({ kept: true, data: { a: 1, b: 5, c: { d: 3 }, x: true } });
  });

  it("refuses an input whose value cannot be cast, naming the path", () => {
    const t = compileTransform({ cast: { "a.b": "number" } });
    expect(t({ a: { b: "twelve" } })).toEqual({ kept: false, error: 'a.b: cannot cast "twelve" (string) to number' });
  });

  it.each([
    ["1e3", "number", 1000],
    [" 42 ", "integer", 42],
    ["-3.9", "integer", -3],
    [true, "number", 1],
    ["yes", "boolean", true],
    ["off", "boolean", false],
    [0, "boolean", false],
    [12.5, "string", "12.5"],
    ["2026-03-01T10:00:00+02:00", "date-iso", "2026-03-01T08:00:00.000Z"],
    [null, "number", null],
  ] as const)("casts %j to %s", (value, to, expected) => {
    expect(castValue(value, to)).toEqual({ value: expected });
  });

  it.each([["abc", "number"], ["", "number"], ["Infinity", "number"], [{}, "string"], ["maybe", "boolean"], ["not a date", "date-iso"], [[1], "integer"]] as const)("does not cast %j to %s", (value, to) => {
    expect(castValue(value, to)).toHaveProperty("error");
  });

  it.each([
    ["eq", 5, 5, true],
    ["eq", { a: 1 }, { a: 1 }, true],
    ["ne", 5, 6, true],
    ["gt", "b", "a", true],
    ["gt", "10", 9, false],
    ["lt", 1, 2, true],
    ["lte", 2, 2, true],
    ["in", "x", ["x", "y"], true],
    ["exists", undefined, false, true],
    ["exists", 0, true, true],
  ] as const)("filter %s: %j against %j → %s", (op, value, operand, kept) => {
    const t = compileTransform({ filter: [{ path: "v", op, value: operand }] });
    expect(t(value === undefined ? {} : { v: value }).kept).toBe(kept);
  });

  it.each([
    [{ pick: "a" }, "options.pick"],
    [{ cast: { amount: "float" } }, "options.cast.amount"],
    [{ cast: { "a..b": "number" } }, "options.cast.a..b"],
    [{ rename: { "__proto__.polluted": "x" } }, "options.rename.__proto__.polluted"],
    [{ pick: ["constructor.prototype"] }, "options.pick[0]"],
    [{ filter: [{ path: "a", op: "like", value: 1 }] }, "options.filter[0].op"],
    [{ filter: [{ path: "a", op: "in", value: 1 }] }, "options.filter[0].value"],
    [{ filters: [] }, "options.filters"],
    [{ type: "a.b" }, "options.type"],
  ])("refuses options %j naming %s", (options, path) => {
    expect(() => checkTransformOptions(options)).toThrow(TransformOptionsError);
    try {
      checkTransformOptions(options);
    } catch (err) {
      expect((err as TransformOptionsError).path).toBe(path);
    }
  });

  it("never writes through a prototype: paths are own properties of objects it creates", () => {
    const t = compileTransform({ default: { "a.b": 1 }, rename: { x: "y.z" } });
    const input = JSON.parse('{"__proto__": {"evil": true}, "x": 2}') as unknown;
    const r = t(input);
    expect(r.kept).toBe(true);
    const data = (r as { data: unknown }).data as Record<string, unknown>;
    expect(data.a).toEqual({ b: 1 });
    expect(data.y).toEqual({ z: 2 });
    expect(Object.getPrototypeOf(data)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).evil).toBeUndefined();
    expect(({} as Record<string, unknown>).b).toBeUndefined();
  });

  it("the manifest's processor options schema is TRANSFORM_OPTIONS_SCHEMA", () => {
    const m = parseManifest(readFileSync(join(import.meta.dirname, MANIFEST_FILE)), { file: MANIFEST_FILE });
    expect(m.capabilities.processors?.[0]?.options).toEqual(TRANSFORM_OPTIONS_SCHEMA);
  });
});
