import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { ConfigError, integer, object, parseConfig, pipelineSections } from "./index.js";

const sections = pipelineSections({ threads: 2 });
const ROOT_CONFIG = fileURLToPath(new URL("../flexcore.yaml", import.meta.url));

function issues(yaml: string, extra: Record<string, (raw: unknown, path: string) => unknown> = {}): string[] {
  try {
    parseConfig(yaml, { ...sections, ...extra });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).code).toBe("FLEX_CONFIG");
    return (err as ConfigError).issues.map((i) => `${i.path}: ${i.message}`);
  }
  throw new Error("expected a ConfigError");
}

describe("flexcore.yaml", () => {
  it("the shipped example is valid and frozen", async () => {
    const text = await readFile(ROOT_CONFIG, "utf8");
    // Other areas' sections (workflows:) are checked by their own tests.
    const others = Object.fromEntries(Object.keys(parse(text) as object).filter((k) => !(k in sections)).map((k) => [k, (raw: unknown) => raw]));
    const config = parseConfig(text, { ...sections, ...others });
    expect(config.processors).toHaveLength(1);
    expect(config.processors[0]).toMatchObject({ name: "sensor-anomalies", kind: "anomaly", subjects: ["evt.*.sensor.*"], partitions: 4, backoffMs: [100, 1000, 5000] });
    expect(config.processors[0]!.validatedOptions).toMatchObject({ method: "zscore", window: 100, threshold: 3, emit: "flagged" });
    expect(config.runtime).toEqual({ threads: 2, workerMemoryMb: 512, metricsIntervalMs: 60_000, maxKeysInMemory: 100_000, instanceId: undefined, leaseTtlMs: 30_000 });
    expect(Object.isFrozen(config.processors[0])).toBe(true);
  });

  it("lists every bad value with its path", () => {
    const yaml = `
processors:
  - { name: a, kind: anomaly, subjects: ["evt.*.s.*"] }
  - { name: b, kind: anomaly, subjects: ["evt.*.s.*"] }
  - name: c
    kind: anomaly
    subjects: ["evt.*.s.*"]
    options: { window: ten, method: magic }
  - { name: "bad name", kind: nope, subjects: ["drv.>", "evt..x"], partitions: 0, backoff: [fast], colour: red }
  - { name: a, kind: anomaly, subjects: ["evt.>"] }
runtime: { threads: 0, metrics_interval: soon }
workflow: []
`;
    expect(issues(yaml)).toEqual([
      "workflow: unknown key; expected one of processors, runtime",
      'processors[2].options.method: expected one of "zscore", "robust", "ewma", "iforest", got "magic"',
      'processors[2].options.window: expected integer ≥ 2, got "ten"',
      "processors[3].colour: unknown key; expected one of name, kind, subjects, options, partitions, batch_size, max_deliver, backoff, ack_wait, max_in_flight, scale",
      "runtime.threads: expected integer ≥ 1 and ≤ 256, got 0",
      'runtime.metrics_interval: expected a duration ≥ 100 ms (milliseconds, or "500ms", "2s", "1m"), got "soon"',
    ]);
    // Once the unknown key is gone, the rest of the entry is checked too.
    const entry = issues(`processors:\n  - { name: "bad name", kind: nope, subjects: ["drv.>", "evt..x"], partitions: 0, backoff: [fast] }\n`);
    expect(entry[0]).toMatch(/^processors\[0\]\.name: expected a name of letters/);
    expect(entry[1]).toMatch(/^processors\[0\]\.kind: expected one of "anomaly"/);
    expect(entry[2]).toMatch(/^processors\[0\]\.subjects\[0\]: expected a filter on FLEX_EVENTS/);
    expect(entry[3]).toMatch(/^processors\[0\]\.subjects\[1\]: expected a valid subject filter/);
    expect(entry[4]).toBe("processors[0].partitions: expected integer ≥ 1 and ≤ 256, got 0");
    expect(entry[5]).toMatch(/^processors\[0\]\.backoff\[0\]: expected a duration/);
    expect(issues(`processors:\n  - { name: a, kind: anomaly, subjects: ["evt.>"] }\n  - { name: a, kind: anomaly, subjects: ["evt.>"] }\n`)).toEqual(['processors[1].name: duplicate name "a" (also processors[0])']);
  });

  it("reports YAML syntax errors with their line, and a non-mapping document", () => {
    expect(issues("processors:\n  - name: a\n   kind: x\n")[0]).toMatch(/YAML: .*\(line 3, column \d+\)/);
    expect(issues("- 1\n- 2\n")).toEqual(["(root): expected an object (a mapping of keys), got an array"]);
    expect(issues("processors: 3\n")).toEqual(["processors: expected a list, got 3"]);
  });

  it("takes other areas' sections", () => {
    const workflows = (raw: unknown, path: string): { retries: number } => {
      const o = object(raw, path, ["retries"], true);
      return { retries: integer(o.retries, `${path}.retries`, 3, { min: 0 }) };
    };
    expect(parseConfig("workflows: { retries: 5 }\n", { ...sections, workflows }).workflows).toEqual({ retries: 5 });
    expect(issues("workflows: { retries: -1 }\n", { workflows })).toEqual(["workflows.retries: expected integer ≥ 0, got -1"]);
  });
});
