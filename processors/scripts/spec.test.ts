import { describe, expect, it } from "vitest";
import { InvalidOptionError } from "../../streams/index.js";
import { DEFAULT_SCRIPT_LIMITS, resolveLimits, validateScriptSpec } from "./spec.js";

const failure = (raw: unknown): [string, string, string] => {
  try {
    validateScriptSpec(raw);
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidOptionError);
    const e = err as InvalidOptionError;
    return [e.code, e.field, e.message];
  }
  throw new Error(`expected ${JSON.stringify(raw)} to be refused`);
};
const S = { language: "bash", source: "echo 1" } as const;

describe("validateScriptSpec", () => {
  it("accepts a spec and returns it as given", () => {
    const spec = { language: "javascript", source: "function main() {}", trusted: true, network: false, env: { A_1: "x" }, envAllow: ["HOME"], limits: { timeoutMs: 5, maxLogBytes: 0 } };
    expect(validateScriptSpec(spec)).toBe(spec);
  });

  it("names the field, what was expected and what came, with code FLEX_INVALID_OPTION", () => {
    expect(failure({ language: "ruby", source: "x" })).toEqual(["FLEX_INVALID_OPTION", "script.language", 'Invalid `script.language`: expected one of "javascript", "python", "bash", got "ruby"']);
    expect(failure({ ...S, source: "" })).toEqual(["FLEX_INVALID_OPTION", "script.source", 'Invalid `script.source`: expected the script\'s code, a non-empty string, got ""']);
    expect(failure({ ...S, limits: { timeoutMs: 0 } })[2]).toBe("Invalid `script.limits.timeoutMs`: expected integer ≥ 1 and ≤ 86400000, got 0");
    expect(failure({ ...S, limits: { wallMs: 5 } })[2]).toBe("Invalid `script.limits.wallMs`: unknown key; expected one of timeoutMs, memoryMb, cpuSeconds, maxProcesses, maxOutputBytes, maxLogBytes, maxFileBytes");
    expect(failure({ ...S, env: { "BAD-NAME": "1" } })[2]).toBe('Invalid `script.env.BAD-NAME`: expected a variable name of letters, digits and _, got "BAD-NAME"');
    expect(failure({ ...S, env: { A: 1 } })[1]).toBe("script.env.A");
    expect(failure({ ...S, envAllow: ["A", "b-c"] })[1]).toBe("script.envAllow[1]");
    expect(failure({ ...S, envAllow: "A" })[1]).toBe("script.envAllow");
    expect(failure({ ...S, network: "yes" })[1]).toBe("script.network");
    expect(failure({ ...S, limits: 3 })[2]).toBe("Invalid `script.limits`: expected an object of limits, got 3");
    for (const raw of [null, [], "bash", 3]) expect(failure(raw)[1]).toBe("script");
    expect(failure({ ...S, extra: 1 })[1]).toBe("script.extra");
  });

  it("lets only JavaScript run trusted", () => {
    for (const language of ["python", "bash"]) expect(failure({ language, source: "x", trusted: true })[1]).toBe("script.trusted");
    expect(validateScriptSpec({ language: "python", source: "x", trusted: false }).trusted).toBe(false);
    expect(failure({ language: "python", source: "x", trusted: "yes" })[2]).toBe('Invalid `script.trusted`: expected true or false, got "yes"');
  });

  it("refuses keys smuggled through __proto__ (JSON.parse makes them own keys)", () => {
    expect(failure(JSON.parse('{"language":"bash","source":"x","__proto__":{"trusted":true}}'))[1]).toBe("script.__proto__");
    expect(failure(JSON.parse('{"language":"bash","source":"x","limits":{"__proto__":{"timeoutMs":1}}}'))[1]).toBe("script.limits.__proto__");
  });

  it("keeps the bounds of every limit, both ends", () => {
    const bounds: Record<string, [number, number]> = {
      timeoutMs: [1, 24 * 3_600_000],
      memoryMb: [16, 64 * 1024],
      cpuSeconds: [1, 24 * 3_600],
      maxProcesses: [1, 4_096],
      maxOutputBytes: [1, 64 * 1024 * 1024],
      maxLogBytes: [0, 64 * 1024 * 1024],
      maxFileBytes: [1, 64 * 1024 * 1024 * 1024],
    };
    expect(Object.keys(bounds).sort()).toEqual(Object.keys(DEFAULT_SCRIPT_LIMITS).sort());
    for (const [key, [min, max]] of Object.entries(bounds)) {
      expect(() => validateScriptSpec({ ...S, limits: { [key]: min } }), key).not.toThrow();
      expect(() => validateScriptSpec({ ...S, limits: { [key]: max } }), key).not.toThrow();
      for (const bad of [min - 1, max + 1, min + 0.5, String(min)]) expect(failure({ ...S, limits: { [key]: bad } })[1], `${key}=${bad}`).toBe(`script.limits.${key}`);
    }
  });

  it("reports every issue, the first one as the field, under the caller's path", () => {
    try {
      validateScriptSpec({ language: "ruby", source: "" }, "steps[3]");
      expect.unreachable();
    } catch (err) {
      expect((err as InvalidOptionError).field).toMatch(/^steps\[3\]\.(language|source)$/u);
      expect((err as Error).message).toContain("steps[3].");
      expect((err as Error).message).toContain("(and steps[3].");
    }
  });
});

describe("resolveLimits", () => {
  it("merges checked limits over the base, and leaves the base alone", () => {
    expect(resolveLimits(undefined)).toEqual(DEFAULT_SCRIPT_LIMITS);
    expect(resolveLimits({ timeoutMs: 5 }, { ...DEFAULT_SCRIPT_LIMITS, memoryMb: 32 })).toEqual({ ...DEFAULT_SCRIPT_LIMITS, timeoutMs: 5, memoryMb: 32 });
  });

  it("refuses a bad limit by its path", () => {
    for (const [raw, field] of [["x", "limits"], [{ memoryMb: 8 }, "limits.memoryMb"], [{ cpu: 1 }, "limits.cpu"]] as const) {
      const err = (() => {
        try {
          resolveLimits(raw);
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(err, JSON.stringify(raw)).toBeInstanceOf(InvalidOptionError);
      expect((err as InvalidOptionError).field).toBe(field);
    }
  });
});
