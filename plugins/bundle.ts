/**
 * Plugin bundles: a folder with `flexcore-plugin.yaml` at its root. `pack` lists the SHA-256
 * of every file in `flexcore-plugin.sum` (the `sha256sum` format, sorted by path), `sign`
 * signs that file's bytes with Ed25519 into `flexcore-plugin.sig`, `verify` recomputes
 * everything against the operator's trusted keys, and `install` copies the bytes it
 * verified (never a second read of the source) into a read-only, content-addressed folder
 * `<store>/<sha256 of the sum file>/`, from which the plugin runs.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign as edSign, verify as edVerify } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { constants } from "node:fs";
import { chmod, lstat, mkdir, mkdtemp, open, opendir, readdir, readFile, rename, rm, stat, unlink, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { InvalidOptionError } from "../streams/index.js";
import { BundleTooLargeError, ChecksumError, ManifestError, SignatureError } from "./errors.js";
import { checkCompatible, MANIFEST_FILE, readManifestDocument, validateManifest } from "./manifest.js";
import type { ManifestOptions, PluginManifest } from "./manifest.js";

/** The checksum list at the root of a bundle. */
export const SUM_FILE = "flexcore-plugin.sum";
/** The signature of the checksum list at the root of a bundle. */
export const SIG_FILE = "flexcore-plugin.sig";
/** File name suffix of public keys in a trusted keys folder. */
export const PUBLIC_KEY_SUFFIX = ".pub";
/** File name suffix of a private key written by {@link writeKeyPair}. */
export const PRIVATE_KEY_SUFFIX = ".key";

/** Bounds on what a bundle may hold, so a hostile bundle cannot exhaust memory or disk. */
export interface BundleLimits {
  /** Files and folders in the bundle. @default 10000 */
  readonly maxFiles: number;
  /** Bytes of all files together (the whole bundle is held in memory while verified). @default 268435456 (256 MiB) */
  readonly maxBytes: number;
}

export const DEFAULT_BUNDLE_LIMITS: BundleLimits = Object.freeze({ maxFiles: 10_000, maxBytes: 256 * 1024 * 1024 });
const MAX_PATH_BYTES = 1024;
const MAX_DEPTH = 32;
const MAX_SIG_BYTES = 4096;
// Names a bundle may not hold: control characters would break the sum file's lines, and
// backslashes mean another path on other systems.
const BAD_NAME = /[\u0000-\u001f\u007f\\]/u;

/** Options shared by pack, sign, verify and install. */
export interface BundleOptions extends Pick<ManifestOptions, "flexcoreVersion" | "hostProtocols"> {
  /** @default DEFAULT_BUNDLE_LIMITS */
  readonly limits?: Partial<BundleLimits>;
}

/** Options of {@link verify} and {@link install}. */
export interface VerifyOptions extends BundleOptions {
  /** Folder of trusted Ed25519 public keys (`*.pub`, PEM); not writable by group or others. No folder: no key is trusted. */
  readonly trustedKeysDir?: string;
  /** Plugin names that may load without a valid trusted signature (development). @default [] */
  readonly allowUnsigned?: readonly string[];
}

/** What {@link verify} established. */
export interface VerifiedBundle {
  /** The bundle folder, absolute. */
  readonly dir: string;
  readonly manifest: PluginManifest;
  /** SHA-256 (hex) of the sum file's bytes: the bundle's identity and its store folder's name. */
  readonly digest: string;
  /** Key id of the trusted key that signed it, or `undefined` when it loaded unsigned by name. */
  readonly signer: string | undefined;
  /** Why it is unsigned (missing, untrusted, bad signature) when it loaded by `allowUnsigned`. */
  readonly unsignedReason: string | undefined;
  /** The verified bytes by bundle-relative path, the sum and signature files included. */
  readonly files: ReadonlyMap<string, Buffer>;
  /** Bytes of all files. */
  readonly bytes: number;
}

/** What {@link pack} wrote. */
export interface PackResult {
  readonly manifest: PluginManifest;
  /** SHA-256 (hex) of the new sum file. */
  readonly digest: string;
  /** Files listed. */
  readonly files: number;
  readonly bytes: number;
  /** An old `flexcore-plugin.sig` was deleted because it signed another sum. */
  readonly removedSignature: boolean;
}

/** An operator key pair, PEM (PKCS#8 private, SPKI public). */
export interface KeyPair {
  readonly keyId: string;
  readonly publicKeyPem: string;
  readonly privateKeyPem: string;
}

/** What {@link install} did. */
export interface InstalledBundle extends Omit<VerifiedBundle, "files"> {
  /** The read-only store folder the plugin runs from, `<store>/<digest>`. */
  readonly path: string;
  /** `false` when the same bundle was installed already (nothing was written). */
  readonly installed: boolean;
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function limitsOf(options: BundleOptions): BundleLimits {
  const l = { ...DEFAULT_BUNDLE_LIMITS, ...options.limits };
  for (const k of ["maxFiles", "maxBytes"] as const) {
    if (!Number.isSafeInteger(l[k]) || l[k] < 1) throw new InvalidOptionError(`limits.${k}`, l[k], "an integer ≥ 1");
  }
  return l;
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Reads every file of the bundle into memory, refusing links, special files, bad names and
 * anything past the limits. Files are opened with O_NOFOLLOW and checked with fstat, and
 * every folder is checked again after the walk, so a link swapped in while reading is seen.
 */
async function readTree(root: string, limits: BundleLimits): Promise<Map<string, Buffer>> {
  const top = await lstat(root).catch((err: unknown) => {
    throw new ChecksumError(root, "", errno(err) === "ENOENT" ? "no such folder" : `cannot be read (${(err as Error).message})`, { cause: err });
  });
  if (top.isSymbolicLink()) throw new ChecksumError(root, "", "the bundle folder is a symbolic link; give its real path");
  if (!top.isDirectory()) throw new ChecksumError(root, "", "not a folder");
  const files = new Map<string, Buffer>();
  const dirs: Array<{ rel: string; dev: number; ino: number; depth: number }> = [{ rel: "", dev: top.dev, ino: top.ino, depth: 0 }];
  let entries = 0;
  let bytes = 0;
  for (let i = 0; i < dirs.length; i++) {
    const d = dirs[i]!;
    // iterated, not listed: a folder of millions of names hits maxFiles before it fills memory
    for await (const entry of await opendir(join(root, d.rel))) {
      const rel = d.rel ? `${d.rel}/${entry.name}` : entry.name;
      if (++entries > limits.maxFiles) throw new BundleTooLargeError(root, "maxFiles", limits.maxFiles, `it holds more than ${limits.maxFiles} files and folders`);
      if (BAD_NAME.test(entry.name) || Buffer.byteLength(rel) > MAX_PATH_BYTES) throw new ChecksumError(root, JSON.stringify(rel), `a name with control characters or \`\\\`, or a path over ${MAX_PATH_BYTES} bytes`);
      const abs = join(root, rel);
      if (entry.isSymbolicLink()) throw new ChecksumError(root, rel, "is a symbolic link; bundles may not hold links");
      if (entry.isDirectory()) {
        if (d.depth + 1 > MAX_DEPTH) throw new ChecksumError(root, rel, `folders nested deeper than ${MAX_DEPTH}`);
        const s = await lstat(abs);
        if (!s.isDirectory()) throw new ChecksumError(root, rel, "changed while the bundle was read");
        dirs.push({ rel, dev: s.dev, ino: s.ino, depth: d.depth + 1 });
        continue;
      }
      if (!entry.isFile()) throw new ChecksumError(root, rel, "is not a regular file (a device, socket or pipe)");
      const fh = await open(abs, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch((err: unknown) => {
        throw new ChecksumError(root, rel, errno(err) === "ELOOP" ? "is a symbolic link; bundles may not hold links" : `cannot be read (${(err as Error).message})`, { cause: err });
      });
      try {
        const s = await fh.stat();
        if (!s.isFile()) throw new ChecksumError(root, rel, "is not a regular file");
        if (bytes + s.size > limits.maxBytes) throw new BundleTooLargeError(root, "maxBytes", limits.maxBytes, `its files hold more than ${limits.maxBytes} bytes`);
        const buf = Buffer.alloc(s.size);
        let off = 0;
        while (off < s.size) {
          const { bytesRead } = await fh.read(buf, off, s.size - off, off);
          if (bytesRead === 0) break;
          off += bytesRead;
        }
        const more = await fh.read(Buffer.alloc(1), 0, 1, off);
        if (off !== s.size || more.bytesRead !== 0) throw new ChecksumError(root, rel, "changed size while it was read");
        bytes += s.size;
        files.set(rel, buf);
      } finally {
        await fh.close();
      }
    }
  }
  // A folder replaced by a link (or another folder) during the walk would have let a read
  // follow it; the bytes would still have to match the signed sums, but refuse it outright.
  for (const d of dirs) {
    const s = await lstat(join(root, d.rel)).catch(() => undefined);
    if (!s || !s.isDirectory() || s.dev !== d.dev || s.ino !== d.ino) throw new ChecksumError(root, d.rel, "a folder changed while the bundle was read");
  }
  return new Map([...files].sort(([a], [b]) => byteOrder(a, b)));
}

function sumText(files: ReadonlyMap<string, Buffer>): string {
  let out = "";
  for (const [rel, bytes] of files) {
    if (rel === SUM_FILE || rel === SIG_FILE) continue;
    out += `${sha256(bytes)}  ${rel}\n`;
  }
  return out;
}

const SUM_LINE = /^([0-9a-f]{64}) {2}(.+)$/u;

/** A bundle-relative path that cannot leave the bundle. */
function safeRelative(rel: string): boolean {
  if (BAD_NAME.test(rel) || rel.startsWith("/") || Buffer.byteLength(rel) > MAX_PATH_BYTES) return false;
  return rel.split("/").every((seg) => seg !== "" && seg !== "." && seg !== "..");
}

function parseSum(root: string, bytes: Buffer): Map<string, string> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (err) {
    throw new ChecksumError(root, SUM_FILE, "is not UTF-8", { cause: err });
  }
  if (!text.endsWith("\n")) throw new ChecksumError(root, SUM_FILE, "is malformed: it must end with a newline (write it with `flexcore plugins pack`)");
  const out = new Map<string, string>();
  let previous: string | undefined;
  text.slice(0, -1).split("\n").forEach((line, i) => {
    const m = SUM_LINE.exec(line);
    if (!m) throw new ChecksumError(root, SUM_FILE, `line ${i + 1} is not \`<sha256 hex>  <path>\``);
    const rel = m[2]!;
    if (!safeRelative(rel)) throw new ChecksumError(root, SUM_FILE, `line ${i + 1} names a path that leaves the bundle or is not plain: ${JSON.stringify(rel)}`);
    if (rel === SUM_FILE || rel === SIG_FILE) throw new ChecksumError(root, SUM_FILE, `line ${i + 1} lists ${rel}, which is never listed`);
    if (previous !== undefined && byteOrder(previous, rel) >= 0) throw new ChecksumError(root, SUM_FILE, `line ${i + 1} is out of order or repeated (paths are sorted by their bytes)`);
    previous = rel;
    out.set(rel, m[1]!);
  });
  if (!out.has(MANIFEST_FILE)) throw new ChecksumError(root, SUM_FILE, `does not list ${MANIFEST_FILE}`);
  return out;
}

/**
 * The paths and SHA-256s a sum file lists, checked as {@link verify} checks them (UTF-8, one
 * `<sha256>  <path>` per line, sorted, no path leaving the bundle, the manifest listed).
 * @throws ChecksumError naming `bundle` (where the sum file comes from)
 */
export function readSumFile(bundle: string, bytes: Buffer): Map<string, string> {
  return parseSum(bundle, bytes);
}

/** Checks every file against the sum file: same paths, same bytes. */
function checkSums(root: string, files: ReadonlyMap<string, Buffer>): Buffer {
  const sumBytes = files.get(SUM_FILE);
  if (!sumBytes) throw new ChecksumError(root, SUM_FILE, "is missing; write it with `flexcore plugins pack`");
  const listed = parseSum(root, sumBytes);
  for (const [rel, expected] of listed) {
    const bytes = files.get(rel);
    if (!bytes) throw new ChecksumError(root, rel, "is listed in the sum file but missing");
    const actual = sha256(bytes);
    if (actual !== expected) throw new ChecksumError(root, rel, `its content differs from the sum file (sha256 ${actual}, listed ${expected})`);
  }
  for (const rel of files.keys()) {
    if (rel !== SUM_FILE && rel !== SIG_FILE && !listed.has(rel)) throw new ChecksumError(root, rel, "is not listed in the sum file (an extra file)");
  }
  return sumBytes;
}

/** The bundle file `command[0]` names, or `undefined` when it is a program on PATH. */
export function commandFile(manifest: PluginManifest): string | undefined {
  const program = manifest.command[0]!;
  if (!program.includes("/")) return undefined;
  return program.split("/").filter((s) => s !== "" && s !== ".").join("/");
}

function checkCommandFile(manifest: PluginManifest, files: ReadonlyMap<string, Buffer>, file: string): void {
  const rel = commandFile(manifest);
  if (rel !== undefined && (rel === SUM_FILE || rel === SIG_FILE || !files.has(rel))) {
    throw new ManifestError([{ path: "command[0]", value: manifest.command[0], expected: "a file of the bundle (or a program name looked up on PATH)" }], file);
  }
}

/** The id of an Ed25519 public key: the first 16 bytes (hex) of the SHA-256 of its SPKI DER. */
export function keyId(publicKey: KeyObject | string): string {
  const key = typeof publicKey === "string" ? createPublicKey(publicKey) : publicKey;
  return sha256(key.export({ type: "spki", format: "der" })).slice(0, 32);
}

/** Creates an operator key pair (Ed25519) for signing bundles. */
export function keygen(): KeyPair {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  return {
    keyId: keyId(publicKey),
    publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
    privateKeyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
  };
}

/**
 * Writes `<dir>/<name>.key` (mode 0600, never over an existing file) and `<dir>/<name>.pub`
 * (0644). Copy the `.pub` into every host's trusted keys folder; keep the `.key` secret.
 */
export async function writeKeyPair(pair: KeyPair, dir: string, name: string): Promise<{ privateKeyFile: string; publicKeyFile: string }> {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/u.test(name)) throw new InvalidOptionError("name", name, "a key name of letters, digits, `.`, `_` and `-` (at most 64)");
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const privateKeyFile = join(dir, `${name}${PRIVATE_KEY_SUFFIX}`);
  const publicKeyFile = join(dir, `${name}${PUBLIC_KEY_SUFFIX}`);
  for (const f of [privateKeyFile, publicKeyFile]) {
    if (await lstat(f).then(() => true, () => false)) throw new InvalidOptionError("name", name, `a name with no key file yet (${f} exists)`);
  }
  // `wx` with mode 0600: created private, and never writes through an existing file or link.
  await writeFile(privateKeyFile, pair.privateKeyPem, { flag: "wx", mode: 0o600 });
  await chmod(privateKeyFile, 0o600); // the umask cannot widen it, but make the mode explicit
  await writeFile(publicKeyFile, pair.publicKeyPem, { flag: "wx", mode: 0o644 });
  return { privateKeyFile, publicKeyFile };
}

/**
 * Writes `flexcore-plugin.sum` for every file of the bundle (links refused), after checking
 * the manifest. A signature of another sum is deleted: sign the bundle again.
 * @throws ManifestError, ChecksumError, BundleTooLargeError
 */
export async function pack(dir: string, options: BundleOptions = {}): Promise<PackResult> {
  const root = resolve(dir);
  const files = await readTree(root, limitsOf(options));
  const manifestBytes = files.get(MANIFEST_FILE);
  const manifestPath = join(root, MANIFEST_FILE);
  if (!manifestBytes) throw new ManifestError([{ path: "", value: undefined, expected: `a ${MANIFEST_FILE} at the root of the bundle` }], manifestPath);
  // no compatibility check: a bundle may be packed for another FlexCore than this one
  const manifest = validateManifest(readManifestDocument(manifestBytes, manifestPath), manifestPath);
  checkCommandFile(manifest, files, manifestPath);
  const text = sumText(files);
  const old = files.get(SUM_FILE);
  let removedSignature = false;
  if (files.has(SIG_FILE) && (!old || !old.equals(Buffer.from(text)))) {
    await unlink(join(root, SIG_FILE));
    removedSignature = true;
  }
  await writeFile(join(root, SUM_FILE), text);
  let bytes = 0;
  let count = 0;
  for (const [rel, b] of files) {
    if (rel === SUM_FILE || rel === SIG_FILE) continue;
    bytes += b.length;
    count++;
  }
  return { manifest, digest: sha256(Buffer.from(text)), files: count, bytes, removedSignature };
}

interface SignatureFile {
  alg: "ed25519";
  key: string;
  sig: string;
}

/** The signature file's fields, or why it is not one. */
function parseSignature(bytes: Buffer): SignatureFile | string {
  let doc: unknown;
  try {
    if (bytes.length > MAX_SIG_BYTES) return `${SIG_FILE} is over ${MAX_SIG_BYTES} bytes`;
    doc = JSON.parse(bytes.toString("utf8"));
  } catch (err) {
    return `${SIG_FILE} is not a signature file (${(err as Error).message})`;
  }
  const d = doc as Record<string, unknown>;
  if (doc === null || typeof doc !== "object" || Array.isArray(doc) || Object.keys(d).sort().join(",") !== "alg,key,sig" || d.alg !== "ed25519" || typeof d.key !== "string" || !/^[0-9a-f]{32}$/u.test(d.key) || typeof d.sig !== "string" || !/^[A-Za-z0-9+/]+={0,2}$/u.test(d.sig)) {
    return `${SIG_FILE} is malformed: expected {"alg":"ed25519","key":"<key id>","sig":"<base64>"}`;
  }
  return d as unknown as SignatureFile;
}

/**
 * Reads the trusted public keys (`*.pub`, Ed25519, PEM) of a folder, by key id. The folder
 * and the files must not be writable by group or others: whoever can add a key there can
 * run code as FlexCore.
 * @throws SignatureError when the folder or a key file is unsafe or unreadable
 */
export async function loadTrustedKeys(dir: string): Promise<Map<string, KeyObject>> {
  const keys = new Map<string, KeyObject>();
  const s = await stat(dir).catch((err: unknown) => {
    throw new SignatureError(dir, undefined, `the trusted keys folder cannot be read (${(err as Error).message})`, { cause: err });
  });
  if (!s.isDirectory()) throw new SignatureError(dir, undefined, "the trusted keys folder is not a folder");
  if ((s.mode & 0o022) !== 0) throw new SignatureError(dir, undefined, `the trusted keys folder is writable by group or others (mode ${(s.mode & 0o777).toString(8)}); chmod go-w it`);
  for (const name of (await readdir(dir)).sort()) {
    if (!name.endsWith(PUBLIC_KEY_SUFFIX)) continue;
    const file = join(dir, name);
    const fs = await stat(file);
    if (!fs.isFile()) continue;
    if ((fs.mode & 0o022) !== 0) throw new SignatureError(dir, undefined, `the trusted key ${name} is writable by group or others (mode ${(fs.mode & 0o777).toString(8)}); chmod go-w it`);
    let key: KeyObject;
    try {
      key = createPublicKey(await readFile(file));
    } catch (err) {
      throw new SignatureError(dir, undefined, `the trusted key ${name} is not a PEM public key`, { cause: err });
    }
    if (key.asymmetricKeyType !== "ed25519") throw new SignatureError(dir, undefined, `the trusted key ${name} is a ${String(key.asymmetricKeyType)} key, not Ed25519`);
    keys.set(keyId(key), key);
  }
  return keys;
}

/**
 * Signs the bundle's sum file with an Ed25519 private key (PEM) into `flexcore-plugin.sig`,
 * after checking that the sum file still matches every file.
 * @throws ChecksumError when the sum file is missing or stale (run `pack` again)
 */
export async function sign(dir: string, privateKeyPem: string | Buffer, options: BundleOptions = {}): Promise<{ keyId: string; digest: string }> {
  const root = resolve(dir);
  let key: KeyObject;
  try {
    key = createPrivateKey(privateKeyPem);
  } catch (err) {
    throw new InvalidOptionError("privateKey", "(PEM text)", `an Ed25519 private key in PEM (${(err as Error).message})`);
  }
  if (key.asymmetricKeyType !== "ed25519") throw new InvalidOptionError("privateKey", String(key.asymmetricKeyType), "an Ed25519 private key");
  const files = await readTree(root, limitsOf(options));
  const sumBytes = checkSums(root, files);
  const id = keyId(createPublicKey(key));
  const sig: SignatureFile = { alg: "ed25519", key: id, sig: edSign(null, sumBytes, key).toString("base64") };
  await writeFile(join(root, SIG_FILE), `${JSON.stringify(sig)}\n`);
  return { keyId: id, digest: sha256(sumBytes) };
}

/**
 * Verifies a bundle: every file against the sum file (no extra, missing or changed file, no
 * link, no path out of the bundle), the signature of the sum file against the trusted keys,
 * the manifest, and this host's compatibility. A plugin named in `allowUnsigned` loads
 * without a valid trusted signature (its name is then only the bundle's word).
 * @throws ChecksumError, BundleTooLargeError, SignatureError, ManifestError, PluginIncompatibleError
 */
export async function verify(dir: string, options: VerifyOptions = {}): Promise<VerifiedBundle> {
  const root = resolve(dir);
  const files = await readTree(root, limitsOf(options));
  const sumBytes = checkSums(root, files);
  const manifestPath = join(root, MANIFEST_FILE);

  // The signature before the manifest: an untrusted bundle's YAML is parsed only when some
  // plugin may load unsigned (its name is needed to decide), never otherwise.
  let signer: string | undefined;
  let unsignedReason: string | undefined;
  const sigBytes = files.get(SIG_FILE);
  if (!sigBytes) unsignedReason = `${SIG_FILE} is missing; sign it with \`flexcore plugins sign\``;
  else {
    const sig = parseSignature(sigBytes);
    if (typeof sig === "string") unsignedReason = sig;
    else {
      // an unsafe or unreadable trusted keys folder throws here: it refuses every bundle, even one allowed unsigned
      const trusted = options.trustedKeysDir === undefined ? new Map<string, KeyObject>() : await loadTrustedKeys(options.trustedKeysDir);
      const key = trusted.get(sig.key);
      if (!key) unsignedReason = `it is signed by key ${sig.key}, which is not among the trusted keys${options.trustedKeysDir ? ` in ${options.trustedKeysDir}` : " (no trusted keys folder is set)"}`;
      else if (!edVerify(null, sumBytes, key, Buffer.from(sig.sig, "base64"))) unsignedReason = `its signature by key ${sig.key} does not verify: the sum file was changed after signing, or the signature is forged`;
      else signer = sig.key;
    }
  }
  const allowUnsigned = options.allowUnsigned ?? [];
  const refuse = (plugin: string | undefined): SignatureError =>
    new SignatureError(root, plugin, `${unsignedReason ?? "unsigned"}; only plugins the operator allows unsigned by name load without a trusted signature`);
  if (signer === undefined && allowUnsigned.length === 0) throw refuse(undefined);
  const m = validateManifest(readManifestDocument(files.get(MANIFEST_FILE)!, manifestPath), manifestPath);
  if (signer === undefined && !allowUnsigned.includes(m.name)) {
    throw refuse(m.name);
  }
  checkCommandFile(m, files, manifestPath);
  checkCompatible(m, options);
  let bytes = 0;
  for (const b of files.values()) bytes += b.length;
  return { dir: root, manifest: m, digest: sha256(sumBytes), signer, unsignedReason: signer ? undefined : unsignedReason, files, bytes };
}

async function makeWritable(path: string): Promise<void> {
  const s = await lstat(path).catch(() => undefined);
  if (!s || !s.isDirectory()) return;
  await chmod(path, 0o700);
  for (const name of await readdir(path)) await makeWritable(join(path, name));
}

/**
 * Verifies the bundle, then writes the bytes it verified into `<storeDir>/<digest>/`: files
 * 0444 (the program `command[0]` names 0555), folders 0555, moved into place in one rename.
 * A change to the source after verification changes nothing installed; installing the same
 * bundle again is a no-op.
 * @throws what {@link verify} throws; ChecksumError when the store folder holds another bundle under that name
 */
export async function install(dir: string, storeDir: string, options: VerifyOptions = {}): Promise<InstalledBundle> {
  const v = await verify(dir, options);
  const store = resolve(storeDir);
  await mkdir(store, { recursive: true, mode: 0o755 });
  const storeStat = await stat(store);
  if ((storeStat.mode & 0o022) !== 0) throw new InvalidOptionError("storeDir", store, `a folder not writable by group or others (mode is ${(storeStat.mode & 0o777).toString(8)}; chmod go-w it)`);
  const target = join(store, v.digest);
  const { files, ...rest } = v;
  // An existing folder is trusted only if this user owns it, nobody can write it, and it
  // holds exactly this bundle's files: a folder planted under the right name is refused.
  const existing = async (): Promise<InstalledBundle | undefined> => {
    const s = await lstat(target).catch(() => undefined);
    if (!s) return undefined;
    const refuse = (why: string, cause?: unknown): never => {
      throw new ChecksumError(target, "", `the store folder exists but ${why}; remove it (\`uninstall\`) and install again`, { cause });
    };
    if (!s.isDirectory() || (s.mode & 0o222) !== 0 || (process.getuid !== undefined && s.uid !== process.getuid())) refuse("is not a read-only folder owned by this user");
    try {
      const installed = await readTree(target, limitsOf(options));
      if (!checkSums(target, installed).equals(files.get(SUM_FILE)!)) refuse("holds another bundle");
    } catch (err) {
      if (err instanceof ChecksumError && err.bundle === target && err.file === "") throw err;
      refuse("does not hold this bundle's files", err);
    }
    return { ...rest, path: target, installed: false };
  };
  const before = await existing();
  if (before) return before;
  const tmp = await mkdtemp(join(store, `.tmp-${v.digest.slice(0, 12)}-`));
  const program = commandFile(v.manifest);
  try {
    const made = new Set<string>([tmp]);
    for (const [rel, bytes] of files) {
      const abs = join(tmp, rel);
      const parent = dirname(abs);
      if (!made.has(parent)) {
        await mkdir(parent, { recursive: true, mode: 0o700 });
        for (let p = parent; p !== tmp && !made.has(p); p = dirname(p)) made.add(p);
      }
      await writeFile(abs, bytes, { flag: "wx", mode: rel === program ? 0o555 : 0o444 });
      await chmod(abs, rel === program ? 0o555 : 0o444);
    }
    for (const d of [...made].sort((a, b) => b.length - a.length)) await chmod(d, 0o555);
    try {
      await rename(tmp, target);
    } catch (err) {
      const code = errno(err);
      if (code !== "EEXIST" && code !== "ENOTEMPTY") throw err;
      // installed concurrently by another process: same digest, same bytes
      const raced = await existing();
      if (raced) {
        await makeWritable(tmp);
        await rm(tmp, { recursive: true, force: true });
        return raced;
      }
      throw err;
    }
  } catch (err) {
    await makeWritable(tmp).catch(() => undefined);
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
  return { ...rest, path: target, installed: true };
}

/** Removes an installed bundle `<storeDir>/<digest>` (its folders are read-only, so a plain `rm -r` fails). */
export async function uninstall(storeDir: string, digest: string): Promise<void> {
  if (!/^[0-9a-f]{64}$/u.test(digest)) throw new InvalidOptionError("digest", digest, "a SHA-256 in hex (64 characters)");
  const target = join(resolve(storeDir), digest);
  await makeWritable(target);
  await rm(target, { recursive: true, force: true });
}
