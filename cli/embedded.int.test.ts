import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { processAlive } from "../streams/index.js";
import { PID_FILE, startEmbeddedServer } from "./embedded.js";
import { projectRoot } from "./paths.js";

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

describe("startEmbeddedServer", () => {
  it("leaves alone a process named in nats.pid that is not a nats-server on this store", async () => {
    const dir = await mkdtemp(join(tmpdir(), "flexcore-embedded-"));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    // A stale pid file whose pid now belongs to an unrelated process.
    const other = spawn("sleep", ["30"], { stdio: "ignore" });
    cleanup.push(() => void other.kill("SIGKILL"));
    await writeFile(join(dir, PID_FILE), `${other.pid}\n`);
    const notices: string[] = [];
    const server = await startEmbeddedServer(dir, join(projectRoot(), "nats.conf"), undefined, (line) => notices.push(line));
    try {
      expect(processAlive(other.pid!)).toBe(true);
      expect(notices).toEqual([]);
      expect(existsSync(join(dir, PID_FILE))).toBe(true);
    } finally {
      await server.close();
    }
    expect(existsSync(join(dir, PID_FILE))).toBe(false);
  }, 30_000);
});
