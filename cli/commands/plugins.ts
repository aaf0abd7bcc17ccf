import { readFile, stat } from "node:fs/promises";
import { resolve } from "node:path";
import type { Command } from "commander";
import { install, keygen, manifestSchema, pack, sign, verify, writeKeyPair } from "../../plugins/index.js";
import type { VerifiedBundle, VerifyOptions } from "../../plugins/index.js";
import { InvalidOptionError } from "../../streams/index.js";
import { pluginStoreDir, trustedKeysDir } from "../connection.js";

export { pluginStoreDir, trustedKeysDir } from "../connection.js";

interface VerifyOpts {
  trustedKeys?: string;
  allowUnsigned?: string;
}

function verifyOptions(opts: VerifyOpts): VerifyOptions {
  const allowUnsigned = (opts.allowUnsigned ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  return { trustedKeysDir: opts.trustedKeys ? resolve(opts.trustedKeys) : trustedKeysDir(), allowUnsigned };
}

function summary(v: Omit<VerifiedBundle, "files">): Record<string, unknown> {
  return {
    name: v.manifest.name,
    version: v.manifest.version,
    digest: v.digest,
    signed: v.signer !== undefined,
    signer: v.signer ?? null,
    ...(v.unsignedReason ? { unsignedReason: v.unsignedReason } : {}),
    bytes: v.bytes,
  };
}

function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/** Reads a private key file, refusing one that others may read (as ssh does). */
async function readPrivateKey(file: string): Promise<Buffer> {
  const s = await stat(file).catch((err: unknown) => {
    throw new InvalidOptionError("--key", file, `a readable private key file (${(err as Error).message})`);
  });
  if ((s.mode & 0o077) !== 0) throw new InvalidOptionError("--key", file, `a private key file only its owner may read (mode is ${(s.mode & 0o777).toString(8)}; chmod 600 it)`);
  return readFile(file);
}

export function register(program: Command): void {
  const plugins = program
    .command("plugins")
    .description("plugin bundles: keys, pack, sign, verify, install (docs/plugins.md). list/enable/disable/restart/logs come with the plugin supervisor");
  plugins
    .command("keygen")
    .description("create an operator key pair for signing bundles: <out>/<name>.key (0600, keep it secret) and <out>/<name>.pub (copy it into each host's trusted keys folder)")
    .option("--out <dir>", "folder to write the two files into", ".")
    .option("--name <name>", "file name of the pair", "flexcore-plugins")
    .action(async (opts: { out: string; name: string }) => {
      const pair = keygen();
      const files = await writeKeyPair(pair, resolve(opts.out), opts.name);
      print({ keyId: pair.keyId, ...files });
    });
  plugins
    .command("pack")
    .description("check the bundle's flexcore-plugin.yaml and write flexcore-plugin.sum (sha256 of every file); a signature of an older sum is deleted")
    .argument("<dir>", "the bundle folder")
    .action(async (dir: string) => {
      const r = await pack(dir);
      print({ name: r.manifest.name, version: r.manifest.version, digest: r.digest, files: r.files, bytes: r.bytes, removedSignature: r.removedSignature });
    });
  plugins
    .command("sign")
    .description("sign the bundle's flexcore-plugin.sum with an Ed25519 private key into flexcore-plugin.sig")
    .argument("<dir>", "the bundle folder (packed)")
    .requiredOption("--key <file>", "the private key (PEM) from `plugins keygen`, mode 0600")
    .action(async (dir: string, opts: { key: string }) => {
      const r = await sign(dir, await readPrivateKey(opts.key));
      print(r);
    });
  plugins
    .command("verify")
    .description("check every file against flexcore-plugin.sum, the signature against the trusted keys, the manifest and this FlexCore's version; exit 1 with the error's code when refused")
    .argument("<dir>", "the bundle folder")
    .option("--trusted-keys <dir>", "folder of trusted public keys (*.pub) (default: $FLEXCORE_PLUGIN_TRUSTED_KEYS or <data>/plugins/trusted-keys)")
    .option("--allow-unsigned <names>", "comma-separated plugin names that may load without a trusted signature (development only)")
    .action(async (dir: string, opts: VerifyOpts) => {
      print(summary(await verify(dir, verifyOptions(opts))));
    });
  plugins
    .command("install")
    .description("verify the bundle, then copy the verified bytes into the read-only store folder <store>/<digest> it runs from")
    .argument("<dir>", "the bundle folder")
    .option("--store <dir>", "the store (default: $FLEXCORE_PLUGIN_STORE or <data>/plugins/store)")
    .option("--trusted-keys <dir>", "folder of trusted public keys (*.pub) (default: $FLEXCORE_PLUGIN_TRUSTED_KEYS or <data>/plugins/trusted-keys)")
    .option("--allow-unsigned <names>", "comma-separated plugin names that may load without a trusted signature (development only)")
    .action(async (dir: string, opts: VerifyOpts & { store?: string }) => {
      const r = await install(dir, opts.store ? resolve(opts.store) : pluginStoreDir(), verifyOptions(opts));
      print({ ...summary(r), path: r.path, installed: r.installed });
    });
  plugins
    .command("schema")
    .description("print the JSON Schema of flexcore-plugin.yaml (for editors: `# yaml-language-server: $schema=<file>`)")
    .action(() => {
      process.stdout.write(`${JSON.stringify(manifestSchema(), null, 2)}\n`);
    });
}
