import { describe, expect, it } from "vitest";
import { InvalidEventError } from "../../streams/index.js";
import { ConfigError } from "../errors.js";
import type { ProcessorInput } from "../types.js";
import { routeOf } from "./auto.js";
import { BUILTIN_PROCESSORS } from "./index.js";

const auto = BUILTIN_PROCESSORS.get("auto")!;
const P = "processors[6].options";
const inputs = (payloads: unknown[]): ProcessorInput[] =>
  payloads.map((data, i) => ({ tenant: "t", key: "k", subject: "evt.t.any.k", seq: i + 1, type: "any", data, time: "2026-01-01T00:00:00Z" }));

describe("auto processor (unit)", () => {
  it("recognises each payload shape", () => {
    expect(routeOf("hello")).toBe("text");
    expect(routeOf({ text: "hello" })).toBe("text");
    expect(routeOf({ png: "iVBOR..." })).toBe("image");
    expect(routeOf({ width: 1, height: 1, pixels: [0] })).toBe("image");
    expect(routeOf({ user: "u", item: "i" })).toBe("interactions");
    expect(routeOf({ features: [1, 2], label: "a" })).toBe("row");
    expect(routeOf({ label: "a", petal: 1 })).toBe("row");
    expect(routeOf(3.5)).toBe("series");
    expect(routeOf({ value: 3.5 })).toBe("series");
    expect(routeOf([1, 2, 3])).toBe("vector");
    expect(routeOf({ point: [1, 2] })).toBe("vector");
    expect(routeOf({ something: "else" })).toBeNull();
    expect(routeOf(["a"])).toBeNull();
  });

  it("validates routes and per-kind options with their paths", () => {
    expect(() => auto.validateOptions({ routes: { series: "magic" } }, P)).toThrow(ConfigError);
    expect(() => auto.validateOptions({ routes: { series: "magic" } }, P)).toThrow(/processors\[6\]\.options\.routes\.series: expected one of/);
    expect(() => auto.validateOptions({ options: { forecast: { period: 1 } } }, P)).toThrow("processors[6].options.options.forecast.period: expected integer ≥ 2");
    expect(() => auto.validateOptions({ routes: { sound: "nlp" } }, P)).toThrow(/options\.routes\.sound: unknown key/);
  });

  it("routes a mixed batch, keeping each target's state, like calling the targets directly", () => {
    const o = auto.validateOptions({ routes: { series: "anomaly" }, options: { clustering: { k: 2, warmup: 2 } } }, P);
    const payloads = ["great service", [0, 0], [10, 10], [0, 1], { user: "u1", item: "i1" }, { user: "u1" }, { text: "awful" }];
    const r = auto.process(auto.initialState(o, "k"), inputs(payloads), o);
    expect(r.outputs.map((x) => x.map((y) => y.type))).toEqual([["TextAnalyzed"], [], ["ClusterAssigned"], ["ClusterAssigned"], [], ["ItemsRecommended"], ["TextAnalyzed"]]);
    expect(Object.keys(r.state).sort()).toEqual(["clustering", "nlp", "recommend"]);
    const nlp = BUILTIN_PROCESSORS.get("nlp")!;
    const nlpOptions = nlp.validateOptions({}, "x");
    const direct = nlp.process(nlp.initialState(nlpOptions, "k"), inputs(["great service", { text: "awful" }]), nlpOptions);
    expect(r.state["nlp"]).toEqual(direct.state);
    expect(r.outputs[6]).toEqual(direct.outputs[1]);
  });

  it("rejects or skips unknown shapes, and names the batch index of a target's error", () => {
    const strict = auto.validateOptions({}, P);
    expect(() => auto.process({}, inputs(["ok", { what: 1 }]), strict)).toThrow(/inputs\[1\]\.data/);
    const skip = auto.validateOptions({ unknown: "skip" }, P);
    expect(auto.process({}, inputs([{ what: 1 }]), skip).outputs).toEqual([[]]);
    let caught: unknown;
    try {
      auto.process({}, inputs(["ok", [1, 2], [1, 2, 3]]), strict);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(InvalidEventError);
    expect((caught as InvalidEventError).field).toBe("inputs[2].data");
    expect((caught as Error).message).toContain("inputs[2].data");
  });
});
