import { readFileSync } from "node:fs";
import { credsAuthenticator, nkeyAuthenticator, nkeys } from "@nats-io/transport-node";
import type { ConnectionOptions } from "@nats-io/transport-node";
import { InvalidOptionError } from "./errors.js";

/**
 * How a FlexCore component proves who it is to nats-server. At most one of `credsFile`,
 * `nkeySeedFile`, `user`/`password` and `token` may be set; TLS combines with any of them.
 */
export interface NatsCredentials {
  /** A `.creds` file (user JWT and NKey seed, for servers in operator/JWT mode). `NATS_CREDS`. */
  readonly credsFile?: string;
  /** A file holding an NKey user seed (`SU...`), e.g. `data/nats-seeds/flexcore.nk`. `NATS_NKEY`. */
  readonly nkeySeedFile?: string;
  /** `NATS_USER`; needs `password`. */
  readonly user?: string;
  /** `NATS_PASSWORD`. */
  readonly password?: string;
  /** `NATS_TOKEN`. */
  readonly token?: string;
  /** CA certificate file that signs the server's certificate. `NATS_CA`. */
  readonly tlsCaFile?: string;
  /** Client certificate for mutual TLS. `NATS_CERT` (with `NATS_KEY`). */
  readonly tlsCertFile?: string;
  /** `NATS_KEY`. */
  readonly tlsKeyFile?: string;
}

/** The environment variables {@link credentialsFromEnv} reads, per field. */
export const CREDENTIAL_ENV = {
  credsFile: "NATS_CREDS",
  nkeySeedFile: "NATS_NKEY",
  user: "NATS_USER",
  password: "NATS_PASSWORD",
  token: "NATS_TOKEN",
  tlsCaFile: "NATS_CA",
  tlsCertFile: "NATS_CERT",
  tlsKeyFile: "NATS_KEY",
} as const satisfies Record<keyof NatsCredentials, string>;

/** Reads credentials from `NATS_CREDS`, `NATS_NKEY`, `NATS_USER`/`NATS_PASSWORD`, `NATS_TOKEN`, `NATS_CA`, `NATS_CERT`/`NATS_KEY`; empty values count as unset. */
export function credentialsFromEnv(env: NodeJS.ProcessEnv = process.env): NatsCredentials {
  const out: Record<string, string> = {};
  for (const [field, name] of Object.entries(CREDENTIAL_ENV)) {
    const v = env[name];
    if (v) out[field] = v;
  }
  return out as NatsCredentials;
}

/** The environment that hands `credentials` to a child process (the inverse of {@link credentialsFromEnv}). */
export function credentialsToEnv(credentials: NatsCredentials): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [field, name] of Object.entries(CREDENTIAL_ENV)) {
    const v = credentials[field as keyof NatsCredentials];
    if (v) out[name] = v;
  }
  return out;
}

/** Whether any way of authenticating is set (TLS alone does not count). */
export function hasCredentials(c: NatsCredentials): boolean {
  return Boolean(c.credsFile || c.nkeySeedFile || c.user || c.token);
}

/** `nats://a:4222,nats://b:4222` → two servers; blanks are dropped. */
export function parseServers(servers: string | readonly string[]): string[] {
  const list = (typeof servers === "string" ? servers.split(",") : [...servers]).map((s) => s.trim()).filter(Boolean);
  if (list.length === 0) throw new InvalidOptionError("servers", servers, "one or more server URLs (comma-separated), e.g. nats://127.0.0.1:4222");
  return list;
}

function readSecret(field: string, file: string): Uint8Array {
  try {
    return new TextEncoder().encode(readFileSync(file, "utf8").trim());
  } catch (err) {
    throw new InvalidOptionError(field, file, `a readable file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/**
 * The nats.js connection options for `servers` (one URL or a comma-separated list) and
 * `credentials`, merged over `extra`. Files are read now, so a missing or malformed seed is
 * an {@link InvalidOptionError} naming the field before any connection is tried.
 */
export function natsConnectOptions(servers: string | readonly string[], credentials: NatsCredentials = {}, extra: ConnectionOptions = {}): ConnectionOptions {
  const c = credentials;
  const ways = [c.credsFile && "credsFile", c.nkeySeedFile && "nkeySeedFile", (c.user || c.password) && "user/password", c.token && "token"].filter(Boolean);
  if (ways.length > 1) throw new InvalidOptionError("credentials", ways.join(", "), "at most one of a creds file, an NKey seed, a user and password, or a token");
  const opts: ConnectionOptions = { ...extra, servers: parseServers(servers) };
  if (c.credsFile) {
    opts.authenticator = credsAuthenticator(readSecret("credsFile", c.credsFile));
  } else if (c.nkeySeedFile) {
    const seed = readSecret("nkeySeedFile", c.nkeySeedFile);
    try {
      nkeys.fromSeed(seed);
    } catch {
      throw new InvalidOptionError("nkeySeedFile", c.nkeySeedFile, "a file holding an NKey user seed (SU...)");
    }
    opts.authenticator = nkeyAuthenticator(seed);
  } else if (c.user || c.password) {
    if (!c.user || !c.password) throw new InvalidOptionError(c.user ? "password" : "user", c.user ? c.password : c.user, "set together with the other (NATS_USER and NATS_PASSWORD)");
    opts.user = c.user;
    opts.pass = c.password;
  } else if (c.token) {
    opts.token = c.token;
  }
  if (c.tlsCaFile || c.tlsCertFile || c.tlsKeyFile) {
    if (Boolean(c.tlsCertFile) !== Boolean(c.tlsKeyFile)) throw new InvalidOptionError(c.tlsCertFile ? "tlsKeyFile" : "tlsCertFile", undefined, "set together with the other (NATS_CERT and NATS_KEY)");
    opts.tls = {
      ...(c.tlsCaFile ? { caFile: c.tlsCaFile } : {}),
      ...(c.tlsCertFile ? { certFile: c.tlsCertFile, keyFile: c.tlsKeyFile } : {}),
    };
  }
  return opts;
}
