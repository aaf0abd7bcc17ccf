import { describe, expect, it } from "vitest";
import { cronMatches, CronSyntaxError, latestFireTime, nextCronTime, parseCron } from "./cron.js";

const at = (iso: string): Date => new Date(iso);

describe("cron", () => {
  it("matches fields, ranges, steps, lists, names and macros (UTC)", () => {
    const s = parseCron("*/15 9-17 * * mon-fri");
    expect(cronMatches(s, at("2026-11-24T09:30:00Z"))).toBe(true); // a Tuesday
    expect(cronMatches(s, at("2026-11-24T09:31:00Z"))).toBe(false);
    expect(cronMatches(s, at("2026-11-29T09:30:00Z"))).toBe(false); // Sunday
    expect(cronMatches(parseCron("0 6 * * *"), at("2026-11-24T06:00:59Z"))).toBe(true);
    expect(cronMatches(parseCron("@hourly"), at("2026-11-24T13:00:00Z"))).toBe(true);
    expect(cronMatches(parseCron("0 0 1,15 jan,jul *"), at("2026-07-15T00:00:00Z"))).toBe(true);
    // Both day fields restricted: either matches (Vixie cron).
    const either = parseCron("0 0 13 * 5");
    expect(cronMatches(either, at("2026-11-13T00:00:00Z"))).toBe(true); // the 13th
    expect(cronMatches(either, at("2026-11-20T00:00:00Z"))).toBe(true); // a Friday
    expect(cronMatches(either, at("2026-11-21T00:00:00Z"))).toBe(false);
    expect(cronMatches(parseCron("0 0 * * 7"), at("2026-11-29T00:00:00Z"))).toBe(true); // 7 = Sunday
  });

  it("finds the next time", () => {
    expect(nextCronTime(parseCron("30 6 * * *"), at("2026-11-24T07:00:00Z"))?.toISOString()).toBe("2026-11-25T06:30:00.000Z");
    expect(nextCronTime(parseCron("0 0 29 2 *"), at("2026-03-01T00:00:00Z"))?.toISOString()).toBe("2028-02-29T00:00:00.000Z");
  });

  it("reads the fields in a time zone, daylight saving included", () => {
    const berlin = parseCron("0 9 * * *", "Europe/Berlin");
    expect(berlin.next(at("2026-07-01T00:00:00Z"))?.toISOString()).toBe("2026-07-01T07:00:00.000Z"); // CEST, UTC+2
    expect(berlin.next(at("2026-12-01T00:00:00Z"))?.toISOString()).toBe("2026-12-01T08:00:00.000Z"); // CET, UTC+1
  });

  it("collapses missed fires into the latest one", () => {
    const every5 = parseCron("*/5 * * * *");
    expect(latestFireTime(every5, at("2026-11-24T10:00:00Z"), at("2026-11-24T10:23:10Z"))?.toISOString()).toBe("2026-11-24T10:20:00.000Z");
    expect(latestFireTime(every5, at("2026-11-24T10:20:00Z"), at("2026-11-24T10:24:59Z"))).toBeUndefined();
  });

  it("rejects bad schedules and time zones, naming the field", () => {
    for (const [bad, text] of [
      ["* * *", "expected 5 fields"],
      ["* * * * * *", "expected 5 fields"],
      ["60 * * * *", "minute: `60` is not valid; expected values 0-59"],
      ["* 24 * * *", "hour: `24`"],
      ["* * 0 * *", "day of month: `0` is not valid; expected values 1-31"],
      ["* * * foo *", "month: `foo`"],
      ["* * * * 8", "day of week: `8`"],
      ["*/0 * * * *", "minute: `*/0`"],
      ["5-1 * * * *", "minute: `5-1`"],
      ["1,,2 * * * *", "minute: `1,,2`"],
    ] as const) {
      expect(() => parseCron(bad), bad).toThrow(CronSyntaxError);
      expect(() => parseCron(bad), bad).toThrow(text);
    }
    expect(() => parseCron("0 9 * * *", "Mars/Base")).toThrow("timezone: `Mars/Base` is not an IANA time zone");
  });
});
