import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compareVersions, natsServerPin, NatsServerError, resolveNatsServerBinary, startNatsServer } from "./index.js";

/** Debian 12's own package: older than the minimum. */
const DEBIAN_12_SERVER = "/usr/sbin/nats-server";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-natsbin-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A directory holding an executable `nats-server` that prints `version` (what --version of a real one looks like). */
async function fakeServerDir(name: string, version: string): Promise<string> {
  const bin = join(dir, name);
  await mkdir(bin, { recursive: true });
  await writeFile(join(bin, "nats-server"), `#!/bin/sh\necho "nats-server: v${version}"\n`);
  await chmod(join(bin, "nats-server"), 0o755);
  return bin;
}

describe("nats-server version", () => {
  it("pins 2.15.1 and accepts 2.12 and newer", async () => {
    const pin = await natsServerPin();
    expect(pin.pinned).toBe("2.15.1");
    expect(pin.minimum).toBe("2.12.0");
    expect(compareVersions("2.9.10", pin.minimum)).toBeLessThan(0);
    expect(compareVersions("2.11.9", pin.minimum)).toBeLessThan(0);
    expect(compareVersions("2.12.0", pin.minimum)).toBe(0);
    expect(compareVersions("2.15.1", "2.12.10")).toBeGreaterThan(0);
  });

  it("resolves NATS_SERVER_BIN first, then the pinned server in the per-user cache, then a recent enough one on PATH", async () => {
    const cache = join(dir, "cache");
    const emptyPath = join(dir, "nothing-here");
    const old = await fakeServerDir("old", "2.11.4");
    const recent = await fakeServerDir("recent", "2.14.0");
    const base = { HOME: join(dir, "home"), XDG_CACHE_HOME: cache };

    expect(await resolveNatsServerBinary({ ...base, PATH: recent, NATS_SERVER_BIN: "/opt/x/nats-server" })).toEqual({ binary: "/opt/x/nats-server", source: "NATS_SERVER_BIN" });
    expect(await resolveNatsServerBinary({ ...base, PATH: emptyPath })).toMatchObject({ source: "none" });
    // An old server on PATH is not taken.
    expect(await resolveNatsServerBinary({ ...base, PATH: old })).toEqual({ binary: "nats-server", source: "none", version: "2.11.4" });
    expect(await resolveNatsServerBinary({ ...base, PATH: recent })).toEqual({ binary: "nats-server", source: "system", version: "2.14.0" });

    const pinned = join(cache, "flexcore", "nats-server", "2.15.1", "nats-server");
    await mkdir(join(pinned, ".."), { recursive: true });
    await writeFile(pinned, "");
    expect(await resolveNatsServerBinary({ ...base, PATH: recent })).toEqual({ binary: pinned, source: "pinned", version: "2.15.1" });
    // Without XDG_CACHE_HOME the cache is ~/.cache.
    expect((await resolveNatsServerBinary({ HOME: base.HOME, PATH: emptyPath })).source).toBe("none");
  });

  it("refuses a server older than 2.12 with the version found, the minimum and how to get the pinned one", async () => {
    const old = join(await fakeServerDir("refused", "2.11.4"), "nats-server");
    const err = await startNatsServer({ binary: old }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NatsServerError);
    expect((err as NatsServerError).code).toBe("FLEX_NATS_SERVER");
    expect((err as Error).message).toMatch(/nats-server 2\.11\.4 .*too old.*2\.12\.0 or newer.*2\.15\.1.*NATS_SERVER_BIN/);
  });

  it.skipIf(!existsSync(DEBIAN_12_SERVER))("refuses Debian 12's nats-server 2.9.10 given as NATS_SERVER_BIN", async () => {
    const saved = process.env.NATS_SERVER_BIN;
    process.env.NATS_SERVER_BIN = DEBIAN_12_SERVER;
    try {
      await expect(startNatsServer()).rejects.toThrow(NatsServerError);
      await expect(startNatsServer()).rejects.toThrow(/nats-server 2\.9\.10 \(\/usr\/sbin\/nats-server\) is too old: FlexCore needs 2\.12\.0 or newer/);
    } finally {
      if (saved === undefined) delete process.env.NATS_SERVER_BIN;
      else process.env.NATS_SERVER_BIN = saved;
    }
  });
});
