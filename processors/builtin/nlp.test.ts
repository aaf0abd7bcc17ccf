import { describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import type { ProcessorInput } from "../types.js";
import { nlp } from "./nlp.js";
import type { NlpResult } from "./nlp.js";

const P = "processors[0].options";
const inputs = (texts: unknown[]): ProcessorInput[] =>
  texts.map((data, i) => ({ tenant: "t", key: "doc", subject: "evt.t.notes.doc", seq: i + 1, type: "note", data, time: "2026-01-01T00:00:00Z" }));

describe("nlp processor (unit)", () => {
  it("validates options, naming the path", () => {
    expect(() => nlp.validateOptions({ window: 0 }, P)).toThrow(ConfigError);
    expect(() => nlp.validateOptions({ window: 0 }, P)).toThrow("processors[0].options.window: expected integer ≥ 1 and ≤ 100000, got 0");
    expect(() => nlp.validateOptions({ emit_tokens: "yes" }, P)).toThrow(/options\.emit_tokens: expected true or false/);
  });

  it("ranks terms rare in the window above common ones, and forgets texts that leave the window", () => {
    const o = nlp.validateOptions({ window: 3, keywords: 2 }, P);
    const r = nlp.process(nlp.initialState(o, "doc"), inputs(["server restart", "server restart", "server crash crash", { text: "server crash" }]), o);
    const third = r.outputs[2]![0]!.data as NlpResult;
    expect(third.keywords.map((k) => k.term)).toEqual(["crash", "server"]);
    // idf(crash) = ln(4/2)+1, tf = 2/3; idf(server) = ln(4/4)+1 = 1, tf = 1/3
    expect(third.keywords[0]!.score).toBeCloseTo((2 / 3) * (Math.log(2) + 1), 12);
    expect(third.keywords[1]!.score).toBeCloseTo(1 / 3, 12);
    expect(r.state.docs).toHaveLength(3);
    expect(r.state.df).toEqual({ server: 3, restart: 1, crash: 2 });
  });

  it("emits stats, sentiment and (optionally) tokens; copes with `constructor` as a word; replays identically", () => {
    const o = nlp.validateOptions({ emit_tokens: true }, P);
    const texts = ["I love this phone. It is not slow!", "__proto__ constructor toString", "terrible battery"];
    const r = nlp.process(nlp.initialState(o, "doc"), inputs(texts), o);
    const first = r.outputs[0]![0]!.data as NlpResult;
    expect(first.tokens).toEqual(["i", "love", "this", "phone", "it", "is", "not", "slow"]);
    expect(first.stats.sentences).toBe(2);
    expect(first.sentiment.label).toBe("positive");
    expect((r.outputs[2]![0]!.data as NlpResult).sentiment.label).toBe("negative");
    expect(Object.hasOwn(r.state.df, "constructor")).toBe(true);
    expect(r.state.df["constructor"]).toBe(1);
    const again = nlp.process(JSON.parse(JSON.stringify(nlp.initialState(o, "doc"))), inputs(texts), o);
    expect(JSON.stringify(again)).toBe(JSON.stringify(r));
  });

  it("rejects a non-text payload, naming the field", () => {
    const o = nlp.validateOptions({}, P);
    expect(() => nlp.process(nlp.initialState(o, "doc"), inputs([{ text: 5 }]), o)).toThrow(/inputs\[0\]\.data\.text/);
  });
});
