import { describe, expect, it } from "vitest";
import { backoffDelay, DEFAULT_RETRY, validateDefinition } from "./definition.js";
import { WorkflowDefinitionError } from "./errors.js";

describe("retry backoff", () => {
  it("waits backoff_ms · factor^(n-1) after failed attempt n, capped at max_backoff_ms", () => {
    const policy = { maxAttempts: 10, backoffMs: 500, factor: 3, maxBackoffMs: 10_000 };
    expect([1, 2, 3, 4, 5].map((n) => backoffDelay(policy, n))).toEqual([500, 1_500, 4_500, 10_000, 10_000]);
    expect([1, 2, 3].map((n) => backoffDelay(DEFAULT_RETRY, n))).toEqual([1_000, 2_000, 4_000]);
    expect(backoffDelay({ ...policy, factor: 1 }, 7)).toBe(500);
  });

  it("reads retry from a definition with its defaults", () => {
    const def = validateDefinition({ name: "w", steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1", retry: { max_attempts: 4, backoff_ms: 50 } }] }, "t");
    expect(def.steps[0]!.retry).toEqual({ maxAttempts: 4, backoffMs: 50, factor: 2, maxBackoffMs: 60_000 });
  });
});

describe("when", () => {
  const step = (extra: object): object => ({ name: "w", steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1" }, { id: "b", kind: "script", language: "bash", source: "echo 1", ...extra }] });
  it("is checked when the definition is stored: syntax, and only steps among the needs", () => {
    const bad: Array<[object, string]> = [
      [{ when: "steps.a.status ==" }, "steps[1].when"],
      [{ when: "steps.zz.status == 'failed'" }, "steps[1].when"],
      [{ when: "steps.a.status == 'failed'", needs: [] }, "steps[1].when"],
    ];
    for (const [def, path] of bad) {
      const err = (() => {
        try {
          validateDefinition(step(def), "t");
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(err, JSON.stringify(def)).toBeInstanceOf(WorkflowDefinitionError);
      expect((err as WorkflowDefinitionError).path).toBe(path);
    }
    expect(validateDefinition(step({ when: "steps.a.status == 'failed' || input.force" }), "t").steps[1]!.when).toBe("steps.a.status == 'failed' || input.force");
  });
});
