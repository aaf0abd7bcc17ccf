// Every plugin shipped in plugins/ has a manifest that the host accepts.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { MANIFEST_FILE, parseManifest } from "./index.js";

const root = import.meta.dirname;
const shipped = readdirSync(root, { withFileTypes: true })
  .filter((d) => d.isDirectory() && existsSync(join(root, d.name, MANIFEST_FILE)))
  .map((d) => d.name);

describe("shipped plugins", () => {
  it("are there", () => {
    expect(shipped).toEqual(expect.arrayContaining(["echo", "json-transform", "schema-validate", "http-sink", "sqlite-source"]));
  });

  it.each(shipped)("%s: the manifest is valid and names its folder", (name) => {
    const manifest = parseManifest(readFileSync(join(root, name, MANIFEST_FILE)), { file: join(name, MANIFEST_FILE) });
    expect(manifest.name).toBe(name);
  });
});
