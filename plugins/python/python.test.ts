// The Python side of the plugins: one SDK file (plugins/python/flexcore_plugin.py) that the
// host provides to bundles declaring `sdk: python`; no shipped bundle carries a copy, and the
// Python unit tests (stdlib unittest) pass, so CI runs them with the TypeScript ones.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseManifest } from "../manifest.js";
import { PYTHON_SDK_FILE, pythonSdkDir } from "../python-sdk.js";

const plugins = join(import.meta.dirname, "..");
const pythonBundles = readdirSync(plugins, { withFileTypes: true })
  .filter((d) => d.isDirectory() && existsSync(join(plugins, d.name, "flexcore-plugin.yaml")))
  .map((d) => ({ name: d.name, manifest: parseManifest(readFileSync(join(plugins, d.name, "flexcore-plugin.yaml"))) }))
  .filter((b) => b.manifest.command[0] === "python3");

function unittest(dir: string): { status: number | null; output: string } {
  const r = spawnSync("python3", ["-B", "-m", "unittest", "discover", "-s", dir, "-p", "test_*.py", "-v"], { encoding: "utf8", env: { PATH: process.env.PATH ?? "" }, timeout: 60_000 });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

describe("Python plugins", () => {
  it("the SDK is one file: no shipped Python bundle carries a copy, each declares `sdk: python`", () => {
    expect(pythonBundles.map((b) => b.name)).toEqual(expect.arrayContaining(["echo-py", "pii-redact"]));
    for (const b of pythonBundles) {
      expect(existsSync(join(plugins, b.name, PYTHON_SDK_FILE)), `plugins/${b.name}/${PYTHON_SDK_FILE}: delete it, the host provides the SDK`).toBe(false);
      expect(b.manifest.sdk, `plugins/${b.name}: sdk`).toBe("python");
    }
    expect(pythonSdkDir()).toBe(join(plugins, "python"));
  });

  it.each(["python", "pii-redact"])("plugins/%s: python3 -m unittest passes", (dir) => {
    const r = unittest(join(plugins, dir));
    expect(r.status, r.output).toBe(0);
    expect(r.output).toMatch(/^OK$/mu);
    expect(r.output).not.toMatch(/Ran 0 tests/u);
  });
});
