import { describe, expect, it } from "vitest";
import { ConfigError } from "../errors.js";
import type { ProcessorInput } from "../types.js";
import { recommend } from "./recommend.js";
import type { Recommendations } from "./recommend.js";

const P = "processors[5].options";
const inputs = (events: unknown[]): ProcessorInput[] =>
  events.map((data, i) => ({ tenant: "t", key: "shop", subject: "evt.t.clicks.shop", seq: i + 1, type: "click", data, time: "2026-01-01T00:00:00Z" }));

/** Two taste groups: users a* like items x1..x4, users b* like y1..y4; a0 and b0 have seen three of their four. */
function tastes(): { user: string; item: string }[] {
  const events: { user: string; item: string }[] = [];
  for (let u = 0; u < 6; u++) {
    for (let k = 1; k <= 4; k++) {
      if (u === 0 && k === 4) continue;
      events.push({ user: `a${u}`, item: `x${k}` }, { user: `b${u}`, item: `y${k}` });
    }
  }
  // y-items are globally more popular: a0's popularity pick would be a y item.
  for (let u = 0; u < 4; u++) events.push({ user: `c${u}`, item: "y1" }, { user: `c${u}`, item: "y2" });
  return events;
}

describe("recommend processor (unit)", () => {
  it("validates options, naming the path", () => {
    expect(() => recommend.validateOptions({ factors: 0 }, P)).toThrow(ConfigError);
    expect(() => recommend.validateOptions({ factors: 0 }, P)).toThrow("processors[5].options.factors: expected integer ≥ 1 and ≤ 256, got 0");
    expect(() => recommend.validateOptions({ lambda: 0 }, P)).toThrow(/options\.lambda: expected number > 0/);
  });

  it("falls back to popularity before training, then recommends the unseen item of the user's taste group", () => {
    const o = recommend.validateOptions({ factors: 4, retrain_every: 1000, top_n: 1 }, P);
    const events = tastes();
    const before = recommend.process(recommend.initialState(o, "shop"), inputs([...events, { user: "a0" }]), o);
    const pop = before.outputs.at(-1)![0]!.data as Recommendations;
    expect(pop.source).toBe("popularity");
    expect(pop.items[0]!.item).toMatch(/^y/);
    const o2 = recommend.validateOptions({ factors: 4, retrain_every: events.length, top_n: 1 }, P);
    const after = recommend.process(recommend.initialState(o2, "shop"), inputs([...events, { user: "a0" }, { user: "b0" }]), o2);
    const [a0, b0] = after.outputs.slice(-2).map((x) => x[0]!.data as Recommendations);
    expect(a0).toMatchObject({ source: "model", modelVersion: 1, items: [{ item: "x4" }] });
    expect(b0!.items[0]!.item).toBe("y4");
  });

  it("folds each interaction into the user's vector between retrains, deterministically across batches", () => {
    const o = recommend.validateOptions({ factors: 4, retrain_every: 20, emit_on_interaction: true, top_n: 3 }, P);
    const events = [...tastes(), { user: "new", item: "x1", weight: 3 }, { user: "new", item: "x2" }];
    const once = recommend.process(recommend.initialState(o, "shop"), inputs(events), o);
    const last = once.outputs.at(-1)![0]!.data as Recommendations;
    expect(last.user).toBe("new");
    expect(last.items.map((x) => x.item).filter((x) => x.startsWith("x")).length).toBeGreaterThanOrEqual(2);
    let state = recommend.initialState(o, "shop");
    const split: unknown[] = [];
    for (let i = 0; i < events.length; i += 9) {
      const r = recommend.process(JSON.parse(JSON.stringify(state)), inputs(events).slice(i, i + 9), o);
      state = r.state;
      split.push(...r.outputs);
    }
    expect(JSON.stringify(split)).toBe(JSON.stringify(once.outputs));
  });

  it("forgets the least recently seen pairs beyond maxInteractions, and rejects bad events naming the field", () => {
    const o = recommend.validateOptions({ max_interactions: 2 }, P);
    const r = recommend.process(recommend.initialState(o, "shop"), inputs([{ user: 1, item: "a" }, { user: 1, item: "b" }, { user: 1, item: "a" }, { user: 2, item: "c" }]), o);
    expect(r.state.pairs.map(([u, i]) => `${r.state.users[u]}:${r.state.items[i]}`)).toEqual(["1:a", "2:c"]);
    expect(() => recommend.process(r.state, inputs([{ user: "", item: "a" }]), o)).toThrow(/inputs\[0\]\.data\.user/);
    expect(() => recommend.process(r.state, inputs([{ user: "u", item: "a", weight: -1 }]), o)).toThrow(/inputs\[0\]\.data\.weight/);
  });
});
