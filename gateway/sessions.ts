import type { KV } from "@nats-io/kv";
import { nuid } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUCKETS, MIN_MESSAGE_TTL_MS, openTtlKv, RESERVED_TENANT_PREFIX } from "../streams/index.js";
import type { TtlKv } from "../streams/index.js";
import { InvalidCredentialsError, InvalidRefreshTokenError, RefreshTokenReuseError } from "./errors.js";
import type { Revocations } from "./revocations.js";
import type { Principal, TokenIssuer } from "./tokens.js";
import { checkUserTenant, checkUsername, keyToken } from "./users.js";
import type { UserStore } from "./users.js";

/** What sign-in and refresh return (the OAuth 2 token response shape). */
export interface TokenPair {
  readonly access_token: string;
  readonly token_type: "Bearer";
  /** Seconds until the access token expires. */
  readonly expires_in: number;
  readonly refresh_token: string;
  readonly refresh_expires_in: number;
}

/**
 * Sign-in sessions. Each sign-in opens a session (`sid`) whose refresh token has a
 * generation; a refresh rotates it (the old refresh token stops working). Presenting a
 * refresh token of an older generation means it was copied: every session of the user is
 * revoked, and their access tokens stop working within the revocation delay.
 */
export interface SessionService {
  /** @throws InvalidCredentialsError */
  signIn(tenant: string, username: string, password: string): Promise<TokenPair>;
  /** @throws InvalidRefreshTokenError, RefreshTokenReuseError */
  refresh(refreshToken: string): Promise<TokenPair>;
  /** Revokes the access token's `jti` until it expires, and ends its session. */
  signOut(principal: Principal): Promise<void>;
  /** Ends every session of a user; returns how many. */
  revokeUser(tenant: string, username: string): Promise<number>;
}

interface SessionRecord {
  gen: number;
  /** Refresh expiry, seconds since the epoch. */
  exp: number;
  createdAt: number;
}

const codec = new TextEncoder();

/** KV key prefix of sign-in sessions in `flex_auth`: `session.<tenant>.<username>.<sid>`. */
export const SESSION_PREFIX = "session";

function sessionKey(tenant: string, username: string, sid: string): string {
  return `${SESSION_PREFIX}.${keyToken(tenant)}.${keyToken(username)}.${sid}`;
}

/** Ends every session of a user (also used by `flexcore users remove|passwd`). */
export async function revokeUserSessions(kv: KV, revocations: Revocations, tenant: string, username: string): Promise<number> {
  let n = 0;
  for await (const key of await kv.keys(`${SESSION_PREFIX}.${keyToken(checkUserTenant(tenant))}.${keyToken(checkUsername(username))}.*`)) {
    const sid = key.split(".")[3];
    if (!sid) continue;
    const entry = await kv.get(key);
    const exp = entry && entry.operation === "PUT" ? entry.json<SessionRecord>().exp : Math.floor(Date.now() / 1000) + 86_400;
    await revocations.revoke(sid, exp);
    await kv.delete(key);
    n += 1;
  }
  return n;
}

/** Opens the session service on `flex_auth`. */
export async function openSessions(nc: NatsConnection, users: UserStore, issuer: TokenIssuer, revocations: Revocations): Promise<SessionService> {
  return new KvSessions(await openTtlKv(nc, BUCKETS.auth), users, issuer, revocations);
}

// Each session entry expires with its session (per-message TTL where the bucket allows it;
// the sweep in auth-sweep.ts elsewhere).
class KvSessions implements SessionService {
  readonly #kv: KV;
  readonly #ttl: TtlKv;
  readonly #users: UserStore;
  readonly #issuer: TokenIssuer;
  readonly #revocations: Revocations;

  constructor(ttl: TtlKv, users: UserStore, issuer: TokenIssuer, revocations: Revocations) {
    this.#ttl = ttl;
    this.#kv = ttl.kv;
    this.#users = users;
    this.#issuer = issuer;
    this.#revocations = revocations;
  }

  async signIn(tenant: string, username: string, password: string): Promise<TokenPair> {
    // A reserved tenant is refused as such (400), before any user lookup: no user can exist there.
    if (typeof tenant === "string" && tenant.startsWith(RESERVED_TENANT_PREFIX)) checkUserTenant(tenant);
    const user = await this.#users.verify(tenant, username, password);
    if (!user) throw new InvalidCredentialsError();
    const sid = nuid.next();
    const record: SessionRecord = { gen: 1, exp: Math.floor(Date.now() / 1000) + this.#issuer.refreshTtlSeconds, createdAt: Date.now() };
    await this.#ttl.create(sessionKey(user.tenant, user.username, sid), codec.encode(JSON.stringify(record)), Math.max(MIN_MESSAGE_TTL_MS, record.exp * 1000 - Date.now()));
    return this.#pair(user.tenant, user.username, user.roles, sid, record.gen, record.exp);
  }

  async refresh(refreshToken: string): Promise<TokenPair> {
    const claims = await this.#issuer.verifyRefresh(refreshToken);
    if (this.#revocations.has(claims.sid)) throw new InvalidRefreshTokenError("session revoked");
    let key: string;
    try {
      key = sessionKey(checkUserTenant(claims.tenant), checkUsername(claims.subject), claims.sid);
    } catch {
      throw new InvalidRefreshTokenError("malformed claims");
    }
    const entry = await this.#kv.get(key);
    if (!entry || entry.operation !== "PUT") throw new InvalidRefreshTokenError("session ended");
    const record = entry.json<SessionRecord>();
    // A session lasts at most the refresh lifetime from sign-in; the sweep removes it later.
    if (record.exp * 1000 <= Date.now()) throw new InvalidRefreshTokenError("session expired");
    if (claims.gen !== record.gen) throw new RefreshTokenReuseError(await this.revokeUser(claims.tenant, claims.subject));
    const next: SessionRecord = { ...record, gen: record.gen + 1 };
    try {
      await this.#ttl.update(key, codec.encode(JSON.stringify(next)), entry.revision, Math.max(MIN_MESSAGE_TTL_MS, record.exp * 1000 - Date.now()));
    } catch {
      // Another refresh with the same token won the race: the token was used twice.
      throw new RefreshTokenReuseError(await this.revokeUser(claims.tenant, claims.subject));
    }
    const user = await this.#users.get(claims.tenant, claims.subject);
    if (!user) {
      await this.revokeUser(claims.tenant, claims.subject);
      throw new InvalidRefreshTokenError("user no longer exists");
    }
    return this.#pair(user.tenant, user.username, user.roles, claims.sid, next.gen, record.exp);
  }

  async signOut(principal: Principal): Promise<void> {
    await this.#revocations.revoke(principal.jti, principal.expiresAt);
    if (principal.sid === undefined) return;
    const key = sessionKey(principal.tenant, principal.subject, principal.sid);
    const entry = await this.#kv.get(key).catch(() => null);
    const exp = entry && entry.operation === "PUT" ? entry.json<SessionRecord>().exp : principal.expiresAt;
    await this.#revocations.revoke(principal.sid, Math.max(exp, principal.expiresAt));
    await this.#kv.delete(key).catch(() => undefined);
  }

  revokeUser(tenant: string, username: string): Promise<number> {
    return revokeUserSessions(this.#kv, this.#revocations, tenant, username);
  }

  async #pair(tenant: string, username: string, roles: Principal["roles"], sid: string, gen: number, sessionEnd: number): Promise<TokenPair> {
    const access = await this.#issuer.issueAccess({ tenant, subject: username, roles, sid });
    const refresh = await this.#issuer.issueRefresh({ tenant, subject: username, sid, gen, notAfter: sessionEnd });
    const now = Math.floor(Date.now() / 1000);
    return {
      access_token: access.token,
      token_type: "Bearer",
      expires_in: access.expiresAt - now,
      refresh_token: refresh.token,
      refresh_expires_in: refresh.expiresAt - now,
    };
  }
}
