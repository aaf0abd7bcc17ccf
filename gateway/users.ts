import { randomBytes, scrypt as scryptCb, timingSafeEqual } from "node:crypto";
import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUCKETS, checkTenantName, fromKvKeyToken, InvalidOptionError, kvKeyToken } from "../streams/index.js";
import { UserExistsError, UserNotFoundError } from "./errors.js";
import { checkRoles } from "./policy.js";
import type { Role } from "./policy.js";

/** scrypt cost parameters of new password hashes (OWASP minimum: N=2^17 with r=8 is stronger but ~130 ms; 2^15 is ~35 ms). */
export const SCRYPT_PARAMS = { N: 2 ** 15, r: 8, p: 1, keyLength: 32, saltLength: 16 } as const;
/** Shortest password accepted, in characters. */
export const MIN_PASSWORD_LENGTH = 8;
/** Longest tenant name usable in the gateway (a subject token, shorter so keys stay small). */
export const MAX_TENANT_LENGTH = 64;
const USERNAME = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/u;
const MAX_PASSWORD_LENGTH = 1024;

/** A user as listed (never with its hash). */
export interface User {
  readonly tenant: string;
  readonly username: string;
  readonly roles: readonly Role[];
  /** ms since the epoch */
  readonly createdAt: number;
  readonly updatedAt: number;
}

interface StoredUser extends User {
  readonly hash: string;
}

/** Gateway users in the `flex_auth` KV bucket, with scrypt password hashes. */
export interface UserStore {
  /** @throws UserExistsError, InvalidOptionError / SubjectTokenError for bad names, roles or passwords */
  add(tenant: string, username: string, password: string, roles: readonly string[]): Promise<User>;
  /** Users of one tenant, or of every tenant. */
  list(tenant?: string): Promise<User[]>;
  get(tenant: string, username: string): Promise<User | undefined>;
  /** @throws UserNotFoundError */
  remove(tenant: string, username: string): Promise<void>;
  /** @throws UserNotFoundError */
  setPassword(tenant: string, username: string, password: string): Promise<void>;
  /** @throws UserNotFoundError */
  setRoles(tenant: string, username: string, roles: readonly string[]): Promise<User>;
  /** The user when the password matches, else undefined; takes the same time for unknown users. */
  verify(tenant: string, username: string, password: string): Promise<User | undefined>;
}

/** A KV key token for any string: the shared `kvKeyToken` of `streams/` (base64url). */
export const keyToken = kvKeyToken;

const fromKeyToken = fromKvKeyToken;

/**
 * Checks a tenant that a user, token or request names: a subject token of at most 64
 * bytes that does not start with `_` (reserved for FlexCore: `_system`).
 * @throws SubjectTokenError, TenantReservedError, InvalidOptionError (too long)
 */
export function checkUserTenant(tenant: unknown, field = "tenant"): string {
  checkTenantName(tenant, field);
  if (Buffer.byteLength(tenant as string) > MAX_TENANT_LENGTH) throw new InvalidOptionError(field, tenant, `a tenant name of at most ${MAX_TENANT_LENGTH} bytes`);
  return tenant as string;
}

/** Checks a username: 1 to 64 of `A-Z a-z 0-9 . _ @ -`, starting with a letter or digit. */
export function checkUsername(username: unknown): string {
  if (typeof username !== "string" || !USERNAME.test(username)) throw new InvalidOptionError("username", username, "1 to 64 characters of A-Z a-z 0-9 . _ @ -, starting with a letter or digit");
  return username;
}

function checkPassword(password: unknown): string {
  if (typeof password !== "string" || password.length < MIN_PASSWORD_LENGTH || password.length > MAX_PASSWORD_LENGTH) {
    throw new InvalidOptionError("password", typeof password === "string" ? `(${password.length} characters)` : password, `a string of ${MIN_PASSWORD_LENGTH} to ${MAX_PASSWORD_LENGTH} characters`);
  }
  return password;
}

function scrypt(password: string, salt: Buffer, N: number, r: number, p: number, keyLength: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scryptCb(password, salt, keyLength, { N, r, p, maxmem: 256 * N * r }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** Hashes a password as `scrypt$N$r$p$salt$hash` (base64url). */
export async function hashPassword(password: string): Promise<string> {
  const { N, r, p, keyLength, saltLength } = SCRYPT_PARAMS;
  const salt = randomBytes(saltLength);
  const key = await scrypt(password, salt, N, r, p, keyLength);
  return `scrypt$${N}$${r}$${p}$${salt.toString("base64url")}$${key.toString("base64url")}`;
}

/** Checks a password against a {@link hashPassword} string in constant time. */
export async function verifyPassword(password: string, encoded: string): Promise<boolean> {
  const [scheme, n, r, p, salt, hash] = encoded.split("$");
  if (scheme !== "scrypt" || !salt || !hash) return false;
  const expected = Buffer.from(hash, "base64url");
  const key = await scrypt(password, Buffer.from(salt, "base64url"), Number(n), Number(r), Number(p), expected.length);
  return key.length === expected.length && timingSafeEqual(key, expected);
}

const codec = new TextEncoder();

/** Opens the user store on the `flex_auth` bucket (created by `ensureTopology`). */
export async function openUserStore(nc: NatsConnection): Promise<UserStore> {
  const kv = await new Kvm(nc).open(BUCKETS.auth);
  // Verifying an unknown user costs the same as a known one, so timing does not tell which users exist.
  const dummy = await hashPassword(randomBytes(12).toString("base64url"));
  return new KvUserStore(kv, dummy);
}

class KvUserStore implements UserStore {
  readonly #kv: KV;
  readonly #dummyHash: string;

  constructor(kv: KV, dummyHash: string) {
    this.#kv = kv;
    this.#dummyHash = dummyHash;
  }

  #key(tenant: string, username: string): string {
    return `user.${keyToken(checkUserTenant(tenant))}.${keyToken(checkUsername(username))}`;
  }

  async #load(tenant: string, username: string): Promise<{ user: StoredUser; revision: number } | undefined> {
    const entry = await this.#kv.get(this.#key(tenant, username));
    if (!entry || entry.operation !== "PUT") return undefined;
    return { user: entry.json<StoredUser>(), revision: entry.revision };
  }

  async add(tenant: string, username: string, password: string, roles: readonly string[]): Promise<User> {
    const key = this.#key(tenant, username);
    const checked = checkRoles(roles);
    const now = Date.now();
    const user: StoredUser = { tenant, username, roles: checked, createdAt: now, updatedAt: now, hash: await hashPassword(checkPassword(password)) };
    try {
      await this.#kv.create(key, codec.encode(JSON.stringify(user)));
    } catch (err) {
      if (await this.#load(tenant, username)) throw new UserExistsError(tenant, username);
      throw err;
    }
    return publicUser(user);
  }

  async list(tenant?: string): Promise<User[]> {
    const filter = tenant === undefined ? "user.>" : `user.${keyToken(checkUserTenant(tenant))}.*`;
    const out: User[] = [];
    for await (const key of await this.#kv.keys(filter)) {
      const [, t, u] = key.split(".");
      if (!t || !u) continue;
      // A key that is not ours (not canonical base64url) is skipped, not a failed listing.
      const found = await Promise.resolve().then(() => this.#load(fromKeyToken(t), fromKeyToken(u))).catch(() => undefined);
      if (found) out.push(publicUser(found.user));
    }
    return out.sort((a, b) => a.tenant.localeCompare(b.tenant) || a.username.localeCompare(b.username));
  }

  async get(tenant: string, username: string): Promise<User | undefined> {
    const found = await this.#load(tenant, username);
    return found ? publicUser(found.user) : undefined;
  }

  async remove(tenant: string, username: string): Promise<void> {
    if (!(await this.#load(tenant, username))) throw new UserNotFoundError(tenant, username);
    await this.#kv.delete(this.#key(tenant, username));
  }

  async setPassword(tenant: string, username: string, password: string): Promise<void> {
    checkPassword(password);
    await this.#change(tenant, username, async (u) => ({ ...u, hash: await hashPassword(password) }));
  }

  async setRoles(tenant: string, username: string, roles: readonly string[]): Promise<User> {
    const checked = checkRoles(roles);
    return publicUser(await this.#change(tenant, username, async (u) => ({ ...u, roles: checked })));
  }

  async #change(tenant: string, username: string, edit: (u: StoredUser) => Promise<StoredUser>): Promise<StoredUser> {
    for (;;) {
      const found = await this.#load(tenant, username);
      if (!found) throw new UserNotFoundError(tenant, username);
      const next = { ...(await edit(found.user)), updatedAt: Date.now() };
      try {
        await this.#kv.update(this.#key(tenant, username), codec.encode(JSON.stringify(next)), found.revision);
        return next;
      } catch {
        // changed concurrently: apply the edit to the newer version
      }
    }
  }

  async verify(tenant: string, username: string, password: string): Promise<User | undefined> {
    let found: { user: StoredUser } | undefined;
    try {
      found = await this.#load(tenant, username);
    } catch {
      found = undefined; // a name that cannot exist
    }
    const ok = await verifyPassword(typeof password === "string" ? password : "", found?.user.hash ?? this.#dummyHash);
    return ok && found ? publicUser(found.user) : undefined;
  }
}

function publicUser(u: StoredUser): User {
  return { tenant: u.tenant, username: u.username, roles: u.roles, createdAt: u.createdAt, updatedAt: u.updatedAt };
}
