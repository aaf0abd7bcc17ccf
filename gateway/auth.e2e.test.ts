import { createServer } from "node:http";
import type { Server } from "node:http";
import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHmac, createPublicKey } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { calculateJwkThumbprint, exportJWK, exportPKCS8, exportSPKI, generateKeyPair, SignJWT, UnsecuredJWT } from "jose";
import type { CryptoKey } from "jose";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { ensureTopology } from "../streams/index.js";
import { createGateway } from "./index.js";
import type { Gateway } from "./index.js";

let nats: TestNats;
let dir: string;
let gw: Gateway;
let gw2: Gateway;
let other: Gateway;
const tenant = uniqueName("acme");

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-gw-auth-"));
  // Two instances sharing keys and NATS (a deployment), and one with keys of its own (another issuer).
  gw = await createGateway({ nc: nats.nc, dataDir: dir, port: 0 });
  gw2 = await createGateway({ nc: await nats.connect(), dataDir: dir, port: 0 });
  other = await createGateway({ nc: nats.nc, dataDir: join(dir, "other"), port: 0 });
  await gw.users.add(tenant, "alice", "correct horse", ["reader", "writer"]);
  await gw.users.add(tenant, "bob", "battery staple", ["reader"]);
}, 60_000);

afterAll(async () => {
  await gw?.close();
  await gw2?.close();
  await other?.close();
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function signIn(g: Gateway, username: string, password: string): Promise<{ access_token: string; refresh_token: string }> {
  const r = await g.app.inject({ method: "POST", url: "/v1/auth/token", payload: { tenant, username, password } });
  expect(r.statusCode, r.body).toBe(200);
  return r.json();
}

async function me(g: Gateway, token: string): Promise<{ status: number; code: string | undefined }> {
  const r = await g.app.inject({ method: "GET", url: "/v1/auth/me", headers: { authorization: `Bearer ${token}` } });
  return { status: r.statusCode, code: r.statusCode === 200 ? undefined : r.json().error.code };
}

function b64(obj: unknown): string {
  return Buffer.from(JSON.stringify(obj)).toString("base64url");
}

describe("sign-in and tokens", () => {
  it("issues RS256 at+jwt tokens with the documented claims, verified with the JWKS", async () => {
    const { access_token } = await signIn(gw, "alice", "correct horse");
    const [h, p] = access_token.split(".").slice(0, 2).map((s) => JSON.parse(Buffer.from(s, "base64url").toString()));
    expect(h).toMatchObject({ alg: "RS256", typ: "at+jwt", kid: gw.keys!.activeKid });
    expect(p).toMatchObject({ iss: "flexcore", aud: "flexcore-api", sub: "alice", tenant, roles: ["reader", "writer"] });
    expect(p.exp - p.iat).toBe(900);
    expect(typeof p.jti).toBe("string");
    const jwks = (await gw.app.inject({ method: "GET", url: "/.well-known/jwks.json" })).json();
    expect(jwks.keys.map((k: { kid: string }) => k.kid)).toContain(h.kid);
    expect(jwks.keys[0]).not.toHaveProperty("d");
    expect((await me(gw, access_token)).status).toBe(200);
    expect((await me(gw2, access_token)).status).toBe(200);
  });

  it("rejects wrong passwords and unknown users alike", async () => {
    for (const payload of [{ tenant, username: "alice", password: "wrong password" }, { tenant, username: "nobody", password: "whatever1" }, { tenant: "other", username: "alice", password: "correct horse" }]) {
      const r = await gw.app.inject({ method: "POST", url: "/v1/auth/token", payload });
      expect(r.statusCode).toBe(401);
      expect(r.json().error.code).toBe("FLEX_INVALID_CREDENTIALS");
    }
  });

  it("stores the generated key with mode 0600", async () => {
    const s = await stat(join(dir, "gateway", "keys", `${gw.keys!.activeKid}.pem`));
    expect(s.mode & 0o777).toBe(0o600);
  });
});

describe("forged and invalid tokens", () => {
  let valid: string;
  let key: CryptoKey;
  const claims = (): Record<string, unknown> => ({ tenant, roles: ["admin", "reader", "writer"], sub: "mallory", iss: "flexcore", aud: "flexcore-api", jti: uniqueName("j"), iat: Math.floor(Date.now() / 1000) });
  const sign = (payload: Record<string, unknown>, header: Record<string, unknown> = {}, k: CryptoKey = key) =>
    new SignJWT(payload).setProtectedHeader({ alg: "RS256", typ: "at+jwt", kid: gw.keys!.activeKid, ...header }).sign(k);
  const inAMinute = () => Math.floor(Date.now() / 1000) + 60;

  beforeAll(async () => {
    valid = (await signIn(gw, "alice", "correct horse")).access_token;
    key = gw.keys!.signingKey;
  });

  it("accepts the control token signed the same way", async () => {
    expect((await me(gw, await sign({ ...claims(), exp: inAMinute() }))).status).toBe(200);
  });

  const cases: Array<[string, () => Promise<string>]> = [
    ["alg none", async () => new UnsecuredJWT({ ...claims(), exp: inAMinute() }).encode()],
    ["alg none with the real kid and typ", async () => `${b64({ alg: "none", typ: "at+jwt", kid: gw.keys!.activeKid })}.${b64({ ...claims(), exp: inAMinute() })}.`],
    ["HS256 signed with the public key", async () => {
      const pem = createPublicKey(Buffer.from(await exportSPKI(gw.keys!.publicKey(gw.keys!.activeKid)!))).export({ type: "spki", format: "pem" }).toString();
      const head = b64({ alg: "HS256", typ: "at+jwt", kid: gw.keys!.activeKid });
      const body = b64({ ...claims(), exp: inAMinute() });
      const mac = createHmac("sha256", pem).update(`${head}.${body}`).digest("base64url");
      return `${head}.${body}.${mac}`;
    }],
    ["unknown kid", async () => sign({ ...claims(), exp: inAMinute() }, { kid: "no-such-key-id" })],
    ["signed by another key under our kid", async () => sign({ ...claims(), exp: inAMinute() }, {}, (await generateKeyPair("RS256")).privateKey)],
    ["expired", async () => sign({ ...claims(), exp: Math.floor(Date.now() / 1000) - 5 })],
    ["nbf in the future", async () => sign({ ...claims(), exp: inAMinute(), nbf: inAMinute() })],
    ["wrong iss", async () => sign({ ...claims(), iss: "evil", exp: inAMinute() })],
    ["wrong aud", async () => sign({ ...claims(), aud: "other-api", exp: inAMinute() })],
    ["wrong typ", async () => sign({ ...claims(), exp: inAMinute() }, { typ: "JWT" })],
    ["a refresh token as access token", async () => (await signIn(gw, "alice", "correct horse")).refresh_token],
    ["missing exp", async () => sign(claims())],
    ["missing tenant", async () => sign({ ...claims(), tenant: undefined, exp: inAMinute() })],
    ["tampered payload (tenant changed)", async () => {
      const [h, p, s] = valid.split(".");
      const payload = JSON.parse(Buffer.from(p!, "base64url").toString());
      return `${h}.${b64({ ...payload, tenant: "victim" })}.${s}`;
    }],
    ["tampered signature", async () => {
      const [h, p, s] = valid.split(".");
      const sig = Buffer.from(s!, "base64url");
      sig[10] = sig[10]! ^ 0xff;
      return `${h}.${p}.${sig.toString("base64url")}`;
    }],
    ["garbage", async () => "not.a.token"],
  ];
  for (const [name, make] of cases) {
    it(`rejects ${name} with 401`, async () => {
      const token = await make();
      const r = await me(gw, token);
      expect(r).toEqual({ status: 401, code: "FLEX_UNAUTHENTICATED" });
    });
  }

  it("rejects a token from another issuer (a gateway with other keys)", async () => {
    await other.users.add(tenant, "carol", "other password", ["admin"]).catch(() => undefined);
    const foreign = await other.issuer!.issueAccess({ tenant, subject: "carol", roles: ["admin"] });
    expect((await me(other, foreign.token)).status).toBe(200);
    expect(await me(gw, foreign.token)).toEqual({ status: 401, code: "FLEX_UNAUTHENTICATED" });
  });

  it("caches a verified token and still refuses it once it expires", async () => {
    const exp = Math.floor(Date.now() / 1000) + 2;
    const token = await sign({ ...claims(), exp });
    const before = gw.verifier!.cacheSize;
    expect((await me(gw, token)).status).toBe(200);
    expect(gw.verifier!.cacheSize).toBe(before + 1);
    expect((await me(gw, token)).status).toBe(200);
    await new Promise((r) => setTimeout(r, exp * 1000 - Date.now() + 50));
    expect(await me(gw, token)).toEqual({ status: 401, code: "FLEX_UNAUTHENTICATED" });
  });

  it("answers 431 for a token over 8 KiB", async () => {
    const big = await sign({ ...claims(), exp: inAMinute(), pad: "x".repeat(9000) });
    const r = await gw.app.inject({ method: "GET", url: "/v1/auth/me", headers: { authorization: `Bearer ${big}` } });
    expect(r.statusCode).toBe(431);
    expect(r.json().error.code).toBe("FLEX_TOKEN_TOO_LARGE");
  });

  it("rejects a missing or non-bearer Authorization header", async () => {
    expect((await gw.app.inject({ method: "GET", url: "/v1/auth/me" })).statusCode).toBe(401);
    expect((await gw.app.inject({ method: "GET", url: "/v1/auth/me", headers: { authorization: `Basic ${valid}` } })).statusCode).toBe(401);
  });
});

describe("revocation", () => {
  it("a logged-out token is refused by every instance within 1 s, also when cached", async () => {
    const { access_token } = await signIn(gw, "alice", "correct horse");
    expect((await me(gw, access_token)).status).toBe(200);
    expect((await me(gw2, access_token)).status).toBe(200); // now cached in gw2
    const out = await gw.app.inject({ method: "POST", url: "/v1/auth/logout", headers: { authorization: `Bearer ${access_token}` } });
    expect(out.statusCode).toBe(204);
    expect(await me(gw, access_token)).toEqual({ status: 401, code: "FLEX_UNAUTHENTICATED" });
    const started = Date.now();
    while ((await me(gw2, access_token)).status !== 401) {
      expect(Date.now() - started).toBeLessThan(1_000);
      await new Promise((r) => setTimeout(r, 10));
    }
  });

  it("logout ends the session: its refresh token no longer works", async () => {
    const pair = await signIn(gw, "alice", "correct horse");
    await gw.app.inject({ method: "POST", url: "/v1/auth/logout", headers: { authorization: `Bearer ${pair.access_token}` } });
    const r = await gw.app.inject({ method: "POST", url: "/v1/auth/refresh", payload: { refresh_token: pair.refresh_token } });
    expect(r.statusCode).toBe(401);
    expect(r.json().error.code).toBe("FLEX_REFRESH_INVALID");
  });
});

describe("refresh", () => {
  it("rotates the refresh token, and a reused one revokes every session of the user", async () => {
    const s1 = await signIn(gw, "bob", "battery staple");
    const s2 = await signIn(gw, "bob", "battery staple");
    const alice = await signIn(gw, "alice", "correct horse");
    const r1 = await gw.app.inject({ method: "POST", url: "/v1/auth/refresh", payload: { refresh_token: s1.refresh_token } });
    expect(r1.statusCode).toBe(200);
    const rotated = r1.json() as { access_token: string; refresh_token: string };
    expect(rotated.refresh_token).not.toBe(s1.refresh_token);
    expect((await me(gw, rotated.access_token)).status).toBe(200);

    // The old refresh token again: theft.
    const reuse = await gw2.app.inject({ method: "POST", url: "/v1/auth/refresh", payload: { refresh_token: s1.refresh_token } });
    expect(reuse.statusCode).toBe(401);
    expect(reuse.json().error).toMatchObject({ code: "FLEX_REFRESH_REUSED", details: { revokedSessions: 2 } });

    const started = Date.now();
    for (const token of [rotated.access_token, s1.access_token, s2.access_token]) {
      while ((await me(gw, token)).status !== 401) {
        expect(Date.now() - started).toBeLessThan(1_000);
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    for (const refresh_token of [rotated.refresh_token, s2.refresh_token]) {
      const r = await gw.app.inject({ method: "POST", url: "/v1/auth/refresh", payload: { refresh_token } });
      expect(r.statusCode).toBe(401);
    }
    // Another user's session is untouched.
    expect((await me(gw, alice.access_token)).status).toBe(200);
    // Bob can sign in again.
    expect((await me(gw, (await signIn(gw, "bob", "battery staple")).access_token)).status).toBe(200);
  });
});

describe("password change (flexcore users passwd)", () => {
  it("ends the user's sessions and only the new password signs in", async () => {
    await gw.users.add(tenant, "carl", "first password", ["reader"]);
    const pair = await signIn(gw, "carl", "first password");
    await gw.users.setPassword(tenant, "carl", "second password");
    expect(await gw.sessions!.revokeUser(tenant, "carl")).toBe(1);
    expect(await me(gw, pair.access_token)).toEqual({ status: 401, code: "FLEX_UNAUTHENTICATED" });
    const refresh = await gw.app.inject({ method: "POST", url: "/v1/auth/refresh", payload: { refresh_token: pair.refresh_token } });
    expect(refresh.statusCode).toBe(401);
    const old = await gw.app.inject({ method: "POST", url: "/v1/auth/token", payload: { tenant, username: "carl", password: "first password" } });
    expect(old.statusCode).toBe(401);
    expect((await me(gw, (await signIn(gw, "carl", "second password")).access_token)).status).toBe(200);
  });
});

describe("keys", () => {
  it("rotation by kid: new tokens use the new key, old tokens keep working, JWKS lists both", async () => {
    const before = await gw.issuer!.issueAccess({ tenant, subject: "svc", roles: ["reader"] });
    const oldKid = gw.keys!.activeKid;
    const newKid = await gw.keys!.rotate();
    expect(newKid).not.toBe(oldKid);
    const after = await gw.issuer!.issueAccess({ tenant, subject: "svc", roles: ["reader"] });
    expect(JSON.parse(Buffer.from(after.token.split(".")[0]!, "base64url").toString()).kid).toBe(newKid);
    expect((await me(gw, before.token)).status).toBe(200);
    expect((await me(gw, after.token)).status).toBe(200);
    const kids = (await gw.app.inject({ method: "GET", url: "/.well-known/jwks.json" })).json().keys.map((k: { kid: string }) => k.kid);
    expect(kids).toEqual([newKid, oldKid]);
    // Another instance sharing the key directory reads it again on the unknown kid.
    expect((await me(gw2, after.token)).status).toBe(200);
    expect(gw2.keys!.activeKid).toBe(newKid);
  });
});

describe("keys from files", () => {
  it("signs with the first PEM file and verifies with the others (rotation by replacing files)", async () => {
    const oldPair = await generateKeyPair("RS256", { extractable: true });
    const newPair = await generateKeyPair("RS256", { extractable: true });
    const oldFile = join(dir, "old.pem");
    const newFile = join(dir, "new.pem");
    await writeFile(oldFile, await exportPKCS8(oldPair.privateKey), { mode: 0o600 });
    await writeFile(newFile, await exportPKCS8(newPair.privateKey), { mode: 0o600 });
    const before = await createGateway({ nc: nats.nc, port: 0, keys: { keyFiles: [oldFile] }, workflows: false });
    const oldToken = (await before.issuer!.issueAccess({ tenant, subject: "svc", roles: ["reader"] })).token;
    await before.close();
    // Rotated: the new key signs, the old one (its public half is enough) still verifies.
    const pubFile = join(dir, "old.pub.pem");
    await writeFile(pubFile, await exportSPKI(oldPair.publicKey));
    const after = await createGateway({ nc: nats.nc, port: 0, keys: { keyFiles: [newFile, pubFile] }, workflows: false });
    try {
      expect((await me(after, oldToken)).status).toBe(200);
      const fresh = (await after.issuer!.issueAccess({ tenant, subject: "svc", roles: ["reader"] })).token;
      expect((await me(after, fresh)).status).toBe(200);
      const jwks = (await after.app.inject({ method: "GET", url: "/.well-known/jwks.json" })).json();
      expect(jwks.keys.map((k: { kid: string }) => k.kid)).toEqual([after.keys!.activeKid, await calculateJwkThumbprint(await exportJWK(oldPair.publicKey))]);
      expect(await me(gw, fresh)).toEqual({ status: 401, code: "FLEX_UNAUTHENTICATED" });
    } finally {
      await after.close();
    }
  });
});

describe("external issuer", () => {
  let server: Server;
  let idpKey: CryptoKey;
  let external: Gateway;

  beforeAll(async () => {
    const pair = await generateKeyPair("RS256");
    idpKey = pair.privateKey;
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: "idp-1", alg: "RS256", use: "sig" };
    server = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    external = await createGateway({
      nc: nats.nc,
      port: 0,
      external: { jwksUrl: `http://127.0.0.1:${port}/jwks`, issuer: "https://idp.example", audience: "flexcore", tenantClaim: "org", rolesClaim: "scope" },
    });
  });
  afterAll(async () => {
    await external?.close();
    await new Promise((r) => server?.close(r));
  });

  const idpToken = (payload: Record<string, unknown>) =>
    new SignJWT({ org: tenant, scope: "reader writer", ...payload }).setProtectedHeader({ alg: "RS256", typ: "at+jwt", kid: "idp-1" }).setIssuer("https://idp.example").setAudience("flexcore").setSubject("dana").setIssuedAt().setExpirationTime("5m").sign(idpKey);

  it("accepts the issuer's tokens with its claim names", async () => {
    const r = await external.app.inject({ method: "GET", url: "/v1/auth/me", headers: { authorization: `Bearer ${await idpToken({})}` } });
    expect(r.statusCode).toBe(200);
    expect(r.json()).toMatchObject({ tenant, subject: "dana", roles: ["reader", "writer"] });
  });

  it("logout revokes an external token whatever its jti looks like", async () => {
    const token = await idpToken({ jti: "urn:idp:token.42/x" });
    expect((await me(external, token)).status).toBe(200);
    const out = await external.app.inject({ method: "POST", url: "/v1/auth/logout", headers: { authorization: `Bearer ${token}` } });
    expect(out.statusCode).toBe(204);
    expect(await me(external, token)).toEqual({ status: 401, code: "FLEX_UNAUTHENTICATED" });
  });

  it("refuses FlexCore's own tokens, another audience, and offers no sign-in", async () => {
    const own = await gw.issuer!.issueAccess({ tenant, subject: "svc", roles: ["reader"] });
    expect(await me(external, own.token)).toEqual({ status: 401, code: "FLEX_UNAUTHENTICATED" });
    const wrongAud = await new SignJWT({ org: tenant }).setProtectedHeader({ alg: "RS256", typ: "at+jwt", kid: "idp-1" }).setIssuer("https://idp.example").setAudience("else").setSubject("x").setExpirationTime("5m").sign(idpKey);
    expect(await me(external, wrongAud)).toEqual({ status: 401, code: "FLEX_UNAUTHENTICATED" });
    const r = await external.app.inject({ method: "POST", url: "/v1/auth/token", payload: { tenant, username: "alice", password: "correct horse" } });
    expect(r.statusCode).toBe(503);
  });
});
