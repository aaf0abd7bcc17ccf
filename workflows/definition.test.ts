import { describe, expect, it } from "vitest";
import { backoffDelay, DEFAULT_RETRY, parseDefinitionText, validateDefinition } from "./definition.js";
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

describe("the schema pass", () => {
  const S = { id: "a", kind: "script", language: "bash", source: "echo 1" };
  const failure = (def: unknown, options = {}): [string, string] => {
    try {
      validateDefinition(def, "t", options);
    } catch (err) {
      expect(err).toBeInstanceOf(WorkflowDefinitionError);
      return [(err as WorkflowDefinitionError).path, (err as Error).message];
    }
    throw new Error("expected a WorkflowDefinitionError");
  };

  it("names the path, what was expected and what came", () => {
    expect(failure({ name: "w", steps: [{ ...S, retry: { max_attempts: 0 } }] })).toEqual(["steps[0].retry.max_attempts", "Invalid workflow definition at `steps[0].retry.max_attempts`: expected integer ≥ 1 and ≤ 100, got 0"]);
    expect(failure({ name: "w", steps: [{ ...S, trusted: "yes" }] })).toEqual(["steps[0].trusted", "Invalid workflow definition at `steps[0].trusted`: expected true or false, got \"yes\""]);
    expect(failure({ name: "w", steps: [{ id: "a", kind: "email" }] })[1]).toContain('expected a step kind: script, processor, plugin, got "email"');
    expect(failure({ name: "w", steps: [{ id: "a", kind: "script", source: "x" }] })).toEqual(["steps[0].language", 'Invalid workflow definition at `steps[0].language`: expected one of "javascript", "python", "bash", got nothing']);
    expect(failure({ name: "w", triggers: [{ evnt: {} }], steps: [S] })[0]).toBe("triggers[0].event");
    expect(failure({ name: "w", steps: [] })[0]).toBe("steps");
    expect(failure([])[0]).toBe("$");
  });

  it("checks a script step with the script spec's own schema: limits, env names, trust by language", () => {
    expect(failure({ name: "w", steps: [{ ...S, limits: { timeoutMs: 0 } }] })).toEqual(["steps[0].limits.timeoutMs", "Invalid workflow definition at `steps[0].limits.timeoutMs`: expected integer ≥ 1 and ≤ 86400000, got 0"]);
    expect(failure({ name: "w", steps: [{ ...S, limits: { wallMs: 5 } }] })[0]).toBe("steps[0].limits.wallMs");
    expect(failure({ name: "w", steps: [{ ...S, env: { "BAD-NAME": "1" } }] })).toEqual(["steps[0].env.BAD-NAME", 'Invalid workflow definition at `steps[0].env.BAD-NAME`: expected a variable name of letters, digits and _, got "BAD-NAME"']);
    expect(failure({ name: "w", steps: [{ ...S, language: "python", trusted: true }] }, { allowTrusted: true })[0]).toBe("steps[0].trusted");
    // Which host variables reach a step is the operator's to say (the runner's envAllow), never a definition's.
    expect(failure({ name: "w", steps: [{ ...S, envAllow: ["NATS_PASSWORD"] }] })[0]).toBe("steps[0].envAllow");
    expect(validateDefinition({ name: "w", steps: [{ ...S, limits: { memoryMb: 16, maxLogBytes: 0 }, env: { _A1: "x" } }] }, "t").steps[0]).toMatchObject({ limits: { memoryMb: 16, maxLogBytes: 0 }, env: { _A1: "x" } });
  });

  it("refuses keys of another step kind by name", () => {
    expect(failure({ name: "w", steps: [{ ...S, processor: "anomaly" }] })[0]).toBe("steps[0].processor");
    expect(failure({ name: "w", steps: [{ id: "a", kind: "processor", processor: "anomaly", source: "x" }] })[0]).toBe("steps[0].source");
    expect(failure({ name: "w", triggers: [{ cron: "* * * * *", event: { subject: "evt.t.a.*" } }], steps: [S] })[0]).toBe("triggers[0].event");
  });

  it("checks a processor step's options with the processor's own schema", () => {
    expect(failure({ name: "w", steps: [{ id: "a", kind: "processor", processor: "anomaly", options: { window: "ten" } }] })).toEqual(["steps[0].options.window", 'Invalid workflow definition at `steps[0].options.window`: expected integer ≥ 2, got "ten"']);
  });

  it("runs the code checks after the schema: trust, cron, tenant; the input is left as given", () => {
    expect(failure({ name: "w", steps: [{ ...S, language: "javascript", trusted: true }] })[0]).toBe("steps[0].trusted");
    expect(validateDefinition({ name: "w", steps: [{ ...S, language: "javascript", trusted: true }] }, "t", { allowTrusted: true }).steps[0]).toMatchObject({ trusted: true });
    expect(failure({ name: "w", triggers: [{ cron: "* * * * *", timezone: "Mars/Olympus" }], steps: [S] })[0]).toBe("triggers[0].timezone");
    expect(failure({ name: "w", triggers: [{ event: { subject: "evt.other.a.*" } }], steps: [S] })[0]).toBe("triggers[0].event.subject");
    const raw = { name: "w", steps: [{ ...S }] };
    const def = validateDefinition(raw, "t");
    expect(def.steps[0]).toMatchObject({ retry: DEFAULT_RETRY, continueOnError: false, needs: [], trusted: false, network: false });
    expect(raw.steps[0]).toEqual(S);
  });

  it("refuses a tenant's step that smuggles trust or keys through __proto__ or constructor", () => {
    const json = JSON.parse('{"name":"w","steps":[{"id":"a","kind":"script","language":"javascript","source":"x","__proto__":{"trusted":true}}]}') as unknown;
    const yaml = parseDefinitionText("name: w\nsteps:\n  - id: a\n    kind: script\n    language: javascript\n    source: x\n    __proto__: { trusted: true }\n");
    for (const def of [json, yaml]) expect(failure(def)).toEqual(["steps[0].__proto__", expect.stringContaining("unknown key")]);
    expect(failure({ name: "w", steps: [{ id: "a", kind: "processor", processor: "anomaly", options: { constructor: 1 } }] })[0]).toBe("steps[0].options.constructor");
  });
});
