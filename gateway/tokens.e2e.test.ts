import { readFile, writeFile } from "node:fs/promises";
import { parse } from "yaml";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { exportSPKI, generateKeyPair, SignJWT } from "jose";
import type { CryptoKey } from "jose";
import { jetstreamManager } from "@nats-io/jetstream";
import { startTestGateway } from "../test/gateway.js";
import type { TestGateway } from "../test/gateway.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { ConfigError } from "../processors/index.js";
import { eventSubject, InvalidOptionError, STREAMS } from "../streams/index.js";
import { createGateway, createTokenVerifier, EXTERNAL_ISSUER_ENV, externalIssuerOptions, gatewaySection } from "./index.js";
import type { ExternalIssuerOptions, Gateway } from "./index.js";

let nats: TestNats;
let dir: string;
let gw: Gateway;
let url: string;
const tenant = uniqueName("acme");

let fixture: TestGateway;

beforeAll(async () => {
  fixture = await startTestGateway();
  ({ nats, gw, url, dir } = fixture);
  await gw.users.add(tenant, "alice", "correct horse", ["reader", "writer"]);
}, 60_000);

afterAll(async () => {
  await fixture?.close();
});

async function http(base: string, method: string, path: string, options: { token?: string; body?: unknown } = {}): Promise<{ status: number; json: any }> {
  const r = await fetch(`${base}${path}`, {
    method,
    headers: { ...(options.token ? { authorization: `Bearer ${options.token}` } : {}), ...(options.body === undefined ? {} : { "content-type": "application/json" }) },
    ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
  });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : undefined };
}

async function signIn(): Promise<{ access_token: string; refresh_token: string }> {
  const r = await http(url, "POST", "/v1/auth/token", { body: { tenant, username: "alice", password: "correct horse" } });
  expect(r.status).toBe(200);
  return r.json;
}

const decode = (token: string, part: 0 | 1) => JSON.parse(Buffer.from(token.split(".")[part]!, "base64url").toString());

async function streamMessages(subject: string): Promise<number> {
  const jsm = await jetstreamManager(nats.nc);
  const info = await jsm.streams.info(STREAMS.events, { subjects_filter: subject });
  return info.state.subjects?.[subject] ?? 0;
}

describe("refresh and access tokens are not interchangeable", () => {
  it("a refresh token has its own typ and audience", async () => {
    const { access_token, refresh_token } = await signIn();
    expect(decode(access_token, 0).typ).toBe("at+jwt");
    expect(decode(access_token, 1).aud).toBe("flexcore-api");
    expect(decode(refresh_token, 0).typ).toBe("rt+jwt");
    expect(decode(refresh_token, 1).aud).toBe("flexcore-refresh");
  });

  it("a refresh token used as a bearer token reads and writes nothing", async () => {
    const { access_token, refresh_token } = await signIn();
    const subject = eventSubject(tenant, "order", "o1");
    // Control: the access token writes.
    expect((await http(url, "POST", "/v1/streams/order/o1", { token: access_token, body: { type: "Placed", data: { n: 1 } } })).status).toBe(201);
    const before = await streamMessages(subject);
    for (const [method, path, body] of [["GET", "/v1/auth/me", undefined], ["GET", "/v1/streams/order/o1", undefined], ["POST", "/v1/streams/order/o1", { type: "Placed", data: { n: 2 } }]] as const) {
      const r = await http(url, method, path, { token: refresh_token, ...(body ? { body } : {}) });
      expect({ path, status: r.status, code: r.json.error.code }).toEqual({ path, status: 401, code: "FLEX_UNAUTHENTICATED" });
    }
    expect(await streamMessages(subject)).toBe(before);
  });

  it("an access token presented to /v1/auth/refresh gets no new pair", async () => {
    const { access_token } = await signIn();
    const r = await http(url, "POST", "/v1/auth/refresh", { body: { refresh_token: access_token } });
    expect(r.status).toBe(401);
    expect(r.json.error.code).toBe("FLEX_REFRESH_INVALID");
    expect(r.json).not.toHaveProperty("access_token");
  });

  it("each of typ and aud alone keeps them apart (a token with one of each is refused both ways)", async () => {
    const key = gw.keys!.signingKey;
    const make = (typ: string, aud: string, extra: Record<string, unknown> = {}) =>
      new SignJWT({ tenant, roles: ["reader"], sid: "s1", gen: 1, ...extra }).setProtectedHeader({ alg: "RS256", typ, kid: gw.keys!.activeKid })
        .setIssuer("flexcore").setAudience(aud).setSubject("alice").setJti(uniqueName("j")).setIssuedAt().setExpirationTime("5m").sign(key);
    // Control: the right pair of typ and aud is an access token.
    expect((await http(url, "GET", "/v1/auth/me", { token: await make("at+jwt", "flexcore-api") })).status).toBe(200);
    for (const token of [await make("rt+jwt", "flexcore-api"), await make("at+jwt", "flexcore-refresh")]) {
      expect((await http(url, "GET", "/v1/auth/me", { token })).status).toBe(401);
      const refresh = await http(url, "POST", "/v1/auth/refresh", { body: { refresh_token: token } });
      expect(refresh.status).toBe(401);
      expect(refresh.json.error.code).toBe("FLEX_REFRESH_INVALID");
    }
  });

  it("refuses a refresh audience equal to the access audience", async () => {
    await expect(createGateway({ nc: nats.nc, dataDir: dir, port: 0, workflows: false, issuer: { audience: "same", refreshAudience: "same" } })).rejects.toMatchObject({ code: "FLEX_INVALID_OPTION", field: "refreshAudience" });
  });
});

describe("clock tolerance", () => {
  const now = () => Math.floor(Date.now() / 1000);
  const own = (exp: number) => new SignJWT({ tenant, roles: ["reader"] }).setProtectedHeader({ alg: "RS256", typ: "at+jwt", kid: gw.keys!.activeKid })
    .setIssuer("flexcore").setAudience("flexcore-api").setSubject("svc").setJti(uniqueName("j")).setIssuedAt(exp - 60).setExpirationTime(exp).sign(gw.keys!.signingKey);

  it("FlexCore's own tokens: none by default, configurable", async () => {
    const lenient = await createGateway({ nc: nats.nc, dataDir: dir, port: 0, workflows: false, metricsIntervalMs: 0, clockToleranceSeconds: 30 });
    try {
      const lenientUrl = await lenient.listen();
      const stale = await own(now() - 10);
      expect((await http(url, "GET", "/v1/auth/me", { token: stale })).status).toBe(401);
      expect((await http(lenientUrl, "GET", "/v1/auth/me", { token: stale })).status).toBe(200);
      expect((await http(lenientUrl, "GET", "/v1/auth/me", { token: await own(now() - 40) })).status).toBe(401);
    } finally {
      await lenient.close();
    }
    await expect(createGateway({ nc: nats.nc, dataDir: dir, port: 0, workflows: false, clockToleranceSeconds: -1 })).rejects.toBeInstanceOf(InvalidOptionError);
  });
});

describe("external issuer", () => {
  let idp: CryptoKey;
  let pem: string;
  let pemFile: string;
  const ext = (over: Partial<ExternalIssuerOptions> = {}): ExternalIssuerOptions => ({ publicKey: pem, issuer: "https://idp.example", audience: "flexcore", tenantClaim: "org", rolesClaim: "scope", ...over });
  const token = (options: { typ?: string | undefined; exp?: number; nbf?: number } = {}) => {
    const header: { alg: string; typ?: string } = { alg: "RS256" };
    if (!("typ" in options)) header.typ = "at+jwt";
    else if (options.typ !== undefined) header.typ = options.typ;
    const jwt = new SignJWT({ org: tenant, scope: "reader" }).setProtectedHeader(header).setIssuer("https://idp.example").setAudience("flexcore").setSubject("dana").setIssuedAt(Math.floor(Date.now() / 1000) - 120);
    if (options.nbf !== undefined) jwt.setNotBefore(options.nbf);
    return jwt.setExpirationTime(options.exp ?? Math.floor(Date.now() / 1000) + 300).sign(idp);
  };
  const withGateway = async (external: ExternalIssuerOptions, fn: (base: string) => Promise<void>) => {
    const g = await createGateway({ nc: nats.nc, port: 0, workflows: false, metricsIntervalMs: 0, external });
    try {
      await fn(await g.listen());
    } finally {
      await g.close();
    }
  };
  const status = async (base: string, t: string) => (await http(base, "GET", "/v1/auth/me", { token: t })).status;

  beforeAll(async () => {
    const pair = await generateKeyPair("RS256", { extractable: true });
    idp = pair.privateKey;
    pem = await exportSPKI(pair.publicKey);
    pemFile = join(dir, "idp.pub.pem");
    await writeFile(pemFile, pem);
  });

  it("pins typ: at+jwt (also application/at+jwt) and JWT by default; none, rt+jwt and others are refused", async () => {
    await withGateway(ext(), async (base) => {
      for (const typ of ["at+jwt", "application/at+jwt", "AT+JWT", "JWT"]) expect({ typ, status: await status(base, await token({ typ })) }).toEqual({ typ, status: 200 });
      for (const typ of [undefined, "rt+jwt", "id_token+jwt", "secevent+jwt"]) {
        const r = await http(base, "GET", "/v1/auth/me", { token: await token({ typ }) });
        expect({ typ, status: r.status, code: r.json.error.code }).toEqual({ typ, status: 401, code: "FLEX_UNAUTHENTICATED" });
        expect(r.json.error.details.reason).toMatch(/token type/u);
      }
    });
    await withGateway(ext({ typ: "at+jwt" }), async (base) => {
      expect(await status(base, await token({ typ: "at+jwt" }))).toBe(200);
      expect(await status(base, await token({ typ: "JWT" }))).toBe(401);
    });
  });

  it("accepts 30 s of clock skew by default, configurable down to 0", async () => {
    const now = Math.floor(Date.now() / 1000);
    await withGateway(ext(), async (base) => {
      expect(await status(base, await token({ exp: now - 10 }))).toBe(200);
      expect(await status(base, await token({ nbf: now + 10 }))).toBe(200);
      expect(await status(base, await token({ exp: now - 45 }))).toBe(401);
      expect(await status(base, await token({ nbf: now + 45 }))).toBe(401);
    });
    await withGateway(ext({ clockToleranceSeconds: 0 }), async (base) => {
      expect(await status(base, await token({ exp: now - 10 }))).toBe(401);
      expect(await status(base, await token({ nbf: now + 10 }))).toBe(401);
      expect(await status(base, await token())).toBe(200);
    });
  });

  it("drops the issuer's `operator` role unless grantsOperator is set: a tenant's IdP admin cannot rebuild every tenant's read models", async () => {
    const op = await new SignJWT({ org: tenant, scope: "operator reader" }).setProtectedHeader({ alg: "RS256", typ: "at+jwt" }).setIssuer("https://idp.example").setAudience("flexcore").setSubject("olga").setExpirationTime("5m").sign(idp);
    await withGateway(ext(), async (base) => {
      expect((await http(base, "GET", "/v1/auth/me", { token: op })).json.roles).toEqual(["reader"]);
      const r = await http(base, "POST", "/v1/projections/generic/rebuild", { token: op });
      expect([r.status, r.json.error.code]).toEqual([403, "FLEX_FORBIDDEN"]);
    });
    await withGateway(ext({ grantsOperator: true }), async (base) => {
      expect((await http(base, "GET", "/v1/auth/me", { token: op })).json.roles).toEqual(["operator", "reader"]);
      // Past the policy: this gateway's NATS has no engine, so 503, not 403.
      const r = await http(base, "POST", "/v1/projections/generic/rebuild", { token: op });
      expect([r.status, r.json.error.code]).toEqual([503, "FLEX_ENGINE_UNREACHABLE"]);
    });
    expect(gatewaySection({ [EXTERNAL_ISSUER_ENV.grants_operator]: "true" }, dir)({ external_issuer: { issuer: "https://idp.example", audience: "flexcore", public_key_file: "idp.pub.pem" } }, "gateway").externalIssuer?.grantsOperator).toBe(true);
    expect(() => gatewaySection({ [EXTERNAL_ISSUER_ENV.grants_operator]: "yes" }, dir)({ external_issuer: { issuer: "https://idp.example", audience: "flexcore", public_key_file: "idp.pub.pem" } }, "gateway")).toThrow(/grants_operator/u);
  });

  it("refuses tokens signed by another key than the configured public key", async () => {
    const other = await generateKeyPair("RS256");
    const forged = await new SignJWT({ org: tenant, scope: "admin" }).setProtectedHeader({ alg: "RS256", typ: "at+jwt" }).setIssuer("https://idp.example").setAudience("flexcore").setSubject("x").setExpirationTime("5m").sign(other.privateKey);
    await withGateway(ext(), async (base) => {
      expect(await status(base, forged)).toBe(401);
      expect(await status(base, await token())).toBe(200);
    });
  });

  it("validates the options, naming the field", () => {
    const bad: Array<[Partial<ExternalIssuerOptions>, string]> = [
      [{ jwksUrl: "https://idp.example/jwks" }, "external.jwksUrl"], // both a URL and a key
      [{ publicKey: undefined }, "external.jwksUrl"], // neither
      [{ publicKey: "not a key" }, "external.publicKey"],
      [{ typ: [] }, "external.typ"],
      [{ typ: "rt+jwt" }, "external.typ"],
      [{ clockToleranceSeconds: -5 }, "external.clockToleranceSeconds"],
      [{ algorithms: ["HS256"] }, "external.algorithms"],
    ];
    for (const [over, field] of bad) {
      expect(() => createTokenVerifier({ external: ext(over) }), field).toThrow(expect.objectContaining({ code: "FLEX_INVALID_OPTION", field }));
    }
  });

  describe("gateway.external_issuer in flexcore.yaml and FLEXCORE_EXTERNAL_*", () => {
    const issuerYaml = { issuer: "https://idp.example", audience: "flexcore", public_key_file: "idp.pub.pem", tenant_claim: "org", roles_claim: "scope" };

    it("reads the section, resolves the key file and serves the issuer's tokens", async () => {
      const config = gatewaySection({}, dir)({ external_issuer: { ...issuerYaml, clock_tolerance: "45s", typ: ["at+jwt"] }, auth_sweep_interval: "10s" }, "gateway");
      expect(config).toEqual({
        externalIssuer: { issuer: "https://idp.example", audience: "flexcore", jwksUrl: undefined, publicKeyFile: pemFile, tenantClaim: "org", rolesClaim: "scope", grantsOperator: false, typ: ["at+jwt"], algorithms: undefined, clockToleranceSeconds: 45 },
        authSweepIntervalMs: 10_000,
      });
      await withGateway(externalIssuerOptions(config.externalIssuer!), async (base) => {
        expect(await status(base, await token({ exp: Math.floor(Date.now() / 1000) - 40 }))).toBe(200);
        expect(await status(base, await token({ typ: "JWT" }))).toBe(401);
      });
      expect(gatewaySection({}, dir)(undefined, "gateway")).toEqual({ externalIssuer: undefined, authSweepIntervalMs: 60_000 });
    });

    it("the shipped flexcore.yaml has a valid gateway section (no external issuer)", async () => {
      const shipped = parse(await readFile(new URL("../flexcore.yaml", import.meta.url), "utf8")) as { gateway?: unknown };
      expect(gatewaySection({}, dir)(shipped.gateway, "gateway")).toEqual({ externalIssuer: undefined, authSweepIntervalMs: 60_000 });
    });

    it("lets the environment set or override each key", () => {
      const env = { [EXTERNAL_ISSUER_ENV.issuer]: "https://other.example", [EXTERNAL_ISSUER_ENV.audience]: "api", [EXTERNAL_ISSUER_ENV.jwks_url]: "https://other.example/jwks", [EXTERNAL_ISSUER_ENV.clock_tolerance]: "5", [EXTERNAL_ISSUER_ENV.typ]: "at+jwt, JWT" };
      expect(gatewaySection(env, dir)(undefined, "gateway").externalIssuer).toMatchObject({ issuer: "https://other.example", audience: "api", jwksUrl: "https://other.example/jwks", clockToleranceSeconds: 5, typ: ["at+jwt", "JWT"], tenantClaim: "tenant" });
      const overridden = gatewaySection({ [EXTERNAL_ISSUER_ENV.audience]: "from-env" }, dir)({ external_issuer: issuerYaml }, "gateway");
      expect(overridden.externalIssuer).toMatchObject({ issuer: "https://idp.example", audience: "from-env" });
    });

    it("rejects unknown keys, missing and bad values, naming the path (and the variable)", () => {
      const issues = (raw: unknown, env: Record<string, string> = {}): string[] => {
        try {
          gatewaySection(env, dir)(raw, "gateway");
        } catch (err) {
          expect(err).toBeInstanceOf(ConfigError);
          return (err as ConfigError).issues.map((i) => `${i.path}: ${i.message}`);
        }
        return [];
      };
      expect(issues({ external_issuers: {} })).toEqual([expect.stringMatching(/^gateway\.external_issuers: unknown key/u)]);
      expect(issues({ external_issuer: { ...issuerYaml, jwks: "x" } })).toEqual([expect.stringMatching(/^gateway\.external_issuer\.jwks: unknown key/u)]);
      expect(issues({ external_issuer: { audience: "a", jwks_url: "https://x/jwks" } })).toEqual([expect.stringMatching(/^gateway\.external_issuer\.issuer: expected/u)]);
      expect(issues({ external_issuer: { ...issuerYaml, jwks_url: "https://x/jwks" } })).toEqual([expect.stringMatching(/^gateway\.external_issuer\.jwks_url: give exactly one/u)]);
      expect(issues({ external_issuer: { ...issuerYaml, public_key_file: undefined, jwks_url: "ftp://x" } })).toEqual([expect.stringMatching(/^gateway\.external_issuer\.jwks_url: expected an http\(s\) URL/u)]);
      expect(issues({ external_issuer: { ...issuerYaml, clock_tolerance: "soon" } })).toEqual([expect.stringMatching(/^gateway\.external_issuer\.clock_tolerance: expected a duration/u)]);
      expect(issues({ external_issuer: issuerYaml }, { [EXTERNAL_ISSUER_ENV.clock_tolerance]: "-3" })).toEqual([expect.stringContaining("gateway.external_issuer.clock_tolerance (from FLEXCORE_EXTERNAL_CLOCK_TOLERANCE)")]);
      expect(() => externalIssuerOptions({ ...gatewaySection({}, dir)({ external_issuer: issuerYaml }, "gateway").externalIssuer!, publicKeyFile: join(dir, "missing.pem") })).toThrow(ConfigError);
    });
  });
});
