import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateNatsUsers } from "../gateway/index.js";
import { resolveNatsServerBinary } from "../streams/index.js";

const run = promisify(execFile);
const here = import.meta.dirname;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-deploy-"));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("deploy/ and docker-compose.yml", () => {
  it("the cluster configuration with the users nats-auth writes is accepted by nats-server -t, and has no anonymous access", async () => {
    await copyFile(join(here, "nats-cluster.conf"), join(dir, "cluster.conf"));
    await mkdir(join(dir, "auth"));
    const users = await generateNatsUsers({ tenants: ["acme"], seedsDir: join(dir, "seeds") });
    await import("node:fs/promises").then((fs) => fs.writeFile(join(dir, "auth", "users.conf"), users.config));
    const { binary: bin } = await resolveNatsServerBinary();
    const text = await readFile(join(dir, "cluster.conf"), "utf8");
    expect(text).toMatch(/^\s*sync_interval: always$/mu);
    const { stdout, stderr } = await run(bin, ["-t", "-c", join(dir, "cluster.conf")]);
    expect(`${stdout}${stderr}`).toMatch(/configuration file .* (is valid|test is successful)/i);
    expect(text).not.toMatch(/no_auth_user/);
  });

  it("compose gives the instances credentials and publishes NATS only on loopback", async () => {
    const compose = await readFile(join(here, "..", "docker-compose.yml"), "utf8");
    expect(compose).toMatch(/NATS_NKEY: \/seeds\/flexcore\.nk/);
    expect(compose).toMatch(/"127\.0\.0\.1:4222:4222"/);
    expect(compose).not.toMatch(/"4222:4222"/);
    for (const node of ["nats-1", "nats-2", "nats-3"]) expect(compose).toMatch(new RegExp(`nats-auth:/etc/nats/auth:ro", "${node}:/data"`));
  });
});
