import { describe, expect, it } from "vitest";
import { splitByKey } from "./client.js";
import { PluginRejectedError } from "./errors.js";
import { checkControlResponse, controlSubjects, endpointName, endpointSubject, jsonPointerToPath, parseReply } from "./protocol.js";
import type { ProcessorRequest, SinkRequest, SourceRequest } from "./protocol.js";

const enc = (v: unknown): Uint8Array => new TextEncoder().encode(typeof v === "string" ? v : JSON.stringify(v));

function batch(keys: readonly string[], dataBytes = 10): ProcessorRequest {
  return {
    protocol: 1,
    tenant: "acme",
    kind: "echo",
    options: {},
    states: Object.fromEntries([...new Set(keys)].map((k) => [k, { count: 1 }])),
    inputs: keys.map((key, i) => ({ seq: i + 1, subject: `evt.acme.c.${key}`, key, id: `e${i}`, type: "T", time: "2026-01-01T00:00:00Z", data: { i, pad: "p".repeat(dataBytes) } })),
  };
}

describe("protocol names", () => {
  it("builds endpoint subjects and names and the three control subject forms", () => {
    expect(endpointSubject("echo", "processor", "echo")).toBe("flexplugin.echo.processor.echo");
    expect(endpointName("sink", "http")).toBe("sink-http");
    expect(controlSubjects("INFO", "echo", "ID1")).toEqual(["$SRV.INFO", "$SRV.INFO.echo", "$SRV.INFO.echo.ID1"]);
    expect(jsonPointerToPath("/outputs/3/input")).toBe("outputs[3].input");
  });
});

describe("parseReply", () => {
  const req = batch(["a", "b"]);
  it("accepts a valid processor reply", () => {
    const r = parseReply("processor", enc({ states: { a: { count: 2 } }, outputs: [{ input: 0, type: "X", data: 1 }, { input: 1, type: "X", data: null, key: "k" }] }), req);
    expect(r.ok).toBe(true);
  });
  it.each([
    ["not JSON", "{oops", "", /expected JSON/],
    ["missing outputs", { states: {} }, "outputs", /required/],
    ["a string index", { states: {}, outputs: [{ input: "0", type: "X", data: 1 }] }, "outputs[0].input", /expected integer, got "0" \(string/],
    ["an index past the inputs", { states: {}, outputs: [{ input: 2, type: "X", data: 1 }] }, "outputs[0].input", /below 2/],
    ["outputs out of input order", { states: {}, outputs: [{ input: 1, type: "X", data: 1 }, { input: 0, type: "X", data: 1 }] }, "outputs[1].input", /input order/],
    ["a state for a key not sent", { states: { zz: 1 }, outputs: [] }, "states.zz", /not sent/],
    ["an unknown field", { states: {}, outputs: [], extra: 1 }, "extra", /unknown field/],
    ["an empty type", { states: {}, outputs: [{ input: 0, type: "", data: 1 }] }, "outputs[0].type", /fewer than 1/],
    ["an output key that would add subject tokens", { states: {}, outputs: [{ input: 0, type: "X", data: 1, key: "a.b" }] }, "outputs[0].key", /no dots/],
    ["an output key with a wildcard", { states: {}, outputs: [{ input: 0, type: "X", data: 1, key: ">" }] }, "outputs[0].key", /matching/],
    ["a type with CR/LF (header injection)", { states: {}, outputs: [{ input: 0, type: "X\r\nFlex-Tenant: other", data: 1 }] }, "outputs[0].type", /control characters/],
    ["a state for __proto__ not sent", JSON.parse('{"states":{"__proto__":{"x":1}},"outputs":[]}'), "states.__proto__", /not sent/],
  ])("refuses %s, naming the path", (_what, body, path, message) => {
    const r = parseReply("processor", enc(body), req);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.issue.path).toBe(path);
      expect(r.issue.message).toMatch(message);
    }
  });
  it("refuses a reply over the size limit before parsing it", () => {
    const r = parseReply("step", enc({ output: "x".repeat(2000) }), { protocol: 1, tenant: "t", step: "s", input: 1, run: { id: "r", workflow: "w", attempt: 1 } }, 1000);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.issue.message).toMatch(/at most 1000 bytes, got 20\d\d bytes/);
  });
  it("refuses a sink that delivered more than it got and a source over max", () => {
    const sink: SinkRequest = { protocol: 1, tenant: "t", sink: "s", options: {}, events: [] };
    const s = parseReply("sink", enc({ delivered: 1 }), sink);
    expect(s.ok ? "" : s.issue.path).toBe("delivered");
    const source: SourceRequest = { protocol: 1, tenant: "t", source: "s", options: {}, cursor: null, max: 1 };
    const r = parseReply("source", enc({ records: [{ key: "k", type: "T", data: 1 }, { key: "k", type: "T", data: 2 }], cursor: "2" }), source);
    expect(r.ok ? "" : r.issue.message).toMatch(/at most 1 records/);
  });
  it("checks services protocol responses", () => {
    expect(checkControlResponse("PING", { type: "io.nats.micro.v1.ping_response", name: "a", id: "b", version: "1.0.0", metadata: {} }).ok).toBe(true);
    const bad = checkControlResponse("STATS", { type: "io.nats.micro.v1.stats_response", name: "a", id: "b", version: "1.0.0", started: "x", endpoints: [{ name: "e", subject: "s", num_requests: -1, num_errors: 0, processing_time: 0, average_processing_time: 0 }] });
    expect(bad.ok ? "" : bad.issue.path).toBe("endpoints[0].num_requests");
  });
});

describe("splitByKey", () => {
  const context = { service: "echo", subject: "flexplugin.echo.processor.echo" };
  it("keeps each key whole and in order and every request under the limit", () => {
    const keys = ["a", "b", "a", "c", "d", "b", "e", "a", "f", "c"];
    const req = batch(keys, 300);
    const limit = 1500;
    const chunks = splitByKey(req, limit, context);
    expect(chunks.length).toBeGreaterThan(1);
    const seen = new Map<string, number>();
    const all: number[] = [];
    chunks.forEach((c, n) => {
      expect(Buffer.byteLength(JSON.stringify(c.request))).toBeLessThanOrEqual(limit);
      expect(Object.keys(c.request.states).sort()).toEqual([...new Set(c.request.inputs.map((i) => i.key))].sort());
      c.request.inputs.forEach((input, j) => {
        expect(seen.get(input.key) ?? n).toBe(n);
        seen.set(input.key, n);
        expect(input).toBe(req.inputs[c.origin[j]!]);
      });
      expect([...c.origin]).toEqual([...c.origin].sort((x, y) => x - y));
      all.push(...c.origin);
    });
    expect(all.sort((x, y) => x - y)).toEqual(keys.map((_, i) => i));
  });
  it("keeps a key named __proto__ as data, not as a prototype", () => {
    const req = batch(["__proto__", "b"]);
    const chunks = splitByKey(req, 100_000, context);
    expect(Object.keys(chunks[0]!.request.states).sort()).toEqual(["__proto__", "b"]);
    expect(JSON.parse(JSON.stringify(chunks[0]!.request)).states.__proto__).toEqual({ count: 1 });
  });
  it("refuses with 413 a key whose inputs alone exceed the limit", () => {
    expect(() => splitByKey(batch(["a", "a", "a", "b"], 600), 1500, context)).toThrow(PluginRejectedError);
    try {
      splitByKey(batch(["a", "a", "a"], 600), 1500, context);
    } catch (err) {
      expect((err as PluginRejectedError).status).toBe(413);
      expect((err as PluginRejectedError).code).toBe("FLEX_PLUGIN_REJECTED");
    }
  });
});

describe("parseReply: per-input rejections (optional `rejected`)", () => {
  const req = batch(["a", "b", "a"]);
  it("accepts rejections in input order with no output from a rejected input", () => {
    const r = parseReply("processor", enc({ states: {}, outputs: [{ input: 0, type: "X", data: 1 }, { input: 2, type: "X", data: 1 }], rejected: [{ input: 1, reason: "bad" }] }), req);
    expect(r).toMatchObject({ ok: true, value: { rejected: [{ input: 1, reason: "bad" }] } });
  });
  it.each([
    ["an index past the inputs", [{ input: 3, reason: "x" }], [], "rejected[0].input", /below 3/],
    ["twice the same input", [{ input: 1, reason: "x" }, { input: 1, reason: "y" }], [], "rejected[1].input", /each input once/],
    ["out of order", [{ input: 2, reason: "x" }, { input: 0, reason: "y" }], [], "rejected[1].input", /input order/],
    ["an output from a rejected input", [{ input: 1, reason: "x" }], [{ input: 1, type: "X", data: 1 }], "outputs[0].input", /rejected input/],
    ["a reason that is not a string", [{ input: 1, reason: 5 }], [], "rejected[0].reason", /string/],
    ["an unknown field", [{ input: 1, reason: "x", why: 1 }], [], "rejected[0].why", /absent|unknown|additional|why/],
  ])("refuses %s", (_label, rejected, outputs, path, message) => {
    const r = parseReply("processor", enc({ states: {}, outputs, rejected }), req);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.issue.path).toBe(path);
      expect(r.issue.message).toMatch(message);
    }
  });
});
