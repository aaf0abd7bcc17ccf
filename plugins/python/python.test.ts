// The Python side of the plugins: the SDK file every Python bundle carries is the same file,
// and the Python unit tests (stdlib unittest) pass, so CI runs them with the TypeScript ones.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

const plugins = join(import.meta.dirname, "..");
const SDK = "flexcore_plugin.py";
const bundles = readdirSync(plugins, { withFileTypes: true })
  .filter((d) => d.isDirectory() && d.name !== "python" && existsSync(join(plugins, d.name, SDK)))
  .map((d) => d.name);

function unittest(dir: string): { status: number | null; output: string } {
  const r = spawnSync("python3", ["-B", "-m", "unittest", "discover", "-s", dir, "-p", "test_*.py", "-v"], { encoding: "utf8", env: { PATH: process.env.PATH ?? "" }, timeout: 60_000 });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

describe("Python plugins", () => {
  it("every Python bundle carries an exact copy of plugins/python/flexcore_plugin.py", () => {
    expect(bundles).toEqual(expect.arrayContaining(["echo-py", "pii-redact"]));
    const source = readFileSync(join(plugins, "python", SDK));
    for (const b of bundles) expect(readFileSync(join(plugins, b, SDK)).equals(source), `plugins/${b}/${SDK}: copy it again from plugins/python/`).toBe(true);
  });

  it.each(["python", "pii-redact"])("plugins/%s: python3 -m unittest passes", (dir) => {
    const r = unittest(join(plugins, dir));
    expect(r.status, r.output).toBe(0);
    expect(r.output).toMatch(/^OK$/mu);
    expect(r.output).not.toMatch(/Ran 0 tests/u);
  });
});
