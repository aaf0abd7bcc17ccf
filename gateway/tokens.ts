import { createPublicKey } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, SignJWT } from "jose";
import type { JWTHeaderParameters, JWTPayload, JWTVerifyGetKey, JWTVerifyOptions } from "jose";
import { nuid } from "@nats-io/transport-node";
import { InvalidOptionError, TenantReservedError } from "../streams/index.js";
import { InvalidRefreshTokenError, TokenTooLargeError, UnauthenticatedError } from "./errors.js";
import { SIGNING_ALG } from "./keys.js";
import type { KeyStore } from "./keys.js";
import { ROLES, TENANT_GRANTABLE_ROLES } from "./policy.js";
import type { Role } from "./policy.js";
import type { Revocations } from "./revocations.js";
import { checkUserTenant } from "./users.js";

/** `typ` header of access tokens (RFC 9068); a refresh token is never accepted as one. */
export const ACCESS_TOKEN_TYPE = "at+jwt";
/** `typ` header of refresh tokens. */
export const REFRESH_TOKEN_TYPE = "rt+jwt";
/** Access token lifetime, in seconds (15 min). */
export const DEFAULT_ACCESS_TTL_S = 15 * 60;
/** Refresh token lifetime, in seconds (30 days). */
export const DEFAULT_REFRESH_TTL_S = 30 * 24 * 3600;
/** Longest `Authorization` header accepted, in bytes; longer ones get 431. */
export const MAX_TOKEN_BYTES = 8 * 1024;
/** `iss` of tokens FlexCore issues. */
export const DEFAULT_ISSUER = "flexcore";
/** `aud` of access tokens FlexCore issues. */
export const DEFAULT_AUDIENCE = "flexcore-api";
/**
 * `aud` of refresh tokens FlexCore issues: not the access audience, so a refresh token is
 * refused as an access token on its audience as well as on its `typ` (and by any other
 * verifier of FlexCore's access tokens that checks only one of them).
 */
export const DEFAULT_REFRESH_AUDIENCE = "flexcore-refresh";
/** Clock skew accepted on `exp`/`nbf`/`iat` of an external issuer's tokens, in seconds. */
export const DEFAULT_EXTERNAL_CLOCK_TOLERANCE_S = 30;
/**
 * `typ` headers accepted from an external issuer unless `typ` says otherwise: RFC 9068
 * access tokens (`at+jwt`, also written `application/at+jwt`) and plain `JWT`, which most
 * providers put on access tokens. A token without `typ` is refused.
 */
export const DEFAULT_EXTERNAL_TOKEN_TYPES: readonly string[] = ["at+jwt", "JWT"];
/** Verified tokens kept in memory. */
export const DEFAULT_TOKEN_CACHE_SIZE = 50_000;
/** Shortest time between two reloads of the key directory on an unknown `kid`, in ms. */
export const KEY_RELOAD_INTERVAL_MS = 5_000;

/** Who is calling: taken only from a verified token. */
export interface Principal {
  readonly tenant: string;
  /** `sub`: the username (or service name for `flexcore token`). */
  readonly subject: string;
  /** Known roles of the token; unknown role names are dropped. */
  readonly roles: readonly Role[];
  readonly jti: string;
  /** The sign-in session the token belongs to (absent for `flexcore token` tokens). */
  readonly sid: string | undefined;
  /** `exp`, in seconds since the epoch. */
  readonly expiresAt: number;
}

/** Options of tokens FlexCore issues and verifies itself. */
export interface LocalIssuerOptions {
  /** @default "flexcore" */
  readonly issuer?: string;
  /** `aud` of access tokens. @default "flexcore-api" */
  readonly audience?: string;
  /** `aud` of refresh tokens; must differ from `audience`. @default "flexcore-refresh" */
  readonly refreshAudience?: string;
  /** @default 900 */
  readonly accessTtlSeconds?: number;
  /** @default 2592000 (30 days) */
  readonly refreshTtlSeconds?: number;
}

/** An external OpenID provider (or any JWKS-publishing issuer) instead of FlexCore's own tokens. */
export interface ExternalIssuerOptions {
  /** Where the issuer publishes its keys (give this or `publicKey`). */
  readonly jwksUrl?: string;
  /** The issuer's public key as PEM (SPKI), for issuers without a JWKS endpoint (give this or `jwksUrl`). */
  readonly publicKey?: string;
  /** Expected `iss`. */
  readonly issuer: string;
  /** Expected `aud`. */
  readonly audience: string;
  /** Claim holding the tenant. @default "tenant" */
  readonly tenantClaim?: string;
  /** Claim holding the role list (array or space-separated string). @default "roles" */
  readonly rolesClaim?: string;
  /**
   * Whether the issuer's `operator` role counts (projection rebuilds, for every tenant). Off,
   * the role is dropped from its tokens: many providers let a tenant's own administrators
   * set role claims, and `operator` must come from whoever runs the deployment.
   * @default false
   */
  readonly grantsOperator?: boolean;
  /**
   * Accepted `typ` headers (compared without case and without an `application/` prefix); a
   * token without `typ`, or with another one, is refused.
   * @default ["at+jwt", "JWT"] ({@link DEFAULT_EXTERNAL_TOKEN_TYPES})
   */
  readonly typ?: string | readonly string[];
  /** Accepted clock skew on `exp`, `nbf` and `iat`, in seconds. @default 30 */
  readonly clockToleranceSeconds?: number;
  /** @default ["RS256"] */
  readonly algorithms?: readonly string[];
}

/** Signs FlexCore's access and refresh tokens. */
export interface TokenIssuer {
  readonly issuer: string;
  readonly audience: string;
  readonly refreshAudience: string;
  readonly accessTtlSeconds: number;
  readonly refreshTtlSeconds: number;
  issueAccess(claims: { tenant: string; subject: string; roles: readonly Role[]; sid?: string; ttlSeconds?: number }): Promise<{ token: string; jti: string; expiresAt: number }>;
  /** A refresh token (`typ: rt+jwt`, `aud` the refresh audience); `notAfter` (seconds since the epoch) caps its `exp`, e.g. at its session's end. */
  issueRefresh(claims: { tenant: string; subject: string; sid: string; gen: number; notAfter?: number }): Promise<{ token: string; expiresAt: number }>;
  /** Verifies a refresh token's signature, issuer, audience, type and expiry. @throws InvalidRefreshTokenError */
  verifyRefresh(token: string): Promise<{ tenant: string; subject: string; sid: string; gen: number; expiresAt: number }>;
}

/** Verifies access tokens, with a cache of verified tokens and revocation checks. */
export interface TokenVerifier {
  /**
   * @throws TokenTooLargeError over {@link MAX_TOKEN_BYTES}
   * @throws UnauthenticatedError for anything else wrong with the token, revoked included
   */
  verify(token: string): Promise<Principal>;
  /**
   * The principal of a token already verified and still cached, checked for expiry and
   * revocation as `verify` does (and throwing the same errors); `undefined` when the token
   * is not in the cache and needs `verify`. Synchronous, for the hot path.
   */
  verifyCached(token: string): Principal | undefined;
  /** Tokens currently cached. */
  readonly cacheSize: number;
}

function positive(field: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1) throw new InvalidOptionError(field, value, "an integer number of seconds from 1 and up");
  return value;
}

function nonEmpty(field: string, value: unknown): string {
  if (typeof value !== "string" || value.length === 0) throw new InvalidOptionError(field, value, "a non-empty string");
  return value;
}

/** Creates the issuer of FlexCore's own tokens, signing with the store's active key. */
export function createTokenIssuer(keys: KeyStore, options: LocalIssuerOptions = {}): TokenIssuer {
  const issuer = nonEmpty("issuer", options.issuer ?? DEFAULT_ISSUER);
  const audience = nonEmpty("audience", options.audience ?? DEFAULT_AUDIENCE);
  const refreshAudience = nonEmpty("refreshAudience", options.refreshAudience ?? DEFAULT_REFRESH_AUDIENCE);
  if (refreshAudience === audience) throw new InvalidOptionError("refreshAudience", refreshAudience, `an audience other than the access tokens' (\`${audience}\`)`);
  const accessTtlSeconds = positive("accessTtlSeconds", options.accessTtlSeconds, DEFAULT_ACCESS_TTL_S);
  const refreshTtlSeconds = positive("refreshTtlSeconds", options.refreshTtlSeconds, DEFAULT_REFRESH_TTL_S);
  const keyFor: JWTVerifyGetKey = (header: JWTHeaderParameters) => {
    const key = header.kid ? keys.publicKey(header.kid) : undefined;
    if (!key) throw new joseErrors.JWKSNoMatchingKey();
    return key;
  };
  return {
    issuer,
    audience,
    refreshAudience,
    accessTtlSeconds,
    refreshTtlSeconds,
    async issueAccess(c) {
      const jti = nuid.next();
      const now = Math.floor(Date.now() / 1000);
      const expiresAt = now + positive("ttlSeconds", c.ttlSeconds, accessTtlSeconds);
      const token = await new SignJWT({ tenant: checkUserTenant(c.tenant), roles: [...c.roles], ...(c.sid ? { sid: c.sid } : {}) })
        .setProtectedHeader({ alg: SIGNING_ALG, typ: ACCESS_TOKEN_TYPE, kid: keys.activeKid })
        .setIssuer(issuer)
        .setAudience(audience)
        .setSubject(c.subject)
        .setJti(jti)
        .setIssuedAt(now)
        .setExpirationTime(expiresAt)
        .sign(keys.signingKey);
      return { token, jti, expiresAt };
    },
    async issueRefresh(c) {
      const now = Math.floor(Date.now() / 1000);
      const expiresAt = Math.min(now + refreshTtlSeconds, c.notAfter ?? Number.MAX_SAFE_INTEGER);
      const token = await new SignJWT({ tenant: checkUserTenant(c.tenant), sid: c.sid, gen: c.gen })
        .setProtectedHeader({ alg: SIGNING_ALG, typ: REFRESH_TOKEN_TYPE, kid: keys.activeKid })
        .setIssuer(issuer)
        .setAudience(refreshAudience)
        .setSubject(c.subject)
        .setJti(nuid.next())
        .setIssuedAt(now)
        .setExpirationTime(expiresAt)
        .sign(keys.signingKey);
      return { token, expiresAt };
    },
    async verifyRefresh(token) {
      if (typeof token !== "string" || token.length === 0 || token.length > MAX_TOKEN_BYTES) throw new InvalidRefreshTokenError("missing or too long");
      try {
        const { payload } = await jwtVerify(token, keyFor, {
          algorithms: [SIGNING_ALG], issuer, audience: refreshAudience, typ: REFRESH_TOKEN_TYPE, requiredClaims: ["exp", "sub", "sid", "tenant"],
        });
        const gen = payload.gen;
        if (typeof payload.sid !== "string" || typeof payload.tenant !== "string" || typeof gen !== "number" || !Number.isInteger(gen)) throw new InvalidRefreshTokenError("malformed claims");
        return { tenant: payload.tenant, subject: payload.sub!, sid: payload.sid, gen, expiresAt: payload.exp! };
      } catch (err) {
        if (err instanceof InvalidRefreshTokenError) throw err;
        throw new InvalidRefreshTokenError(reasonOf(err), { cause: err });
      }
    },
  };
}

function reasonOf(err: unknown): string {
  const code = (err as { code?: string }).code;
  switch (code) {
    case "ERR_JWT_EXPIRED": return "token expired";
    case "ERR_JWT_CLAIM_VALIDATION_FAILED": return `claim check failed (${(err as { claim?: string }).claim ?? "?"}: ${(err as Error).message})`;
    case "ERR_JOSE_ALG_NOT_ALLOWED": return "algorithm not allowed (only RS256)";
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED": return "signature verification failed";
    case "ERR_JWKS_NO_MATCHING_KEY": return "unknown signing key (kid)";
    case "ERR_JWS_INVALID": case "ERR_JWT_INVALID": return "malformed token";
    case "ERR_JOSE_NOT_SUPPORTED": return "unsupported token";
    default: return code ? `invalid token (${code})` : "invalid token";
  }
}

interface VerifierConfig {
  readonly key: JWTVerifyGetKey | KeyObject;
  /** Accepted `typ` values, normalised ({@link normalTyp}); undefined when jose pins it. */
  readonly types: ReadonlySet<string> | undefined;
  readonly options: JWTVerifyOptions;
  readonly tenantClaim: string;
  readonly rolesClaim: string;
  /** Roles a token of this issuer may carry; others are dropped. */
  readonly roles: ReadonlySet<string>;
  readonly revocations: Revocations | undefined;
  readonly cacheSize: number;
}

/** Options of {@link createTokenVerifier}. */
export interface TokenVerifierOptions {
  /** Verify FlexCore's own tokens with these keys (give this or `external`). */
  readonly keys?: KeyStore;
  readonly local?: LocalIssuerOptions;
  /** Verify an external issuer's tokens instead. */
  readonly external?: ExternalIssuerOptions;
  /** Revoked `jti`/`sid` list; checked on every request, cached tokens included. */
  readonly revocations?: Revocations;
  /** Verified tokens kept until their expiry; 0 disables the cache. @default 50000 */
  readonly cacheSize?: number;
  /**
   * Accepted clock skew for `exp`/`nbf` of FlexCore's own tokens, in seconds (an external
   * issuer's is `external.clockToleranceSeconds`). @default 0
   */
  readonly clockToleranceSeconds?: number;
}

/** `typ` as RFC 8725 §3.11 compares it: without case and without an `application/` prefix. */
function normalTyp(typ: string): string {
  const t = typ.toLowerCase();
  return t.startsWith("application/") ? t.slice("application/".length) : t;
}

function tolerance(field: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || value > 3600) throw new InvalidOptionError(field, value, "a number of seconds from 0 to 3600");
  return value;
}

/** Creates a verifier for FlexCore's tokens (`keys`) or an external issuer's (`external`). */
export function createTokenVerifier(options: TokenVerifierOptions): TokenVerifier {
  const cacheSize = options.cacheSize ?? DEFAULT_TOKEN_CACHE_SIZE;
  if (!Number.isInteger(cacheSize) || cacheSize < 0) throw new InvalidOptionError("cacheSize", cacheSize, "an integer from 0 and up");
  const clockTolerance = tolerance("clockToleranceSeconds", options.clockToleranceSeconds, 0);
  if (options.external) {
    const ext = options.external;
    let key: JWTVerifyGetKey | KeyObject;
    if ((ext.jwksUrl === undefined) === (ext.publicKey === undefined)) {
      throw new InvalidOptionError("external.jwksUrl", ext.jwksUrl, "a JWKS URL, or else `external.publicKey` (exactly one of the two)");
    }
    if (ext.jwksUrl !== undefined) {
      let url: URL;
      try {
        url = new URL(nonEmpty("external.jwksUrl", ext.jwksUrl));
      } catch (err) {
        if (err instanceof InvalidOptionError) throw err;
        throw new InvalidOptionError("external.jwksUrl", ext.jwksUrl, "an absolute URL");
      }
      if (url.protocol !== "https:" && url.protocol !== "http:") throw new InvalidOptionError("external.jwksUrl", ext.jwksUrl, "an http(s) URL");
      key = createRemoteJWKSet(url);
    } else {
      try {
        key = createPublicKey(nonEmpty("external.publicKey", ext.publicKey));
      } catch (err) {
        if (err instanceof InvalidOptionError) throw err;
        throw new InvalidOptionError("external.publicKey", "(unparsable)", "a public key in PEM (-----BEGIN PUBLIC KEY-----)");
      }
    }
    const typList = ext.typ === undefined ? DEFAULT_EXTERNAL_TOKEN_TYPES : typeof ext.typ === "string" ? [ext.typ] : ext.typ;
    if (!Array.isArray(typList) || typList.length === 0 || typList.some((t) => typeof t !== "string" || t.length === 0)) {
      throw new InvalidOptionError("external.typ", ext.typ, "a non-empty `typ` or list of them (e.g. \"at+jwt\")");
    }
    if (typList.some((t) => normalTyp(t) === REFRESH_TOKEN_TYPE)) throw new InvalidOptionError("external.typ", ext.typ, `types other than \`${REFRESH_TOKEN_TYPE}\` (refresh tokens)`);
    const algorithms = [...(ext.algorithms ?? [SIGNING_ALG])];
    if (ext.grantsOperator !== undefined && typeof ext.grantsOperator !== "boolean") throw new InvalidOptionError("external.grantsOperator", ext.grantsOperator, "true or false");
    const grantsOperator = ext.grantsOperator ?? false;
    if (algorithms.length === 0 || algorithms.some((a) => a === "none" || a.startsWith("HS"))) {
      throw new InvalidOptionError("external.algorithms", algorithms.join(","), "asymmetric algorithms only (no none, no HS*)");
    }
    return new CachingVerifier({
      key,
      types: new Set(typList.map(normalTyp)),
      options: {
        algorithms, issuer: nonEmpty("external.issuer", ext.issuer), audience: nonEmpty("external.audience", ext.audience),
        requiredClaims: ["exp", "sub"], clockTolerance: tolerance("external.clockToleranceSeconds", ext.clockToleranceSeconds, DEFAULT_EXTERNAL_CLOCK_TOLERANCE_S),
      },
      tenantClaim: nonEmpty("external.tenantClaim", ext.tenantClaim ?? "tenant"),
      rolesClaim: nonEmpty("external.rolesClaim", ext.rolesClaim ?? "roles"),
      roles: new Set<string>(grantsOperator ? ROLES : TENANT_GRANTABLE_ROLES),
      revocations: options.revocations,
      cacheSize,
    });
  }
  const keys = options.keys;
  if (!keys) throw new InvalidOptionError("keys", keys, "a KeyStore (or give `external`)");
  const local = options.local ?? {};
  // An unknown kid may be a key another instance sharing the key directory rotated to:
  // read the directory again, at most once per KEY_RELOAD_INTERVAL_MS so forged kids cost nothing.
  let reloadedAt = Number.NEGATIVE_INFINITY;
  return new CachingVerifier({
    key: async (header: JWTHeaderParameters) => {
      const kid = header.kid;
      let key = kid ? keys.publicKey(kid) : undefined;
      if (!key && kid && Date.now() - reloadedAt >= KEY_RELOAD_INTERVAL_MS) {
        reloadedAt = Date.now();
        await keys.reload().catch(() => undefined);
        key = keys.publicKey(kid);
      }
      if (!key) throw new joseErrors.JWKSNoMatchingKey();
      return key;
    },
    types: undefined,
    options: {
      algorithms: [SIGNING_ALG], issuer: local.issuer ?? DEFAULT_ISSUER, audience: local.audience ?? DEFAULT_AUDIENCE, typ: ACCESS_TOKEN_TYPE,
      requiredClaims: ["exp", "iat", "jti", "sub", "tenant"], clockTolerance,
    },
    tenantClaim: "tenant",
    rolesClaim: "roles",
    roles: new Set<string>(ROLES),
    revocations: options.revocations,
    cacheSize,
  });
}

class CachingVerifier implements TokenVerifier {
  readonly #config: VerifierConfig;
  // Token text -> verified principal; insertion order is eviction order.
  readonly #cache = new Map<string, Principal>();

  constructor(config: VerifierConfig) {
    this.#config = config;
  }

  get cacheSize(): number {
    return this.#cache.size;
  }

  verifyCached(token: string): Principal | undefined {
    const hit = this.#cache.get(token);
    if (!hit) return undefined;
    if (hit.expiresAt * 1000 <= Date.now()) {
      this.#cache.delete(token);
      throw new UnauthenticatedError("token expired");
    }
    this.#checkRevoked(hit);
    return hit;
  }

  async verify(token: string): Promise<Principal> {
    if (typeof token !== "string" || token.length === 0) throw new UnauthenticatedError("missing bearer token");
    if (token.length > MAX_TOKEN_BYTES) throw new TokenTooLargeError(token.length, MAX_TOKEN_BYTES);
    const hit = this.verifyCached(token);
    if (hit) return hit;
    let payload: JWTPayload;
    let typ: unknown;
    try {
      // Two calls so TypeScript picks the overload (a key resolver or a key).
      const key = this.#config.key;
      const verified = typeof key === "function" ? await jwtVerify(token, key, this.#config.options) : await jwtVerify(token, key, this.#config.options);
      payload = verified.payload;
      typ = verified.protectedHeader.typ;
    } catch (err) {
      throw new UnauthenticatedError(reasonOf(err), { cause: err });
    }
    const types = this.#config.types;
    if (types && (typeof typ !== "string" || !types.has(normalTyp(typ)))) {
      throw new UnauthenticatedError(`token type ${typeof typ === "string" ? `\`${typ}\`` : "(none)"} is not accepted; expected ${[...types].join(" or ")}`);
    }
    const principal = this.#principal(payload);
    this.#checkRevoked(principal);
    if (this.#config.cacheSize > 0) {
      if (this.#cache.size >= this.#config.cacheSize) this.#cache.delete(this.#cache.keys().next().value!);
      this.#cache.set(token, principal);
    }
    return principal;
  }

  #checkRevoked(p: Principal): void {
    const r = this.#config.revocations;
    if (!r) return;
    if (r.has(p.jti) || (p.sid !== undefined && r.has(p.sid))) throw new UnauthenticatedError("token revoked");
  }

  #principal(payload: JWTPayload): Principal {
    const tenantValue = payload[this.#config.tenantClaim];
    let tenant: string;
    try {
      tenant = checkUserTenant(tenantValue, this.#config.tenantClaim);
    } catch (err) {
      // A token naming a reserved tenant (`_system`) is refused like any invalid token: 401.
      const reserved = err instanceof TenantReservedError;
      throw new UnauthenticatedError(`claim \`${this.#config.tenantClaim}\` ${reserved ? "names a reserved tenant (starting with `_`)" : "is not a valid tenant"}`, { cause: err });
    }
    const rawRoles = payload[this.#config.rolesClaim];
    const list = Array.isArray(rawRoles) ? rawRoles : typeof rawRoles === "string" ? rawRoles.split(" ") : [];
    const roles = [...new Set(list.filter((r): r is Role => typeof r === "string" && this.#config.roles.has(r)))];
    if (typeof payload.sub !== "string" || payload.sub.length === 0) throw new UnauthenticatedError("claim `sub` is missing");
    if (typeof payload.exp !== "number") throw new UnauthenticatedError("claim `exp` is missing");
    const jti = typeof payload.jti === "string" && payload.jti.length > 0 ? payload.jti : `exp${payload.exp}.${payload.sub}`;
    const sid = typeof payload.sid === "string" ? payload.sid : undefined;
    return { tenant, subject: payload.sub, roles, jti, sid, expiresAt: payload.exp };
  }
}
