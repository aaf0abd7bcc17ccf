import { execFile } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../../test/nats-server.js";
import type { TestNats } from "../../test/nats-server.js";
import { ensureTopology } from "../../streams/index.js";
import { createGateway } from "../../gateway/index.js";

const run = promisify(execFile);
const root = new URL("../../", import.meta.url).pathname;
let nats: TestNats;
let data: string;

function flexcore(args: string[], env: Record<string, string> = {}) {
  return run(process.execPath, ["--import", "tsx", join(root, "cli/main.ts"), ...args], {
    cwd: root,
    env: { ...process.env, ...nats.env, FLEXCORE_DATA: data, ...env },
  });
}

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  data = await mkdtemp(join(tmpdir(), "flexcore-cli-users-"));
});
afterAll(async () => {
  await nats?.close();
  if (data) await rm(data, { recursive: true, force: true });
});

describe("flexcore users / token / nats-users", () => {
  it("adds and lists users, and signs in with them through the gateway; `token` is accepted by the gateway", async () => {
    const tenant = uniqueName("cli");
    await flexcore(["users", "add", tenant, "erin", "--roles", "writer,reader"], { FLEXCORE_PASSWORD: "cli password 1" });
    const listed = (await flexcore(["users", "list", tenant])).stdout.trim().split("\n").map((l) => JSON.parse(l));
    expect(listed).toMatchObject([{ tenant, username: "erin", roles: ["writer", "reader"] }]);
    const token = (await flexcore(["token", "--tenant", tenant, "--roles", "reader", "--subject", "script"])).stdout.trim();
    const gw = await createGateway({ nc: nats.nc, dataDir: data, port: 0 });
    try {
      const signIn = await gw.app.inject({ method: "POST", url: "/v1/auth/token", payload: { tenant, username: "erin", password: "cli password 1" } });
      expect(signIn.statusCode).toBe(200);
      const me = await gw.app.inject({ method: "GET", url: "/v1/auth/me", headers: { authorization: `Bearer ${token}` } });
      expect(me.json()).toMatchObject({ tenant, subject: "script", roles: ["reader"] });
    } finally {
      await gw.close();
    }
  });

  it("grants and takes away `operator` (only the CLI can), ending the user's sessions", async () => {
    const tenant = uniqueName("ops");
    await flexcore(["users", "add", tenant, "olga", "--roles", "operator,reader"], { FLEXCORE_PASSWORD: "cli password 2" });
    const gw = await createGateway({ nc: nats.nc, dataDir: data, port: 0, workflows: false });
    try {
      const signIn = await gw.app.inject({ method: "POST", url: "/v1/auth/token", payload: { tenant, username: "olga", password: "cli password 2" } });
      expect(signIn.statusCode).toBe(200);
      const { access_token: access, refresh_token: refresh } = signIn.json() as { access_token: string; refresh_token: string };
      expect((await gw.app.inject({ method: "GET", url: "/v1/auth/me", headers: { authorization: `Bearer ${access}` } })).json().roles).toEqual(["operator", "reader"]);
      const changed = JSON.parse((await flexcore(["users", "roles", tenant, "olga", "--roles", "reader"])).stdout.trim()) as { roles: string[]; sessionsEnded: number };
      expect(changed).toMatchObject({ roles: ["reader"], sessionsEnded: 1 });
      // The old session is over: its refresh token no longer gives a token with operator.
      expect((await gw.app.inject({ method: "POST", url: "/v1/auth/refresh", payload: { refresh_token: refresh } })).statusCode).toBe(401);
      const bad = await flexcore(["users", "roles", tenant, "olga", "--roles", "root"]).then(() => undefined, (e: { code: number; stderr: string }) => e);
      expect(bad?.code).toBe(1);
      expect(bad?.stderr).toContain("roles");
    } finally {
      await gw.close();
    }
  });

  it("`keys` fills a shared key directory once; two gateways on it accept each other's tokens and `token`'s", async () => {
    const shared = join(data, "shared-keys");
    const env = { FLEXCORE_GATEWAY_KEYS_DIR: shared };
    const first = (await flexcore(["keys"], env)).stdout.trim().split("\n");
    expect(first).toHaveLength(1);
    expect(first[0]).toMatch(/ signs$/);
    expect((await flexcore(["keys", "list"], env)).stdout.trim().split("\n")).toEqual(first);
    const tenant = uniqueName("shared");
    const token = (await flexcore(["token", "--tenant", tenant, "--roles", "reader"], env)).stdout.trim();
    const one = await createGateway({ nc: nats.nc, keys: { dir: shared }, port: 0, workflows: false });
    const two = await createGateway({ nc: nats.nc, keys: { dir: shared }, port: 0, workflows: false });
    try {
      const fromOne = await one.issuer!.issueAccess({ tenant, subject: "svc", roles: ["reader"] });
      for (const t of [token, fromOne.token]) {
        const me = await two.app.inject({ method: "GET", url: "/v1/auth/me", headers: { authorization: `Bearer ${t}` } });
        expect(me.statusCode, me.body).toBe(200);
      }
    } finally {
      await one.close();
      await two.close();
    }
  });

  it("refuses reserved tenants (`_system`, any `_` name) in users add/list, token, nats-users and workflows, changing nothing", async () => {
    const fails = async (args: string[], env: Record<string, string> = {}) => {
      const err = await flexcore(args, env).then(() => undefined, (e: { code: number; stderr: string }) => e);
      expect(err, args.join(" ")).toBeDefined();
      expect(err!.code).toBe(1);
      expect(err!.stderr).toContain("[FLEX_TENANT_RESERVED]");
    };
    await fails(["users", "add", "_system", "ops", "--roles", "admin"], { FLEXCORE_PASSWORD: "ops password 1" });
    await fails(["users", "add", "_billing", "ops", "--roles", "admin"], { FLEXCORE_PASSWORD: "ops password 1" });
    await fails(["users", "list", "_system"]);
    const all = (await flexcore(["users", "list"])).stdout.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as { tenant: string });
    expect(all.filter((u) => u.tenant.startsWith("_"))).toEqual([]);
    const keysDir = join(data, "reserved-keys");
    await fails(["token", "--tenant", "_system", "--roles", "admin"], { FLEXCORE_GATEWAY_KEYS_DIR: keysDir });
    expect(existsSync(keysDir)).toBe(false);
    const out = join(data, "reserved-tenants.conf");
    await fails(["nats-users", "--tenant", "acme", "--tenant", "_system", "--out", out, "--seeds", join(data, "reserved-seeds")]);
    expect(existsSync(out)).toBe(false);
    expect(existsSync(join(data, "reserved-seeds")) ? await readdir(join(data, "reserved-seeds")) : []).toEqual([]);
    await fails(["workflows", "put", join(root, "workflows/examples/daily-report.yaml"), "--tenant", "_system"]);
    await fails(["workflows", "list"], { FLEXCORE_TENANT: "_system" });
  });

  it("nats-users prints a users block", async () => {
    const { stdout } = await flexcore(["nats-users", "--tenant", "acme", "--tenant", "globex", "--out", "-"]);
    expect(stdout).toContain('publish: { allow: ["evt.acme.>"], deny: ["evt.acme.workflow.>", "evt.acme.plugin.>", "evt.acme.metrics.>"] }');
    expect(stdout).toContain('subscribe: { allow: ["_INBOX_globex.>", "evt.globex.>", "drv.globex.>"] }');
  });
});
