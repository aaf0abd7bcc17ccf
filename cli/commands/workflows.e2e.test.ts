import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../../test/nats-server.js";
import type { TestNats } from "../../test/nats-server.js";
import { ensureTopology } from "../../streams/index.js";

const CLI = join(import.meta.dirname, "..", "main.ts");

let nats: TestNats;
let dir: string;

// The server URL the CLI child gets (one place to adapt when the suite gains credentials).
function cliNatsUrl(): string {
  return nats.server.url;
}

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import", "tsx", CLI, ...args], { env: { ...process.env, NATS_URL: "", ...nats.env } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-cli-wf-"));
});
afterAll(async () => {
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

it("workflows put refuses trusted steps (FLEX_WORKFLOW_INVALID at steps[1].trusted) and stores nothing; a plain definition with a unicode name is stored", async () => {
  const tenant = uniqueName("cli");
  const file = join(dir, "trusted.yaml");
  await writeFile(file, "name: t\nsteps:\n  - id: a\n    kind: script\n    language: bash\n    source: echo 1\n  - id: b\n    kind: script\n    language: javascript\n    trusted: true\n    source: 'function main() { return require(\"node:fs\").readdirSync(\"/\"); }'\n");
  const refused = await run(["workflows", "put", "--nats", cliNatsUrl(), "-t", tenant, file]);
  expect(refused.code).not.toBe(0);
  expect(refused.stderr).toContain("FLEX_WORKFLOW_INVALID");
  expect(refused.stderr).toContain("steps[1].trusted");
  const listed = await run(["workflows", "list", "--nats", cliNatsUrl(), "-t", tenant, "--json"]);
  expect(listed.code).toBe(0);
  expect(JSON.parse(listed.stdout)).toEqual([]);

  const plain = join(dir, "plain.yaml");
  await writeFile(plain, "name: café:1\nsteps:\n  - id: a\n    kind: script\n    language: bash\n    source: echo 1\n");
  const stored = await run(["workflows", "put", "--nats", cliNatsUrl(), "-t", `${tenant}+eu`, plain, "--json"]);
  expect(stored.code, stored.stderr).toBe(0);
  expect(JSON.parse(stored.stdout)).toEqual({ name: "café:1", version: 1 });
  const after = await run(["workflows", "list", "--nats", cliNatsUrl(), "-t", `${tenant}+eu`, "--json"]);
  expect(JSON.parse(after.stdout).map((w: { name: string }) => w.name)).toEqual(["café:1"]);
});
