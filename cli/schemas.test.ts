import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { compileSchema } from "../streams/index.js";
import type { JsonSchema } from "../streams/index.js";
import { flexcoreSchema, SCHEMA_FILES, schemaText, workflowSchema } from "./schemas.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const read = (file: string): Promise<string> => readFile(`${root}${file}`, "utf8");

describe("published schemas", () => {
  it("the files in schemas/ are the schemas the code validates with (run cli/write-schemas.ts after a change)", async () => {
    expect(await read(SCHEMA_FILES.flexcore)).toBe(schemaText(flexcoreSchema()));
    expect(await read(SCHEMA_FILES.workflow)).toBe(schemaText(workflowSchema()));
  });

  it("the shipped flexcore.yaml names its schema and passes it; a bad option fails it at its path", async () => {
    const text = await read("flexcore.yaml");
    expect(text.split("\n")[0]).toBe(`# yaml-language-server: $schema=./${SCHEMA_FILES.flexcore}`);
    const published = compileSchema(JSON.parse(await read(SCHEMA_FILES.flexcore)) as JsonSchema);
    expect(published.check(parse(text), "").issues).toEqual([]);
    const bad = { processors: [{ name: "a", kind: "anomaly", subjects: ["evt.>"], options: { window: "ten", windw: 3 } }], runtme: {} };
    expect(published.check(bad, "").issues.map((i) => i.path).sort()).toEqual(["processors[0].options.window", "processors[0].options.windw", "runtme"]);
    const auto = { processors: [{ name: "a", kind: "auto", subjects: ["evt.>"], options: { options: { forecast: { period: 1 } } } }] };
    expect(published.check(auto, "").issues.map((i) => i.path)).toEqual(["processors[0].options.options.forecast.period"]);
  });

  it("each example workflow names its schema and passes it", async () => {
    const published = compileSchema(JSON.parse(await read(SCHEMA_FILES.workflow)) as JsonSchema, "$");
    const files = (await readdir(`${root}workflows/examples`)).filter((f) => f.endsWith(".yaml"));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) {
      const text = await read(`workflows/examples/${f}`);
      expect(text.split("\n")[0], f).toBe(`# yaml-language-server: $schema=../../${SCHEMA_FILES.workflow}`);
      expect(published.check(parse(text), "").issues, f).toEqual([]);
    }
    expect(published.check({ name: "w", steps: [{ id: "a", kind: "script", language: "cobol", source: "x" }] }, "").issues.map((i) => i.path)).toEqual(["steps[0].language"]);
    // Script steps are described by the script spec's schema: an editor sees bad limits and env names too.
    const script = { id: "a", kind: "script", language: "bash", source: "x", limits: { timeoutMs: 0, wallMs: 1 }, env: { "A-B": "1" } };
    expect(published.check({ name: "w", steps: [script] }, "").issues.map((i) => i.path).sort()).toEqual(["steps[0].env.A-B", "steps[0].limits.timeoutMs", "steps[0].limits.wallMs"]);
    expect(published.check({ name: "w", steps: [{ ...script, limits: {}, env: {}, language: "python", trusted: true }] }, "").issues.map((i) => i.path)).toEqual(["steps[0].trusted"]);
  });
});
