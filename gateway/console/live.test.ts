import { describe, expect, it } from "vitest";
import { parseSse } from "./live.js";
import { filterOf } from "./pages/projections.js";

describe("parseSse", () => {
  it("splits events, keeps ids, skips comments and keeps a partial block for the next chunk", () => {
    const first = parseSse('retry: 2000\nevent: ready\ndata: {"a":1}\n\n: ping\n\nid: 7\nevent: event\ndata: {"seq":7}\n\nid: 8\nevent: ev');
    expect(first.messages).toEqual([
      { event: "ready", id: undefined, data: { a: 1 } },
      { event: "event", id: "7", data: { seq: 7 } },
    ]);
    expect(first.rest).toBe("id: 8\nevent: ev");
    const second = parseSse(`${first.rest}ent\r\ndata: {"seq":8}\r\n\r\n`);
    expect(second.messages).toEqual([{ event: "event", id: "8", data: { seq: 8 } }]);
    expect(second.rest).toBe("");
  });
});

describe("filterOf", () => {
  it("types values by column, splits `in`, merges operators of one column, skips empty columns", () => {
    const columns = { category: "text", revision: "integer", doc: "json" };
    expect(filterOf([], columns)).toBeUndefined();
    expect(filterOf([
      { column: "category", op: "eq", value: "meter" },
      { column: "revision", op: "gte", value: "2" },
      { column: "revision", op: "lt", value: "9" },
      { column: "doc.kwh", op: "in", value: "a, b" },
      { column: "", op: "eq", value: "x" },
    ], columns)).toEqual({ category: { eq: "meter" }, revision: { gte: 2, lt: 9 }, "doc.kwh": { in: ["a", "b"] } });
  });
});
