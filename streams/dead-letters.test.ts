import { describe, expect, it } from "vitest";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { checkDeadLetterFilter, InvalidOptionError, readDeadLetter, redriveMessage, REDRIVE_HEADERS, RedriveUnsupportedError, SubjectTokenError } from "./index.js";

const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));

function processorLetter(tenant: string, originalSubject: string, previousReasons?: string[]) {
  const h = natsHeaders();
  h.set("Flex-Source-Seq", "42");
  h.set("Flex-Source-Subject", originalSubject);
  h.set("Flex-Causation-Id", "evt-42");
  return readDeadLetter(`dlq.${tenant}.anomaly`, 7, Date.UTC(2026, 0, 1), h, enc({ reason: "now", attempts: 5, type: "Reading", time: "2026-01-01T00:00:00.000Z", error: { code: "X" }, data: { v: 1 }, ...(previousReasons ? { previousReasons } : {}) }));
}

function projectionLetter(tenant: string, stream: string, originalSubject: string) {
  const h = natsHeaders();
  h.set("Flex-Type", "Reading");
  h.set("Flex-Time", "2026-01-01T00:00:00.000Z");
  h.set("Flex-Causation-Id", "evt-42");
  h.set("Flex-Correlation-Id", "corr-1");
  h.set("Flex-Dlq-Reason", "no such column");
  h.set("Flex-Dlq-Source", "projection:orders");
  h.set("Flex-Dlq-Stream", stream);
  h.set("Flex-Dlq-Seq", "42");
  h.set("Flex-Dlq-Subject", originalSubject);
  return readDeadLetter(`dlq.${tenant}.projection_orders`, 9, Date.UTC(2026, 0, 1), h, enc({ v: 2 }));
}

describe("dead-letter filters", () => {
  it("accept strings as a query string or command line gives them", () => {
    expect(checkDeadLetterFilter({ seq: "12", source: "anomaly", since: "2026-01-01T00:00:00Z", until: "2026-01-02T00:00:00+02:00", reason: "Poison", limit: "5" })).toEqual({
      seq: 12, source: "anomaly", since: Date.UTC(2026, 0, 1), until: Date.UTC(2026, 0, 1, 22), reason: "poison", limit: 5,
    });
  });

  it.each([
    [{ seq: "0" }, "seq"],
    [{ seq: "1e3" }, "seq"],
    [{ since: "2026-01-01" }, "since"],
    [{ until: "tomorrow" }, "until"],
    [{ since: "2026-01-02T00:00:00Z", until: "2026-01-01T00:00:00Z" }, "until"],
    [{ reason: "" }, "reason"],
    [{ limit: "10001" }, "limit"],
    [{ tenant: "other" }, "tenant"],
  ])("refuse %j naming `%s`", (filter, field) => {
    const err = (() => {
      try {
        checkDeadLetterFilter(filter as never);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(InvalidOptionError);
    expect((err as InvalidOptionError).field).toBe(field);
    expect((err as Error).message).toContain(`\`${field}\``);
  });

  it("refuse a source that is not a subject token", () => {
    expect(() => checkDeadLetterFilter({ source: "a.>" })).toThrow(SubjectTokenError);
  });
});

describe("redrive messages", () => {
  it("go to redrive.<tenant>.<source> with a deterministic id, the original subject and sequence, and every reason so far", () => {
    const d = processorLetter("acme", "evt.acme.sensor.s1", ["before"]);
    expect(d.reasons).toEqual(["before", "now"]);
    const m = redriveMessage(d);
    expect(m.subject).toBe("redrive.acme.anomaly");
    expect(m.headers.get("Nats-Msg-Id")).toBe("redrive:acme:anomaly:7");
    expect(redriveMessage(d).headers.get("Nats-Msg-Id")).toBe("redrive:acme:anomaly:7");
    expect(m.headers.get(REDRIVE_HEADERS.subject)).toBe("evt.acme.sensor.s1");
    expect(m.headers.get(REDRIVE_HEADERS.seq)).toBe("42");
    expect(JSON.parse(m.headers.get(REDRIVE_HEADERS.reasons))).toEqual(["before", "now"]);
    expect(JSON.parse(new TextDecoder().decode(m.data))).toEqual({ v: 1 });
  });

  it("send a projection's dead letter to reapply.<tenant>.projection_<name> in FLEX_REAPPLY with its stream", () => {
    const m = redriveMessage(projectionLetter("acme", "FLEX_EVENTS", "evt.acme.order.o1"));
    expect(m.subject).toBe("reapply.acme.projection_orders");
    expect(m.stream).toBe("FLEX_REAPPLY");
    expect(m.headers.get("Nats-Msg-Id")).toBe("redrive:acme:projection_orders:9");
    expect(m.headers.get(REDRIVE_HEADERS.stream)).toBe("FLEX_EVENTS");
    expect(m.headers.get(REDRIVE_HEADERS.seq)).toBe("42");
    expect(m.headers.get(REDRIVE_HEADERS.dlqSeq)).toBe("9");
    expect(m.headers.get("Flex-Causation-Id")).toBe("evt-42");
    expect(JSON.parse(m.headers.get(REDRIVE_HEADERS.reasons))).toEqual(["no such column"]);
    expect(JSON.parse(new TextDecoder().decode(m.data))).toEqual({ v: 2 });
    // A projection of processor outputs: a derived subject of the same tenant is fine.
    expect(redriveMessage(projectionLetter("acme", "FLEX_DERIVED", "drv.acme.anomaly.s1")).headers.get(REDRIVE_HEADERS.stream)).toBe("FLEX_DERIVED");
  });

  it("refuse a projection's dead letter naming another tenant's event, a derived subject read from FLEX_EVENTS, or an unknown stream", () => {
    expect(() => redriveMessage(projectionLetter("acme", "FLEX_EVENTS", "evt.other.order.o1"))).toThrow(RedriveUnsupportedError);
    expect(() => redriveMessage(projectionLetter("acme", "FLEX_DERIVED", "drv.other.anomaly.s1"))).toThrow(RedriveUnsupportedError);
    expect(() => redriveMessage(projectionLetter("acme", "FLEX_EVENTS", "drv.acme.anomaly.s1"))).toThrow(RedriveUnsupportedError);
    expect(() => redriveMessage(projectionLetter("acme", "FLEX_DLQ", "evt.acme.order.o1"))).toThrow(RedriveUnsupportedError);
  });

  it("refuse a dead letter whose original subject is another tenant's", () => {
    expect(() => redriveMessage(processorLetter("acme", "evt.other.sensor.s1"))).toThrow(RedriveUnsupportedError);
    expect(() => redriveMessage(processorLetter("acme", "drv.acme.x.y"))).toThrow(RedriveUnsupportedError);
  });
});
