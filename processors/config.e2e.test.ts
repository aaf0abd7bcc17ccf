import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { expect, it } from "vitest";

const run = promisify(execFile);
const CLI = fileURLToPath(new URL("../cli/main.ts", import.meta.url));

it("`flexcore up` with a bad configuration names the path and starts nothing", async () => {
  const dir = await mkdtemp(join(tmpdir(), "flexcore-badconfig-"));
  try {
    const file = join(dir, "flexcore.yaml");
    await writeFile(file, `processors:\n  - { name: a, kind: anomaly, subjects: ["evt.*.s.*"] }\n  - { name: b, kind: anomaly, subjects: ["evt.*.s.*"] }\n  - { name: c, kind: anomaly, subjects: ["evt.*.s.*"], options: { window: ten } }\n`);
    const data = join(dir, "data");
    const err = await run(process.execPath, ["--import", "tsx", CLI, "up", "--config", file], { env: { ...process.env, FLEXCORE_DATA: data, NATS_URL: "" }, timeout: 30_000 }).then(
      () => undefined,
      (e: { code?: number; stderr?: string }) => e,
    );
    expect(err?.code).toBe(1);
    expect(err?.stderr).toContain('processors[2].options.window: expected integer ≥ 2, got "ten"');
    expect(err?.stderr).toContain("[FLEX_CONFIG]");
    // No embedded server was started: it would have created its store under the data directory.
    expect(existsSync(data) ? await readdir(data) : []).toEqual([]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
