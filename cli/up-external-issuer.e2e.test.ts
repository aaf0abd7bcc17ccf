import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { exportSPKI, generateKeyPair, SignJWT } from "jose";
import type { CryptoKey } from "jose";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { credentialsToEnv, ensureTopology, SYSTEM_TENANT } from "../streams/index.js";

// `flexcore up` with `gateway.external_issuer` in flexcore.yaml (and FLEXCORE_EXTERNAL_*
// overrides): the running gateway accepts that issuer's tokens, and nothing else.
const CLI = join(import.meta.dirname, "main.ts");
let nats: TestNats;
let dir: string;
let idp: CryptoKey;

/** The server URL a child process gets (one place to adapt when the suite gains credentials). */
function natsUrlForChild(): string {
  return nats.server.url;
}

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-up-external-"));
  const pair = await generateKeyPair("RS256", { extractable: true });
  idp = pair.privateKey;
  await writeFile(join(dir, "idp.pem"), await exportSPKI(pair.publicKey));
});
afterAll(async () => {
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function up(yaml: string, env: Record<string, string> = {}): Promise<{ child: ChildProcess; stderr: () => string; exited: Promise<number | null> }> {
  const config = join(dir, `${uniqueName("flexcore")}.yaml`);
  await writeFile(config, yaml);
  const child = spawn(process.execPath, ["--import", "tsx", CLI, "up", "--nats", natsUrlForChild(), "--config", config], {
    env: { ...process.env, NATS_URL: "", ...credentialsToEnv(nats.credentials), FLEXCORE_DATA: join(dir, uniqueName("data")), FLEXCORE_GATEWAY_PORT: "0", FLEXCORE_TEST: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
  for (let i = 0; i < 600 && !/flexcore: up/.test(stderr) && child.exitCode === null; i++) await sleep(100);
  return { child, stderr: () => stderr, exited };
}

const BASE = `
processors: []
runtime:
  threads: 1
workflows:
  runner: false
`;

const token = (claims: Record<string, unknown>, audience = "flexcore-up", exp = Math.floor(Date.now() / 1000) + 300) =>
  new SignJWT({ org: "acme", roles: ["reader"], ...claims }).setProtectedHeader({ alg: "RS256", typ: "at+jwt" })
    .setIssuer("https://idp.example").setAudience(audience).setSubject("dana").setIssuedAt(exp - 600).setExpirationTime(exp).sign(idp);

describe("flexcore up with an external issuer", () => {
  it("reads gateway.external_issuer (env overriding a key) and serves only that issuer's tokens", async () => {
    const yaml = `${BASE}
gateway:
  external_issuer:
    issuer: https://idp.example
    audience: overridden-below
    public_key_file: ${join(dir, "idp.pem")}
    tenant_claim: org
    clock_tolerance: 10s
`;
    const { child, stderr, exited } = await up(yaml, { FLEXCORE_EXTERNAL_AUDIENCE: "flexcore-up" });
    try {
      expect(stderr(), stderr()).toMatch(/flexcore: up/);
      expect(stderr()).toMatch(/gateway accepts tokens of https:\/\/idp\.example \(audience flexcore-up/);
      const url = /gateway at (http:\/\/[^\s]+) /.exec(stderr())![1]!;
      const me = async (t: string) => {
        const r = await fetch(`${url}/v1/auth/me`, { headers: { authorization: `Bearer ${t}` } });
        return { status: r.status, body: (await r.json()) as any };
      };
      expect(await me(await token({}))).toMatchObject({ status: 200, body: { tenant: "acme", subject: "dana" } });
      expect((await me(await token({}, "overridden-below"))).status).toBe(401);
      expect((await me(await token({ org: SYSTEM_TENANT }))).status).toBe(401);
      const now = Math.floor(Date.now() / 1000);
      expect((await me(await token({}, "flexcore-up", now - 5))).status).toBe(200); // within the 10 s tolerance
      expect((await me(await token({}, "flexcore-up", now - 30))).status).toBe(401); // beyond it
      expect((await fetch(`${url}/v1/auth/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ tenant: "acme", username: "a", password: "whatever1" }) })).status).toBe(503);
    } finally {
      child.kill("SIGTERM");
      await exited;
    }
  }, 120_000);

  it("a bad gateway section stops up before anything starts, naming the key", async () => {
    const { stderr, exited } = await up(`${BASE}
gateway:
  external_issuer:
    issuer: https://idp.example
    audience: flexcore
    jwks: https://idp.example/jwks
`);
    expect(await exited).toBe(1);
    expect(stderr()).toMatch(/gateway\.external_issuer\.jwks: unknown key/u);
    expect(stderr()).toMatch(/FLEX_CONFIG/u);
    expect(stderr()).not.toMatch(/gateway at/u);
  }, 60_000);
});
