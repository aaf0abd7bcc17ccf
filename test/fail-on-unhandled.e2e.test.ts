import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, expect, it } from "vitest";

const run = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-unhandled-"));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

it("an unhandled rejection or uncaught exception fails its test in the JSON report, and vitest exits non-zero", async () => {
  const report = join(dir, "report.json");
  const exit = await run(process.execPath, [join(root, "node_modules/vitest/vitest.mjs"), "run", "--config", "test/fixtures/vitest.fixture.config.ts", "--outputFile", report], { cwd: root })
    .then(() => 0, (err: { code: number }) => err.code);
  expect(exit).not.toBe(0);
  const r = JSON.parse(await readFile(report, "utf8")) as { numFailedTests: number; numPassedTests: number; testResults: Array<{ assertionResults: Array<{ title: string; status: string; failureMessages: string[] }> }> };
  const results = r.testResults.flatMap((f) => f.assertionResults);
  expect(results.map((a) => [a.title, a.status])).toEqual([
    ["leaves a rejection nobody handles", "failed"],
    ["throws from a timer", "failed"],
    ["passes on its own", "passed"],
  ]);
  expect(results[0]!.failureMessages.join("\n")).toContain("nobody handles me");
  expect(results[1]!.failureMessages.join("\n")).toContain("thrown from a timer");
  expect({ failed: r.numFailedTests, passed: r.numPassedTests }).toEqual({ failed: 2, passed: 1 });
}, 60_000);
