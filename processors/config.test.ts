import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { compileSchema } from "../streams/index.js";
import { ConfigError, parseConfig, pipelineSections } from "./index.js";
import { checkOptions } from "./options.js";

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
    // Every mistake of every entry at once: the schema's, then what only code can check.
    expect(issues(yaml)).toEqual([
      "workflow: unknown key; expected one of processors, runtime",
      'processors[2].options.method: expected one of "zscore", "robust", "ewma", "iforest", got "magic"',
      'processors[2].options.window: expected integer ≥ 2, got "ten"',
      "processors[3].colour: unknown key; expected one of name, kind, subjects, options, partitions, batch_size, max_deliver, backoff, ack_wait, max_in_flight, scale",
      'processors[3].name: expected a name of letters, digits, `-` and `_` (at most 64, starting with a letter or digit), got "bad name"',
      "processors[3].partitions: expected integer ≥ 1 and ≤ 256, got 0",
      'processors[3].backoff[0]: expected a duration ≥ 0 ms (milliseconds, or "500ms", "2s", "1m"), got "fast"',
      'processors[3].kind: expected one of "anomaly", "clustering", "forecast", "classify", "nlp", "vision", "recommend", "auto", or <plugin>/<kind> for a plugin\'s, got "nope"',
      'processors[3].subjects[0]: expected a filter on FLEX_EVENTS (starting with evt.), got "drv.>"',
      expect.stringMatching(/^processors\[3\]\.subjects\[1\]: expected a valid subject filter/),
      'processors[4].name: duplicate name "a" (also processors[0])',
      "runtime.threads: expected integer ≥ 1 and ≤ 256, got 0",
      'runtime.metrics_interval: expected a duration ≥ 100 ms (milliseconds, or "500ms", "2s", "1m"), got "soon"',
    ]);
    expect(issues(`processors:\n  - { name: a, subjects: [], ack_wait: 0.5s }\n`)).toEqual([
      "processors[0].kind: expected a processor kind (anomaly, clustering, forecast, classify, nlp, vision, recommend, auto) or <plugin>/<kind>, got nothing",
      "processors[0].subjects: expected a list of at least 1 item(s), got an empty list",
    ]);
    expect(issues(`processors:\n  - { name: a, kind: anomaly, subjects: [evt.>], ack_wait: 0.5s }\n`)).toEqual(['processors[0].ack_wait: expected a duration ≥ 1000 ms (milliseconds, or "500ms", "2s", "1m"), got "0.5s"']);
    expect(issues(`processors:\n  - { name: a, kind: anomaly, subjects: ["evt.>"] }\n  - { name: a, kind: anomaly, subjects: ["evt.>"] }\n`)).toEqual(['processors[1].name: duplicate name "a" (also processors[0])']);
  });

  it("reports YAML syntax errors with their line, and a non-mapping document", () => {
    expect(issues("processors:\n  - name: a\n   kind: x\n")[0]).toMatch(/YAML: .*\(line 3, column \d+\)/);
    expect(issues("- 1\n- 2\n")).toEqual(["(root): expected an object (a mapping of keys), got an array"]);
    expect(issues("processors: 3\n")).toEqual(["processors: expected a list, got 3"]);
  });

  it("takes other areas' sections", () => {
    const schema = compileSchema<{ retries: number }>({ type: "object", additionalProperties: false, properties: { retries: { type: "integer", minimum: 0, default: 3 } } });
    const workflows = (raw: unknown, path: string): { retries: number } => checkOptions(schema, raw, path);
    expect(parseConfig("workflows: { retries: 5 }\n", { ...sections, workflows }).workflows).toEqual({ retries: 5 });
    expect(issues("workflows: { retries: -1 }\n", { workflows })).toEqual(["workflows.retries: expected integer ≥ 0, got -1"]);
  });
});
