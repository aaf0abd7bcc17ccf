import { describe, expect, it } from "vitest";
import { parseAckReply, subjectMatchesFilter } from "./stream-reader.js";
import type { AckReplyInfo } from "./stream-reader.js";

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const fresh = (): AckReplyInfo => ({ streamSeq: -1, deliverySeq: -1, storedAt: -1, pending: -1, numbersAt: 0 });

describe("parseAckReply", () => {
  it("reads the old form (9 tokens)", () => {
    const out = fresh();
    expect(parseAckReply(bytes("$JS.ACK.FLEX_EVENTS.c1.1.1234567.42.1732440000123456789.17"), out)).toBe(true);
    expect(out).toMatchObject({ streamSeq: 1_234_567, deliverySeq: 42, storedAt: 1_732_440_000_123, pending: 17 });
  });

  it("reads the form with domain and account hash, with and without the random token", () => {
    for (const reply of ["$JS.ACK._.HASH.FLEX_EVENTS.c1.3.99.7.1732440000999999999.0", "$JS.ACK.hub.HASH.FLEX_EVENTS.c1.3.99.7.1732440000999999999.0.r4nd"]) {
      const out = fresh();
      expect(parseAckReply(bytes(reply), out)).toBe(true);
      // The ms are truncated, not rounded: 999.999999 ms stays in its millisecond.
      expect(out).toMatchObject({ streamSeq: 99, deliverySeq: 7, storedAt: 1_732_440_000_999, pending: 0 });
    }
  });

  it("reuses the offset of the previous reply and still reads a reply of another shape", () => {
    const out = fresh();
    expect(parseAckReply(bytes("$JS.ACK.S.consumer.1.10.1.1732440000000000000.5"), out)).toBe(true);
    const at = out.numbersAt;
    expect(at).toBeGreaterThan(8);
    expect(parseAckReply(bytes("$JS.ACK.S.consumer.1.11.2.1732440000001000000.4"), out)).toBe(true);
    expect(out).toMatchObject({ streamSeq: 11, deliverySeq: 2, storedAt: 1_732_440_000_001, pending: 4, numbersAt: at });
    // A longer consumer name moves the numbers: the offset is found again.
    expect(parseAckReply(bytes("$JS.ACK.S.another_consumer.1.12.3.1732440000002000000.3"), out)).toBe(true);
    expect(out).toMatchObject({ streamSeq: 12, deliverySeq: 3, pending: 3 });
  });

  it("refuses what is not a JetStream reply", () => {
    for (const reply of ["", "_INBOX.abc", "$JS.ACK.S.c.1.2.3", "$JS.ACK.S.c.1.x.3.4.5", "$JS.API.S.c.1.2.3.4.5", "$JS.ACK.S.c.1..3.4.5"]) {
      expect(parseAckReply(bytes(reply), fresh())).toBe(false);
    }
  });
});

describe("subjectMatchesFilter", () => {
  const matches = (filter: string, subject: string): boolean => subjectMatchesFilter(filter.split("."), subject);

  it("matches literal tokens, `*` for one token and `>` for one or more", () => {
    expect(matches("evt.acme.>", "evt.acme.order.o1")).toBe(true);
    expect(matches("evt.acme.>", "evt.acme.x")).toBe(true);
    expect(matches("evt.*.order.*", "evt.acme.order.o1")).toBe(true);
    expect(matches("evt.acme.order.o1", "evt.acme.order.o1")).toBe(true);
    expect(matches(">", "evt")).toBe(true);
  });

  it("does not let a look-alike tenant or subject through", () => {
    expect(matches("evt.acme.>", "evt.acme2.order.o1")).toBe(false);
    expect(matches("evt.acme.>", "evt.acm.order.o1")).toBe(false);
    expect(matches("evt.acme.>", "evt.acme")).toBe(false);
    expect(matches("evt.acme.>", "evt.acme.")).toBe(false);
    expect(matches("evt.*.order.*", "evt.acme.order.o1.x")).toBe(false);
    expect(matches("evt.*.order.*", "evt.acme.order")).toBe(false);
    expect(matches("evt.*.order.*", "evt..order.o1")).toBe(false);
    expect(matches("evt.acme.order.o1", "evt.acme.order.o10")).toBe(false);
    expect(matches("evt.acme.order.o1", "evt.acme.order")).toBe(false);
    expect(matches("drv.acme.>", "evt.acme.order.o1")).toBe(false);
  });
});
