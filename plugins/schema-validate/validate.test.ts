import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { MANIFEST_FILE, parseManifest } from "../index.js";
import { SCHEMA_VALIDATE_OPTIONS_SCHEMA, SchemaOptionsError, compileValidator, describeIssues } from "./validate.js";

const schema = { type: "object", required: ["id", "amount"], properties: { id: { type: "string", format: "uuid" }, amount: { type: "number", minimum: 0 } } };

describe("schema-validate: validation", () => {
  it("reports ajv's errors (instancePath, keyword, message), all of them", () => {
    const { validate, onInvalid } = compileValidator({ schema });
    expect(onInvalid).toBe("dlq");
    expect(validate({ id: "9b2c0e1e-7d1c-4c1e-8a53-0f9a1f0b7f11", amount: 3 })).toEqual([]);
    const errors = validate({ id: "nope", amount: -1 });
    expect(errors).toEqual([
      { instancePath: "/id", keyword: "format", message: 'must match format "uuid"' },
      { instancePath: "/amount", keyword: "minimum", message: "must be >= 0" },
    ]);
    expect(describeIssues(errors)).toBe('/id must match format "uuid"; /amount must be >= 0');
    expect(describeIssues(validate(5))).toBe("/ must be object");
  });

  it.each([
    [{}, "options.schema"],
    [{ schema, onInvalid: "drop" }, "options.onInvalid"],
    [{ schema, extra: 1 }, "options.extra"],
    [{ schema: { type: "nonsense" } }, "options.schema"],
    [{ schema: { $ref: "https://attacker.invalid/s.json" } }, "options.schema"],
  ])("refuses options %j naming %s", (options, path) => {
    expect(() => compileValidator(options)).toThrow(SchemaOptionsError);
    try {
      compileValidator(options);
    } catch (err) {
      expect((err as SchemaOptionsError).path).toBe(path);
    }
  });

  it("the manifest's processor options schema is SCHEMA_VALIDATE_OPTIONS_SCHEMA", () => {
    const m = parseManifest(readFileSync(join(import.meta.dirname, MANIFEST_FILE)), { file: MANIFEST_FILE });
    expect(m.capabilities.processors?.[0]?.options).toEqual(SCHEMA_VALIDATE_OPTIONS_SCHEMA);
  });
});
