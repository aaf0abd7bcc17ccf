import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { processAlive } from "../streams/index.js";
import { DEFAULT_NATS_PORT } from "./connection.js";
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

  it("takes a free port when 4222, free when checked, is taken before the server binds it (two servers starting at once)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "flexcore-embedded-"));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    // 4222 held here (or by someone else already), while the check says it is free.
    const holder = createServer();
    await new Promise<void>((res) => holder.once("error", () => res()).listen(DEFAULT_NATS_PORT, "127.0.0.1", () => res()));
    cleanup.push(() => void holder.close());
    const notices: string[] = [];
    const server = await startEmbeddedServer(dir, join(projectRoot(), "nats.conf"), undefined, (line) => notices.push(line), async () => true);
    try {
      expect(server.port).not.toBe(DEFAULT_NATS_PORT);
      expect(notices.join("\n")).toMatch(/port 4222 was taken/u);
    } finally {
      await server.close();
    }
  }, 30_000);
});
