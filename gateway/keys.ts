import { chmod, mkdir, readFile, readdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { calculateJwkThumbprint, exportJWK, exportPKCS8, generateKeyPair, importPKCS8, importSPKI } from "jose";
import type { CryptoKey, JWK } from "jose";
import { InvalidOptionError } from "../streams/index.js";
import { KeyStoreError } from "./errors.js";

/** The only signing algorithm FlexCore issues and accepts. */
export const SIGNING_ALG = "RS256";
/** RSA modulus length of generated keys, in bits. */
export const DEFAULT_RSA_BITS = 2048;
/** File in the key directory listing the keys and which one signs. */
export const KEYS_INDEX_FILE = "keys.json";

/** Options of {@link openKeyStore}. Give `dir` (generate and rotate there) or `keyFiles`. */
export interface KeyStoreOptions {
  /**
   * Directory holding generated keys (`<kid>.pem`, mode 0600, and `keys.json`). A key is
   * generated on first start when the directory has none.
   */
  readonly dir?: string;
  /**
   * PEM files instead of `dir`: the first is the PKCS#8 private key that signs; the
   * others (PKCS#8 private or SPKI public keys) only verify, e.g. the previous key after
   * a rotation. Their `kid` is the RFC 7638 thumbprint.
   */
  readonly keyFiles?: readonly string[];
  /**
   * How long a key keeps verifying after it stopped signing: at least the lifetime of
   * the longest token it signed. In ms.
   * @default 30 days (the default refresh token lifetime)
   */
  readonly retireAfterMs?: number;
}

/** One verification key as published in the JWKS. */
export interface KeyInfo {
  readonly kid: string;
  /** When it was created (ms since the epoch). */
  readonly createdAt: number;
  /** When it stopped signing (ms since the epoch); absent for the active key. */
  readonly retiredAt?: number;
}

/** RS256 signing keys with rotation by `kid`. */
export interface KeyStore {
  /** `kid` of the key that signs new tokens. */
  readonly activeKid: string;
  /** The private key that signs new tokens. */
  readonly signingKey: CryptoKey;
  /** The public key for `kid`, if it is known and not expired. */
  publicKey(kid: string): CryptoKey | undefined;
  /** The public keys as a JWK Set for `/.well-known/jwks.json`. */
  jwks(): { keys: JWK[] };
  readonly keys: readonly KeyInfo[];
  /**
   * Generates a new key that signs from now on; the old one keeps verifying for
   * `retireAfterMs`. Only for a store opened with `dir`.
   * @returns the new `kid`
   */
  rotate(): Promise<string>;
  /** Reads the directory again (another instance may have rotated). */
  reload(): Promise<void>;
}

interface Loaded {
  readonly info: KeyInfo;
  readonly publicKey: CryptoKey;
  readonly jwk: JWK;
  readonly privateKey?: CryptoKey;
}

interface IndexFile {
  active: string;
  keys: KeyInfo[];
}

const DEFAULT_RETIRE_AFTER_MS = 30 * 24 * 3_600_000;
const KID_FILE = /^[A-Za-z0-9_-]{8,64}$/u;

async function describeKey(publicKey: CryptoKey, info: Omit<KeyInfo, "kid">, privateKey?: CryptoKey): Promise<Loaded> {
  const full = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(full);
  const jwk: JWK = { kty: full.kty, n: full.n, e: full.e, kid, alg: SIGNING_ALG, use: "sig" };
  return { info: { kid, ...info }, publicKey, jwk, ...(privateKey ? { privateKey } : {}) };
}

async function fromPrivatePem(pem: string, info: Omit<KeyInfo, "kid">, where: string): Promise<Loaded> {
  try {
    const privateKey = await importPKCS8(pem, SIGNING_ALG, { extractable: true });
    const { createPublicKey } = await import("node:crypto");
    const spki = createPublicKey(pem).export({ type: "spki", format: "pem" }).toString();
    const publicKey = await importSPKI(spki, SIGNING_ALG, { extractable: true });
    return await describeKey(publicKey, info, privateKey);
  } catch (err) {
    throw new KeyStoreError(`Cannot read the RS256 private key in ${where} (expected PKCS#8 PEM, "BEGIN PRIVATE KEY"): ${(err as Error).message}`, { cause: err });
  }
}

async function fromPem(pem: string, where: string): Promise<Loaded> {
  if (pem.includes("PRIVATE KEY")) return fromPrivatePem(pem, { createdAt: 0 }, where);
  try {
    return await describeKey(await importSPKI(pem, SIGNING_ALG, { extractable: true }), { createdAt: 0, retiredAt: 0 });
  } catch (err) {
    throw new KeyStoreError(`Cannot read the RS256 public key in ${where} (expected SPKI PEM, "BEGIN PUBLIC KEY"): ${(err as Error).message}`, { cause: err });
  }
}

async function writePrivate(path: string, text: string): Promise<void> {
  // Write then rename so a crash never leaves half a key; 0600 because it signs tokens.
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text, { mode: 0o600 });
  await chmod(tmp, 0o600);
  await rename(tmp, path);
}

/**
 * Opens the signing keys: loads `keyFiles`, or the keys in `dir` (generating one on first
 * start).
 * @throws KeyStoreError when a key cannot be read
 */
export async function openKeyStore(options: KeyStoreOptions): Promise<KeyStore> {
  const retireAfterMs = options.retireAfterMs ?? DEFAULT_RETIRE_AFTER_MS;
  if (!Number.isInteger(retireAfterMs) || retireAfterMs < 0) throw new InvalidOptionError("retireAfterMs", retireAfterMs, "an integer number of ms from 0 and up");
  if (options.keyFiles !== undefined) {
    if (!Array.isArray(options.keyFiles) || options.keyFiles.length === 0) throw new InvalidOptionError("keyFiles", options.keyFiles, "a non-empty array of PEM file paths");
    const loaded: Loaded[] = [];
    for (const file of options.keyFiles) {
      const pem = await readFile(file, "utf8").catch((err: unknown) => {
        throw new KeyStoreError(`Cannot read key file ${file}: ${(err as Error).message}`, { cause: err });
      });
      loaded.push(await fromPem(pem, file));
    }
    if (!loaded[0]!.privateKey) throw new KeyStoreError(`The first key file (${options.keyFiles[0]}) must be a private key: it signs tokens`);
    return new FileKeyStore(loaded, undefined, retireAfterMs);
  }
  if (typeof options.dir !== "string" || options.dir.length === 0) throw new InvalidOptionError("dir", options.dir, "a directory for generated keys (or give keyFiles)");
  const store = new FileKeyStore([], options.dir, retireAfterMs);
  await store.reload();
  return store;
}

class FileKeyStore implements KeyStore {
  #keys: Loaded[];
  readonly #dir: string | undefined;
  readonly #retireAfterMs: number;

  constructor(keys: Loaded[], dir: string | undefined, retireAfterMs: number) {
    this.#keys = keys;
    this.#dir = dir;
    this.#retireAfterMs = retireAfterMs;
  }

  get activeKid(): string {
    return this.#keys[0]!.info.kid;
  }

  get signingKey(): CryptoKey {
    return this.#keys[0]!.privateKey!;
  }

  get keys(): readonly KeyInfo[] {
    return this.#keys.map((k) => k.info);
  }

  publicKey(kid: string): CryptoKey | undefined {
    const now = Date.now();
    for (const k of this.#keys) {
      if (k.info.kid !== kid) continue;
      if (k.info.retiredAt && this.#dir !== undefined && now - k.info.retiredAt > this.#retireAfterMs) return undefined;
      return k.publicKey;
    }
    return undefined;
  }

  jwks(): { keys: JWK[] } {
    return { keys: this.#keys.filter((k) => this.publicKey(k.info.kid)).map((k) => ({ ...k.jwk })) };
  }

  async reload(): Promise<void> {
    const dir = this.#dir;
    if (dir === undefined) return;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    let index: IndexFile | undefined;
    try {
      index = JSON.parse(await readFile(join(dir, KEYS_INDEX_FILE), "utf8")) as IndexFile;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw new KeyStoreError(`Cannot read ${join(dir, KEYS_INDEX_FILE)}: ${(err as Error).message}`, { cause: err });
    }
    if (!index) {
      await this.#generate(dir, []);
      return;
    }
    const loaded: Loaded[] = [];
    const order = [index.active, ...index.keys.map((k) => k.kid).filter((kid) => kid !== index.active)];
    for (const kid of order) {
      const info = index.keys.find((k) => k.kid === kid);
      if (!info || !KID_FILE.test(kid)) continue;
      if (info.retiredAt && Date.now() - info.retiredAt > this.#retireAfterMs) continue;
      const file = join(dir, `${kid}.pem`);
      const pem = await readFile(file, "utf8").catch((err: unknown) => {
        throw new KeyStoreError(`Key ${kid} is listed in ${KEYS_INDEX_FILE} but ${file} cannot be read: ${(err as Error).message}`, { cause: err });
      });
      const key = await fromPrivatePem(pem, { createdAt: info.createdAt, ...(info.retiredAt ? { retiredAt: info.retiredAt } : {}) }, file);
      if (key.info.kid !== kid) throw new KeyStoreError(`${file} does not hold key ${kid} (its thumbprint is ${key.info.kid})`);
      loaded.push(key);
    }
    if (!loaded[0] || loaded[0].info.kid !== index.active) throw new KeyStoreError(`The active key ${index.active} in ${join(dir, KEYS_INDEX_FILE)} is missing`);
    this.#keys = loaded;
  }

  async rotate(): Promise<string> {
    if (this.#dir === undefined) throw new KeyStoreError("Keys loaded from keyFiles are rotated by replacing the files (new key first, old key second) and restarting");
    const now = Date.now();
    const previous = this.#keys.map((k) => (k.info.retiredAt ? k : { ...k, info: { ...k.info, retiredAt: now } }));
    await this.#generate(this.#dir, previous);
    return this.activeKid;
  }

  async #generate(dir: string, previous: Loaded[]): Promise<void> {
    const { privateKey, publicKey } = await generateKeyPair(SIGNING_ALG, { modulusLength: DEFAULT_RSA_BITS, extractable: true });
    const key = await describeKey(publicKey, { createdAt: Date.now() }, privateKey);
    await writePrivate(join(dir, `${key.info.kid}.pem`), await exportPKCS8(privateKey));
    const keys = [key, ...previous];
    const index: IndexFile = { active: key.info.kid, keys: keys.map((k) => k.info) };
    await writePrivate(join(dir, KEYS_INDEX_FILE), `${JSON.stringify(index, null, 2)}\n`);
    this.#keys = keys;
    // Private keys of keys that no longer verify anything are deleted.
    const live = new Set(keys.map((k) => `${k.info.kid}.pem`));
    for (const f of await readdir(dir)) if (f.endsWith(".pem") && !live.has(f)) await rm(join(dir, f), { force: true });
  }
}
