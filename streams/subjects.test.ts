import { describe, expect, it } from "vitest";
import { checkSubjectFilter, checkTenantName, derivedSubject, dlqSubject, eventSubject, parseSubject, SubjectTokenError, SYSTEM_TENANT, TenantReservedError } from "./index.js";

describe("subjects", () => {
  it("refuses reserved tenant names (starting with `_`) where a tenant is named, but still builds FlexCore's own subjects", () => {
    for (const name of [SYSTEM_TENANT, "_", "_other"]) {
      try {
        checkTenantName(name);
        expect.unreachable();
      } catch (err) {
        expect(err).toBeInstanceOf(TenantReservedError);
        expect((err as TenantReservedError).code).toBe("FLEX_TENANT_RESERVED");
        expect((err as TenantReservedError).field).toBe("tenant");
        expect((err as Error).message).toContain(`\`${name}\``);
      }
    }
    expect(checkTenantName("acme_corp")).toBe("acme_corp");
    expect(() => checkTenantName("a.b")).toThrow(SubjectTokenError);
    expect(() => checkTenantName(undefined, "org")).toThrow(/`org`/u);
    expect(eventSubject(SYSTEM_TENANT, "metrics", "gateway")).toBe("evt._system.metrics.gateway");
  });

  it("builds and parses the three families", () => {
    expect(eventSubject("acme", "sensor", "s-1")).toBe("evt.acme.sensor.s-1");
    expect(derivedSubject("acme", "anomaly", "s-1")).toBe("drv.acme.anomaly.s-1");
    expect(dlqSubject("acme", "anomaly")).toBe("dlq.acme.anomaly");
    expect(parseSubject("evt.acme.sensor.s-1")).toEqual({ kind: "event", tenant: "acme", category: "sensor", id: "s-1" });
    expect(parseSubject("drv.acme.anomaly.k")).toEqual({ kind: "derived", tenant: "acme", processor: "anomaly", key: "k" });
    expect(parseSubject("dlq.acme.src")).toEqual({ kind: "dlq", tenant: "acme", source: "src" });
    expect(() => parseSubject("evt.acme.sensor")).toThrow(SubjectTokenError);
    expect(() => parseSubject("foo.a.b.c")).toThrow(SubjectTokenError);
  });

  it.each([
    ["", "empty"],
    ["a.b", "`.`"],
    ["*", "`*`"],
    [">", "`>`"],
    ["a b", "U+0020"],
    ["a\tb", "U+0009"],
    ["a\u0000", "U+0000"],
    ["é".repeat(65), "128 bytes"],
  ])("rejects token %j naming the token and the reason", (value, reason) => {
    try {
      eventSubject("acme", "sensor", value);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(SubjectTokenError);
      expect((err as SubjectTokenError).code).toBe("FLEX_SUBJECT_TOKEN");
      expect((err as SubjectTokenError).token).toBe("id");
      expect((err as Error).message).toContain(reason);
    }
  });

  it("accepts ids of exactly 128 bytes and unicode", () => {
    expect(eventSubject("acme", "c", "a".repeat(128))).toHaveLength(4 + 5 + 2 + 128);
    expect(eventSubject("acme", "c", "ü-日本")).toBe("evt.acme.c.ü-日本");
  });

  it("checks filters", () => {
    expect(checkSubjectFilter("evt.acme.>")).toBe("evt.acme.>");
    expect(checkSubjectFilter("evt.*.sensor.*")).toBe("evt.*.sensor.*");
    expect(() => checkSubjectFilter("evt.>.x")).toThrow(SubjectTokenError);
    expect(() => checkSubjectFilter("evt..x")).toThrow(SubjectTokenError);
  });
});
