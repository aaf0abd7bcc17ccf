import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { ManifestError, PluginIncompatibleError } from "./errors.js";
import { DEFAULT_PLUGIN_LIMITS, flexcoreVersion, MANIFEST_SCHEMA_ID, manifestSchema, parseManifest } from "./manifest.js";

const VALID = `# yaml-language-server: $schema=../flexcore-plugin.schema.json
name: json-transform
version: 1.2.0
description: Declarative pick, rename, cast
protocols: [1]
flexcore: ">=0.1.0 <1.0.0"
command: [node, dist/main.js, --flag]
env:
  LOG_LEVEL: info
capabilities:
  processors:
    - kind: transform
      deterministic: true
      options:
        type: object
        properties:
          pick: { type: array, items: { type: string } }
        additionalProperties: false
  steps:
    - name: transform
      input: { type: object }
`;

function doc(patch: (d: Record<string, unknown>) => void): string {
  const d = parseManifestDoc();
  patch(d);
  return stringify(d);
}

function parseManifestDoc(): Record<string, unknown> {
  return JSON.parse(JSON.stringify({
    name: "json-transform",
    version: "1.2.0",
    protocols: [1],
    flexcore: ">=0.1.0 <1.0.0",
    command: ["node", "main.js"],
    capabilities: { processors: [{ kind: "transform", deterministic: true, options: { type: "object" } }] },
  })) as Record<string, unknown>;
}

function manifestError(text: string): ManifestError {
  try {
    parseManifest(text, { flexcoreVersion: "0.1.0" });
  } catch (err) {
    expect(err).toBeInstanceOf(ManifestError);
    expect((err as ManifestError).code).toBe("FLEX_PLUGIN_MANIFEST");
    return err as ManifestError;
  }
  throw new Error("expected a ManifestError");
}

describe("parseManifest", () => {
  it("accepts a full manifest, fills the limits' defaults and freezes the result", () => {
    const m = parseManifest(VALID, { flexcoreVersion: "0.1.0" });
    expect(m).toMatchObject({
      name: "json-transform",
      version: "1.2.0",
      description: "Declarative pick, rename, cast",
      protocols: [1],
      command: ["node", "dist/main.js", "--flag"],
      env: { LOG_LEVEL: "info" },
      tenancy: "system",
      capabilities: { processors: [{ kind: "transform", deterministic: true }], steps: [{ name: "transform" }], sinks: [], sources: [] },
      limits: DEFAULT_PLUGIN_LIMITS,
    });
    expect(Object.isFrozen(m.capabilities.processors[0])).toBe(true);
    expect(() => ((m as { name: string }).name = "x")).toThrow(TypeError);
  });

  it("reads the limits in snake_case", () => {
    const m = parseManifest(doc((d) => (d.limits = { memory_mb: 64, max_processes: 4, open_files: 32, concurrency: 8, call_timeout_ms: 250, start_timeout_ms: 2000 })), { flexcoreVersion: "0.1.0" });
    expect(m.limits).toEqual({ memoryMb: 64, maxProcesses: 4, openFiles: 32, concurrency: 8, callTimeoutMs: 250, startTimeoutMs: 2000 });
  });

  it("checks against this FlexCore's own version by default", () => {
    expect(flexcoreVersion()).toBe((JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version);
    expect(parseManifest(doc((d) => (d.flexcore = `=${flexcoreVersion()}`))).name).toBe("json-transform");
  });

  it("rejects an unknown key at the top, in a capability and in limits, naming the path", () => {
    expect(manifestError(doc((d) => (d.colour = "blue")))).toMatchObject({ path: "colour", value: "blue" });
    const nested = manifestError(doc((d) => ((d.capabilities as { processors: Record<string, unknown>[] }).processors[0]!.deterministc = true)));
    expect(nested.path).toBe("capabilities.processors[0].deterministc");
    expect(nested.message).toContain("capabilities.processors[0].deterministc");
    expect(nested.message).toContain("not a known key");
    expect(manifestError(doc((d) => (d.limits = { memory: 5 }))).path).toBe("limits.memory");
  });

  it("lists every issue at once", () => {
    const err = manifestError(doc((d) => {
      d.name = "Bad_Name";
      d.tenancy = "galaxy";
      d.limits = { concurrency: 0 };
    }));
    expect(err.issues.map((i) => i.path).sort()).toEqual(["limits.concurrency", "name", "tenancy"]);
    expect(err.message).toContain("Bad_Name");
    expect(err.message).toContain(`one of "system", "tenant"`);
  });

  it("reports schema and semantic issues together, and lists the known keys for an unknown one", () => {
    const err = manifestError(doc((d) => {
      d.version = "1.2";
      d.flexcore = "nope nope";
      (d.capabilities as { processors: Record<string, unknown>[] }).processors[0]!.deterministc = true;
    }));
    expect(err.issues.map((i) => i.path).sort()).toEqual(["capabilities.processors[0].deterministc", "flexcore", "version"]);
    expect(err.message).toContain("kind, description, deterministic, options");
  });

  it("names a missing required key", () => {
    expect(manifestError(doc((d) => delete d.command))).toMatchObject({ path: "command", value: undefined });
  });

  it("rejects a bad semver version, and a number where YAML read one", () => {
    expect(manifestError(doc((d) => (d.version = "1.2")))).toMatchObject({ path: "version", value: "1.2" });
    expect(manifestError(doc((d) => (d.version = "v1.2.0")))).toMatchObject({ path: "version", value: "v1.2.0" });
    const numeric = manifestError(VALID.replace("version: 1.2.0", "version: 1.2"));
    expect(numeric).toMatchObject({ path: "version", value: 1.2 });
    expect(numeric.expected).toContain("quote it");
  });

  it("rejects a bad FlexCore range", () => {
    expect(manifestError(doc((d) => (d.flexcore = "banana >< 3")))).toMatchObject({ path: "flexcore", value: "banana >< 3" });
  });

  it("refuses a FlexCore version outside the range, and no protocol in common, as FLEX_PLUGIN_INCOMPATIBLE", () => {
    const text = doc((d) => (d.flexcore = "^2.0.0"));
    const err = (() => {
      try {
        parseManifest(text, { flexcoreVersion: "0.1.0" });
      } catch (e) {
        return e as PluginIncompatibleError;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(PluginIncompatibleError);
    expect(err).toMatchObject({ code: "FLEX_PLUGIN_INCOMPATIBLE", field: "flexcore", value: "^2.0.0" });
    expect(err!.message).toContain("0.1.0");
    expect(() => parseManifest(doc((d) => (d.protocols = [2, 3])), { flexcoreVersion: "0.1.0" })).toThrow(expect.objectContaining({ code: "FLEX_PLUGIN_INCOMPATIBLE", field: "protocols" }));
    expect(parseManifest(doc((d) => (d.protocols = [2, 1])), { flexcoreVersion: "0.1.0" }).protocols).toEqual([2, 1]);
  });

  it("rejects an embedded schema that does not compile, naming its path", () => {
    const err = manifestError(doc((d) => ((d.capabilities as { processors: Record<string, unknown>[] }).processors[0]!.options = { type: "object", properties: { a: { type: "strnig" } } })));
    expect(err.path).toBe("capabilities.processors[0].options");
    expect(err.expected).toContain("JSON Schema");
    const typo = manifestError(doc((d) => ((d.capabilities as Record<string, unknown>).steps = [{ name: "s", input: { type: "integer", minimun: 3 } }])));
    expect(typo.path).toBe("capabilities.steps[0].input");
    const remote = manifestError(doc((d) => ((d.capabilities as Record<string, unknown>).sinks = [{ name: "s", options: { $ref: "https://example.com/evil.json" } }])));
    expect(remote.path).toBe("capabilities.sinks[0].options");
    expect(manifestError(doc((d) => ((d.capabilities as Record<string, unknown>).sources = [{ name: "s", options: "not a schema" }]))).path).toBe("capabilities.sources[0].options");
  });

  it("rejects commands that leave the bundle, reserved environment names, duplicate and empty capabilities", () => {
    expect(manifestError(doc((d) => (d.command = ["/usr/bin/evil"])))).toMatchObject({ path: "command[0]" });
    expect(manifestError(doc((d) => (d.command = ["../outside/run"])))).toMatchObject({ path: "command[0]" });
    expect(manifestError(doc((d) => (d.command = [])))).toMatchObject({ path: "command" });
    expect(manifestError(doc((d) => (d.command = ["node", "a\0b"])))).toMatchObject({ path: "command[1]" });
    expect(manifestError(doc((d) => (d.env = { A: "x\0y" })))).toMatchObject({ path: "env.A" });
    expect(manifestError(doc((d) => (d.env = { FLEXCORE_PLUGIN_NONCE: "forged" })))).toMatchObject({ path: "env.FLEXCORE_PLUGIN_NONCE" });
    expect(manifestError(doc((d) => (d.env = { "BAD-NAME": "x" })))).toMatchObject({ path: `env["BAD-NAME"]` });
    expect(manifestError(doc((d) => (d.env = { N: 5 })))).toMatchObject({ path: "env.N", value: 5 });
    expect(manifestError(doc((d) => ((d.capabilities as Record<string, unknown>).processors = [{ kind: "a", deterministic: true }, { kind: "a", deterministic: false }])))).toMatchObject({ path: "capabilities.processors[1].kind" });
    expect(manifestError(doc((d) => (d.capabilities = {})))).toMatchObject({ path: "capabilities" });
    expect(manifestError(doc((d) => ((d.capabilities as Record<string, unknown>).processors = [{ kind: "a.b", deterministic: true }])))).toMatchObject({ path: "capabilities.processors[0].kind" });
  });

  it("rejects YAML syntax errors, duplicate keys, alias bombs, non-objects and oversized manifests", () => {
    expect(manifestError("name: [unclosed").message).toMatch(/line 1/);
    expect(manifestError(`${VALID}name: again\n`).message).toContain("YAML");
    const bomb = `a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n`;
    expect(manifestError(bomb).code).toBe("FLEX_PLUGIN_MANIFEST");
    expect(manifestError("- a list").path).toBe("");
    expect(manifestError("").path).toBe("");
    expect(manifestError(`${VALID}#${"x".repeat(300 * 1024)}\n`).expected).toContain("at most");
  });

  it("publishes its JSON Schema with unknown keys refused in every object", () => {
    const schema = manifestSchema();
    expect(schema.$id).toBe(MANIFEST_SCHEMA_ID);
    const objects: Record<string, unknown>[] = [];
    const walk = (node: unknown): void => {
      if (node === null || typeof node !== "object") return;
      const n = node as Record<string, unknown>;
      if (n.type === "object" && n.properties !== undefined) objects.push(n);
      for (const v of Object.values(n)) walk(v);
    };
    walk(schema);
    expect(objects.length).toBeGreaterThanOrEqual(7);
    for (const o of objects) expect(o.additionalProperties, JSON.stringify(Object.keys(o.properties as object))).toBe(false);
  });
});
