import { describe, expect, it } from "vitest";
import { fromKvKeyToken, InvalidOptionError, kvKeyToken } from "./index.js";

// What NATS KV accepts in a key token (the `.` separates tokens).
const KV_TOKEN = /^[-/_=a-zA-Z0-9]+$/;

describe("kvKeyToken", () => {
  it("turns any name into a KV-safe token and back", () => {
    for (const name of ["demo", "acme+eu", "run:1", "a/b", "café", "工作流", "a.b", "*", ">", "=", " sp ", "x".repeat(128)]) {
      const t = kvKeyToken(name);
      expect(t, name).toMatch(KV_TOKEN);
      expect(t).not.toContain(".");
      expect(fromKvKeyToken(t)).toBe(name);
    }
  });

  it("is one to one: different names never share a token", () => {
    const names = ["a", "a_", "a-", "a/", "a+", "A", "=YQ", "YQ"];
    expect(new Set(names.map(kvKeyToken)).size).toBe(names.length);
  });

  it("keeps the base64url scheme of user keys (user.<tenant>.<username> stays readable by older instances)", () => {
    expect(kvKeyToken("demo")).toBe(Buffer.from("demo").toString("base64url"));
  });

  it("refuses empty names and non-canonical tokens with the field named", () => {
    expect(() => kvKeyToken("")).toThrow(InvalidOptionError);
    expect(() => kvKeyToken("")).toThrow(/KV key name/);
    expect(() => fromKvKeyToken("a.b")).toThrow(InvalidOptionError);
    expect(() => fromKvKeyToken("YR")).toThrow(/canonical/); // "a" is YQ
    expect(() => fromKvKeyToken("_w")).toThrow(/UTF-8/); // 0xff alone
  });
});
