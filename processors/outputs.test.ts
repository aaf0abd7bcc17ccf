// The derived events a batch result becomes: the headers built from checked constants must
// be those EventHeaders.append builds (names, values, order), bodies must be the result's
// bytes, and a source header value carrying a line break must not become an injected
// header of the output.
import type { JsMsg } from "@nats-io/jetstream";
import { describe, expect, it } from "vitest";
import { EventHeaders, HEADERS } from "../streams/index.js";
import { parseConfig, pipelineSections } from "./index.js";
import type { Entry } from "./entry.js";
import { collectOutputs } from "./outputs.js";
import type { BatchResult } from "./task.js";

const cfg = parseConfig(`processors:\n  - name: p1\n    kind: echo/echo\n    subjects: ["evt.t1.x.*"]\n`, pipelineSections({ threads: 1 }), undefined).processors[0]!;
const enc = new TextEncoder();

/** An entry as entryOf builds it from a received message: header block then body in `raw`. */
function entry(seq: number, key: string, headerBlock: string, body = "{}"): Entry {
  const head = enc.encode(headerBlock);
  const raw = new Uint8Array(head.length + body.length);
  raw.set(head, 0);
  raw.set(enc.encode(body), head.length);
  // metaOf reads `m` only for an event without Nats-Msg-Id (its `seq-<n>` id).
  const m = { info: { streamSequence: seq } } as unknown as JsMsg;
  return { m, done: false, seq, subject: `evt.t1.x.${key}`, tenant: "t1", key, stateKey: `t1.${key}`, raw, hdr: head.length, storedAt: Date.UTC(2026, 0, 1), partition: 0, receivedAt: 0, meta: undefined };
}

function result(outputs: ReadonlyArray<{ event: number; index: number; type: string; key: string | null; body: string }>): BatchResult {
  const bodies = outputs.map((o) => enc.encode(o.body));
  const offsets = new Uint32Array(bodies.length + 1);
  bodies.forEach((b, j) => (offsets[j + 1] = offsets[j]! + b.length));
  const outBody = new Uint8Array(offsets[bodies.length]!);
  bodies.forEach((b, j) => outBody.set(b, offsets[j]!));
  return { states: [], outEvent: Uint32Array.from(outputs.map((o) => o.event)), outIndex: Uint32Array.from(outputs.map((o) => o.index)), outTypes: outputs.map((o) => o.type), outKeys: outputs.map((o) => o.key), outBody, outOffsets: offsets, failures: [] };
}

const SOURCE = "NATS/1.0\r\nNats-Msg-Id: src-1\r\nFlex-Type: OrderPlaced\r\nFlex-Time: 2026-01-01T00:00:00.000Z\r\nFlex-Correlation-Id: corr-1\r\nContent-Type: application/json\r\n\r\n";

describe("collectOutputs", () => {
  it("builds the same header block as EventHeaders.append, with the deterministic id, and the result's bytes as bodies", () => {
    const entries = [entry(41, "a", SOURCE), entry(42, "b", "NATS/1.0\r\nFlex-Type: T\r\n\r\n")];
    const out: Parameters<typeof collectOutputs>[3] = [];
    collectOutputs(cfg, entries, result([
      { event: 0, index: 0, type: "Summary", key: null, body: '{"é":"ü🎉"}' },
      { event: 0, index: 1, type: "Summary", key: "u7", body: "[1]" },
      { event: 1, index: 0, type: "Other", key: null, body: "null" },
    ]), out, () => true, [["Flex-Instance", "i-1"]]);
    const expected = (id: string, type: string, time: string, corr: string, cause: string, seq: number): string => {
      const h = new EventHeaders();
      for (const [k, v] of [[HEADERS.msgId, id], [HEADERS.type, type], [HEADERS.time, time], [HEADERS.correlationId, corr], [HEADERS.causationId, cause], [HEADERS.schema, "1"], [HEADERS.contentType, "application/json"], ["Flex-Source-Seq", String(seq)], ["Flex-Instance", "i-1"]] as const) h.append(k, v);
      return h.toString();
    };
    expect(out.map((o) => o.subject)).toEqual(["drv.t1.p1.a", "drv.t1.p1.u7", "drv.t1.p1.b"]);
    expect(out.map((o) => o.headers.toString())).toEqual([
      expected("p1:41:0", "Summary", "2026-01-01T00:00:00.000Z", "corr-1", "src-1", 41),
      expected("p1:41:1", "Summary", "2026-01-01T00:00:00.000Z", "corr-1", "src-1", 41),
      // No id, time or correlation id on the source: `seq-<n>`, its stored time, the id.
      expected("p1:42:0", "Other", "2026-01-01T00:00:00.000Z", "seq-42", "seq-42", 42),
    ]);
    expect(out.map((o) => new TextDecoder().decode(o.data))).toEqual(['{"é":"ü🎉"}', "[1]", "null"]);
  });

  it("leaves out the events `include` refuses", () => {
    const out: Parameters<typeof collectOutputs>[3] = [];
    collectOutputs(cfg, [entry(1, "a", SOURCE), entry(2, "a", SOURCE)], result([{ event: 0, index: 0, type: "S", key: null, body: "1" }, { event: 1, index: 0, type: "S", key: null, body: "2" }]), out, (i) => i === 1);
    expect(out.map((o) => o.headers.get(HEADERS.msgId))).toEqual(["p1:2:0"]);
  });

  it("never carries a line break of a source header value or an output type into a derived event's headers", () => {
    // A bare \n is not a header line end, so the parsed value keeps it; copied on, it would
    // start a forged `Nats-Msg-Id` line in the derived event's headers. Such a value counts
    // as absent (the defaults apply); an output type with one is refused.
    const forged = "NATS/1.0\r\nNats-Msg-Id: src-1\r\nFlex-Time: 2026-01-01T00:00:00.000Z\nNats-Msg-Id: forged\r\nFlex-Correlation-Id: c\nNats-Msg-Id: forged\r\n\r\n";
    const out: Parameters<typeof collectOutputs>[3] = [];
    collectOutputs(cfg, [entry(1, "a", forged)], result([{ event: 0, index: 0, type: "S", key: null, body: "1" }]), out, () => true);
    const block = out[0]!.headers.toString();
    expect(block).not.toContain("forged");
    expect(block.match(/^Nats-Msg-Id:/gmu)).toHaveLength(1);
    expect([out[0]!.headers.get(HEADERS.msgId), out[0]!.headers.get(HEADERS.correlationId), out[0]!.headers.get(HEADERS.time)]).toEqual(["p1:1:0", "src-1", "2026-01-01T00:00:00.000Z"]);
    const more: Parameters<typeof collectOutputs>[3] = [];
    expect(() => collectOutputs(cfg, [entry(1, "a", SOURCE)], result([{ event: 0, index: 0, type: "S\r\nNats-Msg-Id: forged", key: null, body: "1" }]), more, () => true)).toThrow(/Flex-Type: values cannot contain/u);
    expect(more).toEqual([]);
  });

  it("refuses an output key that is not a subject token", () => {
    const out: Parameters<typeof collectOutputs>[3] = [];
    expect(() => collectOutputs(cfg, [entry(1, "a", SOURCE)], result([{ event: 0, index: 0, type: "S", key: "x.>", body: "1" }]), out, () => true)).toThrow(/key/u);
    expect(out).toEqual([]);
  });
});
