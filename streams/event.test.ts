import { describe, expect, it } from "vitest";
import { headers as natsHeaders, Match } from "@nats-io/transport-node";
import { EventHeaders } from "./event-headers.js";
import { encodeEvent, headerFieldsFromBlock, toLazyStoredEvent, toStoredEvent } from "./event.js";
import { InvalidEventError } from "./errors.js";

const block = (text: string): Uint8Array => new TextEncoder().encode(text);

describe("header blocks", () => {
  it("reads FlexCore's fields as nats.js writes them", () => {
    const f = headerFieldsFromBlock(block("NATS/1.0\r\nNats-Msg-Id: e-1\r\nFlex-Type: Created\r\nFlex-Time: 2026-01-01T00:00:00.000Z\r\nFlex-Correlation-Id: c-1\r\nFlex-Causation-Id: e-0\r\nFlex-Schema: 2\r\nFlex-Revision: 7\r\nContent-Type: application/json\r\n\r\n"));
    expect(f).toEqual({ id: "e-1", type: "Created", time: "2026-01-01T00:00:00.000Z", correlationId: "c-1", causationId: "e-0", schema: "2", revision: "7" });
  });

  it("matches names in any case and trims values, as other clients may write them", () => {
    const f = headerFieldsFromBlock(block("NATS/1.0\r\nflex-type:  Created \r\nFLEX-TIME:2026-01-01T00:00:00.000Z\r\nnats-msg-id: é-1\r\nX-Other: 1\r\n\r\n"));
    expect(f).toEqual({ type: "Created", time: "2026-01-01T00:00:00.000Z", id: "é-1" });
  });

  it("trims a canonical name's value when it has extra spaces, and ignores look-alike names of the same length", () => {
    const f = headerFieldsFromBlock(block("NATS/1.0\r\nFlex-Type: Created \r\nFlex-Tine: x\r\nFlex-Schemx: 9\r\nFlex-Time:\t2026-01-01T00:00:00.000Z\r\n\r\n"));
    expect(f).toEqual({ type: "Created", time: "2026-01-01T00:00:00.000Z" });
  });

  it("reads a header block inside a larger buffer, in place", () => {
    const head = "NATS/1.0\r\nFlex-Type: Moved\r\n\r\n";
    const bytes = Buffer.from(`${head}{"x":1}`);
    expect(headerFieldsFromBlock(bytes, 0, head.length)).toEqual({ type: "Moved" });
    expect(toLazyStoredEvent("evt.t.c.i", 1, bytes, 0, {}, head.length).data).toEqual({ x: 1 });
  });

  it("gives defaults for a message without FlexCore's headers, lazily or not", () => {
    const data = block('{"a":1}');
    const fields = headerFieldsFromBlock(block("NATS/1.0\r\n\r\n"));
    const eager = toStoredEvent("evt.t.c.i", 5, data, 0, fields);
    const lazy = toLazyStoredEvent("evt.t.c.i", 5, data, 0, fields);
    expect(eager).toEqual({ id: "seq-5", type: "unknown", data: { a: 1 }, time: "1970-01-01T00:00:00.000Z", correlationId: undefined, causationId: undefined, schema: "1", subject: "evt.t.c.i", seq: 5, revision: undefined, storedAt: 0 });
    expect(JSON.parse(JSON.stringify(lazy))).toEqual(JSON.parse(JSON.stringify(eager)));
    expect(toLazyStoredEvent("evt.t.c.i", 5, data, 0, { revision: "3" }).revision).toBe(3);
  });

  it("reads a lazy event from a header block's text as the full parse does", () => {
    const data = block('{"a":1}');
    const texts = [
      "NATS/1.0\r\nNats-Msg-Id: e-1\r\nFlex-Type: Created\r\nFlex-Time: 2026-01-01T00:00:00.000Z\r\nFlex-Correlation-Id: c-1\r\nFlex-Causation-Id: e-0\r\nFlex-Schema: 2\r\nFlex-Revision: 7\r\n\r\n",
      // Other spellings and spacing: type and time are not found by their canonical lines.
      "NATS/1.0\r\nflex-type:  Created \r\nFLEX-TIME:2026-01-01T00:00:00.000Z\r\nnats-msg-id: é-1\r\n\r\n",
      "NATS/1.0\r\nFlex-Type:  Created \r\nFlex-Time:\t2026-01-01T00:00:00.000Z\r\nFlex-Schema: 3\r\n\r\n",
      // Canonical type, time in another case; an empty canonical value counts as absent.
      "NATS/1.0\r\nFlex-Type: Created\r\nflex-time: 2026-01-01T00:00:00.000Z\r\n\r\n",
      "NATS/1.0\r\nFlex-Type:\r\nFlex-Time: 2026-01-01T00:00:00.000Z\r\n\r\n",
      "NATS/1.0\r\n\r\n",
    ];
    for (const text of texts) {
      const eager = toStoredEvent("evt.t.c.i", 5, data, 1_000, headerFieldsFromBlock(block(text)));
      const lazy = toLazyStoredEvent("evt.t.c.i", 5, data, 1_000, text);
      expect(JSON.parse(JSON.stringify(lazy)), text).toEqual(JSON.parse(JSON.stringify(eager)));
      expect({ id: lazy.id, correlationId: lazy.correlationId, causationId: lazy.causationId, schema: lazy.schema, revision: lazy.revision }, text).toEqual({
        id: eager.id, correlationId: eager.correlationId, causationId: eager.causationId, schema: eager.schema, revision: eager.revision,
      });
    }
  });
});

describe("event headers", () => {
  it("encode as nats.js's headers do and answer the MsgHdrs methods alike", () => {
    const mine = new EventHeaders();
    const theirs = natsHeaders();
    for (const [k, v] of [["Nats-Msg-Id", "e-1"], ["Flex-Type", " Created "], ["X-Multi", "a"], ["X-Multi", "b"]] as const) {
      mine.append(k, v);
      theirs.append(k, v);
    }
    expect(new TextDecoder().decode(mine.encode())).toBe(new TextDecoder().decode((theirs as unknown as { encode(): Uint8Array }).encode()));
    expect([...mine]).toEqual([...theirs]);
    expect(mine.keys()).toEqual(theirs.keys());
    for (const h of [mine, theirs]) {
      expect(h.get("Flex-Type")).toBe("Created");
      expect(h.get("flex-type", Match.IgnoreCase)).toBe("Created");
      expect(h.get("flex-type")).toBe("");
      expect(h.values("X-Multi")).toEqual(["a", "b"]);
      expect(h.last("X-Multi")).toBe("b");
      h.set("nats-msg-id", "e-2", Match.CanonicalMIME);
      expect(h.get("Nats-Msg-Id")).toBe("e-2");
      h.delete("X-Multi");
      expect(h.has("X-Multi")).toBe(false);
      expect(() => h.append("Bad Name", "x")).toThrow();
      expect(() => h.append("X-Ok", "a\r\nInjected: 1")).toThrow();
    }
    // The same final set, encoded after the changes: the encoded block kept from before is not reused.
    expect(new TextDecoder().decode(mine.encode())).toBe(new TextDecoder().decode((theirs as unknown as { encode(): Uint8Array }).encode()));
    expect(new TextDecoder().decode(mine.encode())).toContain("Nats-Msg-Id: e-2\r\n");
  });

  it("an event stamped now carries the current millisecond, also when many share one", async () => {
    const a = encodeEvent({ type: "T", data: 1 }).headers.get("Flex-Time");
    const b = encodeEvent({ type: "T", data: 1 }).headers.get("Flex-Time");
    expect(Date.parse(b) - Date.parse(a)).toBeGreaterThanOrEqual(0);
    await new Promise((res) => setTimeout(res, 5));
    const before = Date.now();
    const c = encodeEvent({ type: "T", data: 1 }).headers.get("Flex-Time");
    expect(Date.parse(c)).toBeGreaterThanOrEqual(before);
    expect(Date.parse(c)).toBeLessThanOrEqual(Date.now());
  });

  it("are what encodeEvent builds, and read back as the event's fields", () => {
    const e = encodeEvent({ type: "Created", data: { a: 1 }, correlationId: "c-1", causationId: "e-0" });
    expect(e.headers).toBeInstanceOf(EventHeaders);
    const f = headerFieldsFromBlock((e.headers as EventHeaders).encode());
    expect(f).toMatchObject({ id: e.id, type: "Created", correlationId: "c-1", causationId: "e-0", schema: "1" });
  });
});

describe("encodeEvent errors", () => {
  it("name the field with the caller's path, the value and what was expected", () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ type: "", data: 1 }, "events[2].type"],
      [{ type: "T", data: 1, id: "a\r\nInjected: 1" }, "events[2].id"],
      [{ type: "T", data: 1, time: "yesterday" }, "events[2].time"],
      [{ type: "T", data: 1, correlationId: 5 }, "events[2].correlationId"],
      [{ type: "T", data: 1, causationId: "" }, "events[2].causationId"],
      [{ type: "T", data: 1n }, "events[2].data"],
    ];
    for (const [event, field] of cases) {
      let caught: unknown;
      try {
        encodeEvent(event as never, "events[2].");
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(InvalidEventError);
      expect((caught as InvalidEventError).field).toBe(field);
      expect((caught as Error).message).toContain(`\`${field}\``);
    }
    expect(() => encodeEvent({ type: "T", data: undefined as never })).toThrow(expect.objectContaining({ field: "data" }));
  });
});
