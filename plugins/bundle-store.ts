/**
 * Verified plugin bundles in FlexCore's JetStream object store `flex_plugin_bundles`, so an
 * instance that never saw an upgrade's bundle folder can install the chosen version.
 *
 * Layout: one object per bundle, named by its digest (the SHA-256 of its sum file), holding
 * NDJSON: a header line `{"flexcore_bundle":1,"plugin":…,"digest":…}`, then one line
 * `{"path":…,"data":<base64>}` per file: the sum file first, the signature if any, then the
 * files in the sum file's order. One object, because every object store read is a JetStream
 * consumer: one per file would cost a bundle of a thousand files a thousand consumers. NDJSON,
 * because it streams both ways (one file in memory at a time), any tool reads it, and no
 * archive format of FlexCore's own is needed. The objects carry `flexcore.plugin` and
 * `flexcore.digest` metadata for retention.
 *
 * Nothing in the store is trusted for being there: a fetch checks the sum's SHA-256 against
 * the digest first, writes only the paths the sum file lists into a private temporary folder,
 * and {@link install} verifies it again there (every file's SHA-256, the signature against
 * this instance's own trusted keys, compatibility).
 */
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Objm } from "@nats-io/obj";
import type { ObjectStore } from "@nats-io/obj";
import type { NatsConnection } from "@nats-io/transport-node";
import { InvalidOptionError, OBJECT_STORES } from "../streams/index.js";
import { DEFAULT_BUNDLE_LIMITS, install, readSumFile, SIG_FILE, SUM_FILE } from "./bundle.js";
import type { InstalledBundle, VerifiedBundle, VerifyOptions } from "./bundle.js";
import { BundleTooLargeError, ChecksumError } from "./errors.js";

/** Object metadata key: the plugin a stored bundle belongs to. */
export const BUNDLE_PLUGIN_METADATA = "flexcore.plugin";
/** Object metadata key: the digest of the stored bundle. */
export const BUNDLE_DIGEST_METADATA = "flexcore.digest";
/** Version of the stored bundle format (the header line's `flexcore_bundle`). */
export const STORED_BUNDLE_FORMAT = 1;

const DIGEST = /^[0-9a-f]{64}$/u;
// How the object store writes an object's SHA-256 (base64url) in its info.
const OBJECT_DIGEST_PREFIX = "SHA-256=";
const NEWLINE = 0x0a;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function checkDigest(digest: string): string {
  if (typeof digest !== "string" || !DIGEST.test(digest)) throw new InvalidOptionError("digest", digest, "a SHA-256 in hex (64 characters)");
  return digest;
}

/** What {@link storeBundle} did. */
export interface StoredBundle {
  readonly digest: string;
  /** `false` when the bundle was in the store already (nothing was written). */
  readonly stored: boolean;
  /** Bytes of the stored object. */
  readonly bytes: number;
}

async function openStore(nc: NatsConnection): Promise<ObjectStore> {
  return new Objm(nc).open(OBJECT_STORES.pluginBundles);
}

/** Where a bundle is in the store, for messages. */
function where(digest: string): string {
  return `${OBJECT_STORES.pluginBundles}/${digest}`;
}

/** The lines of a stored bundle, one file's base64 at a time. */
function* lines(plugin: string, digest: string, files: ReadonlyMap<string, Buffer>): Generator<Uint8Array> {
  yield encoder.encode(`${JSON.stringify({ flexcore_bundle: STORED_BUNDLE_FORMAT, plugin, digest })}\n`);
  const sum = files.get(SUM_FILE)!;
  const order = [SUM_FILE, ...(files.has(SIG_FILE) ? [SIG_FILE] : []), ...readSumFile(where(digest), sum).keys()];
  for (const path of order) yield encoder.encode(`${JSON.stringify({ path, data: files.get(path)!.toString("base64") })}\n`);
}

/**
 * Puts a verified bundle into the object store under its digest. A bundle already there with
 * the same bytes (the object store's SHA-256 of the object) is not written again; a stored
 * object with other bytes (damaged, tampered) is replaced.
 */
export async function storeBundle(nc: NatsConnection, plugin: string, bundle: Pick<VerifiedBundle, "digest" | "files">): Promise<StoredBundle> {
  const digest = checkDigest(bundle.digest);
  const os = await openStore(nc);
  if (!bundle.files.has(SUM_FILE)) throw new ChecksumError(where(digest), SUM_FILE, "is missing from the verified bundle");
  for (const path of readSumFile(where(digest), bundle.files.get(SUM_FILE)!).keys()) {
    if (!bundle.files.has(path)) throw new ChecksumError(where(digest), path, "is listed in the sum file but missing from the verified bundle");
  }
  const existing = await os.info(digest);
  if (existing && !existing.deleted && existing.digest.startsWith(OBJECT_DIGEST_PREFIX)) {
    const hash = createHash("sha256");
    for (const line of lines(plugin, digest, bundle.files)) hash.update(line);
    if (hash.digest().equals(Buffer.from(existing.digest.slice(OBJECT_DIGEST_PREFIX.length), "base64url"))) return { digest, stored: false, bytes: existing.size };
  }
  const it = lines(plugin, digest, bundle.files);
  const data = new ReadableStream<Uint8Array>({
    pull(controller) {
      const next = it.next();
      if (next.done) controller.close();
      else controller.enqueue(next.value);
    },
  });
  const info = await os.put({ name: digest, metadata: { [BUNDLE_PLUGIN_METADATA]: plugin, [BUNDLE_DIGEST_METADATA]: digest } }, data);
  return { digest, stored: true, bytes: info.size };
}

/** Whether the bundle `digest` is in the store. */
export async function hasStoredBundle(nc: NatsConnection, digest: string): Promise<boolean> {
  const info = await (await openStore(nc)).info(checkDigest(digest));
  return info !== null && !info.deleted;
}

/** Splits a byte stream into lines, none longer than `max` bytes. */
async function* splitLines(data: ReadableStream<Uint8Array>, max: number, tooLong: () => Error): AsyncGenerator<Uint8Array> {
  let pending: Uint8Array[] = [];
  let size = 0;
  const reader = data.getReader();
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        finished = true;
        break;
      }
      let from = 0;
      for (let nl = value.indexOf(NEWLINE); nl !== -1; nl = value.indexOf(NEWLINE, from)) {
        pending.push(value.subarray(from, nl));
        size += nl - from;
        if (size > max) throw tooLong();
        yield Buffer.concat(pending);
        pending = [];
        size = 0;
        from = nl + 1;
      }
      if (from < value.length) {
        pending.push(value.subarray(from));
        size += value.length - from;
        if (size > max) throw tooLong();
      }
    }
  } finally {
    // A refused object is not read to its end: stop its consumer.
    if (!finished) await reader.cancel().catch(() => undefined);
  }
  if (size > 0) yield Buffer.concat(pending);
}

function parseLine<T>(digest: string, line: Uint8Array, n: number, check: (v: Record<string, unknown>) => boolean): T {
  let v: unknown;
  try {
    v = JSON.parse(decoder.decode(line));
  } catch (err) {
    throw new ChecksumError(where(digest), "", `line ${n} of the stored object is not JSON`, { cause: err });
  }
  if (v === null || typeof v !== "object" || Array.isArray(v) || !check(v as Record<string, unknown>)) throw new ChecksumError(where(digest), "", `line ${n} of the stored object is not what a stored bundle holds`);
  return v as T;
}

/**
 * Writes the stored bundle `digest` into the empty folder `dir` (files 0600, folders 0700):
 * the sum file first, which must hash to `digest`, then only the signature and the paths the
 * sum file lists (its paths are checked to stay inside the bundle), each once, within the
 * bundle limits. Verifies nothing else: {@link install} does.
 * @throws ChecksumError when the bundle is not in the store, or is not `digest`'s; BundleTooLargeError
 */
export async function fetchStoredBundle(nc: NatsConnection, digest: string, dir: string, options: Pick<VerifyOptions, "limits"> = {}): Promise<void> {
  checkDigest(digest);
  const limits = { ...DEFAULT_BUNDLE_LIMITS, ...options.limits };
  const os = await openStore(nc);
  const object = await os.get(digest);
  if (!object) throw new ChecksumError(where(digest), "", "is not in the object store (the bundle was never stored there, or was removed)");
  if (object.info.size > Math.ceil(limits.maxBytes / 3) * 4 + (limits.maxFiles + 2) * (1024 + 64)) {
    throw new BundleTooLargeError(where(digest), "maxBytes", limits.maxBytes, `the stored object holds ${object.info.size} bytes`);
  }
  const tooLong = (): Error => new BundleTooLargeError(where(digest), "maxBytes", limits.maxBytes, "a file of it holds more bytes than a bundle may");
  let n = 0;
  let bytes = 0;
  let listed: Map<string, string> | undefined;
  const written = new Set<string>();
  for await (const line of splitLines(object.data, Math.ceil(limits.maxBytes / 3) * 4 + 1024 + 64, tooLong)) {
    n += 1;
    if (n === 1) {
      const h = parseLine<{ flexcore_bundle: unknown; digest: unknown }>(digest, line, n, (v) => "flexcore_bundle" in v);
      if (h.flexcore_bundle !== STORED_BUNDLE_FORMAT || h.digest !== digest) throw new ChecksumError(where(digest), "", `its header is not a stored bundle of format ${STORED_BUNDLE_FORMAT} with digest ${digest}`);
      continue;
    }
    const f = parseLine<{ path: string; data: string }>(digest, line, n, (v) => typeof v.path === "string" && typeof v.data === "string" && Object.keys(v).length === 2);
    const data = Buffer.from(f.data, "base64");
    if (n === 2) {
      if (f.path !== SUM_FILE) throw new ChecksumError(where(digest), f.path, `comes before ${SUM_FILE}, which a stored bundle holds first`);
      const actual = createHash("sha256").update(data).digest("hex");
      if (actual !== digest) throw new ChecksumError(where(digest), SUM_FILE, `its SHA-256 is ${actual}, not the digest it is stored under`);
      listed = readSumFile(where(digest), data);
      if (listed.size + 2 > limits.maxFiles) throw new BundleTooLargeError(where(digest), "maxFiles", limits.maxFiles, `its sum file lists ${listed.size} files`);
    } else if (written.has(f.path) || (f.path !== SIG_FILE && !listed!.has(f.path))) {
      throw new ChecksumError(where(digest), f.path, "is stored but not listed in the sum file, or stored twice");
    }
    bytes += data.length;
    if (bytes > limits.maxBytes) throw new BundleTooLargeError(where(digest), "maxBytes", limits.maxBytes, `its files hold more than ${limits.maxBytes} bytes`);
    const abs = join(dir, f.path);
    await mkdir(dirname(abs), { recursive: true, mode: 0o700 });
    await writeFile(abs, data, { flag: "wx", mode: 0o600 });
    written.add(f.path);
  }
  const damaged = await object.error;
  // The object store's own SHA-256 of the object did not match what was read.
  if (damaged) throw new ChecksumError(where(digest), "", `the stored object is damaged (${damaged.message})`, { cause: damaged });
  if (!listed) throw new ChecksumError(where(digest), SUM_FILE, "is not in the stored object");
  for (const path of listed.keys()) if (!written.has(path)) throw new ChecksumError(where(digest), path, "is listed in the sum file but not in the stored object");
}

/**
 * Installs the stored bundle `digest` as {@link install} installs a folder: fetched into a
 * private temporary folder, verified there against this instance's own trusted keys, copied
 * into `<storeDir>/<digest>`; the temporary folder is removed in every case.
 * @throws what {@link fetchStoredBundle} and {@link install} throw
 */
export async function installStoredBundle(nc: NatsConnection, digest: string, storeDir: string, options: VerifyOptions = {}): Promise<InstalledBundle> {
  checkDigest(digest);
  const tmp = await mkdtemp(join(tmpdir(), "flexcore-bundle-fetch-"));
  try {
    const dir = join(tmp, "bundle");
    await mkdir(dir, { mode: 0o700 });
    await fetchStoredBundle(nc, digest, dir, options);
    const installed = await install(dir, storeDir, options);
    if (installed.digest !== digest) throw new ChecksumError(where(digest), SUM_FILE, `the fetched bundle's digest is ${installed.digest}`);
    return installed;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Removes the stored bundles of `plugin` other than `keep` (every object carrying its
 * `flexcore.plugin` metadata).
 * @returns the digests removed
 */
export async function pruneStoredBundles(nc: NatsConnection, plugin: string, keep: readonly string[]): Promise<string[]> {
  const os = await openStore(nc);
  const kept = new Set(keep);
  const removed: string[] = [];
  for (const info of await os.list()) {
    const digest = info.metadata?.[BUNDLE_DIGEST_METADATA];
    if (info.deleted || info.metadata?.[BUNDLE_PLUGIN_METADATA] !== plugin || digest === undefined || kept.has(digest)) continue;
    await os.delete(info.name);
    removed.push(digest);
  }
  return removed;
}
