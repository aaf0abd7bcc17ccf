import { readFile, stat } from "node:fs/promises";
import { resolve } from "node:path";
import type { Command } from "commander";
import { collectPluginViews, install, keygen, manifestSchema, pack, requestPluginLogs, requestPluginRestart, requestPluginUpgrade, setPluginEnabled, sign, verify, writeKeyPair } from "../../plugins/index.js";
import type { PluginInstanceView } from "../../plugins/index.js";
import type { VerifiedBundle, VerifyOptions } from "../../plugins/index.js";
import { InvalidOptionError } from "../../streams/index.js";
import { connectCli, pluginStoreDir, trustedKeysDir } from "../connection.js";

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
    .description("plugin bundles (keygen, pack, sign, verify, install) and the plugins of running instances (list, enable, disable, restart, logs, upgrade); docs/plugins.md");
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
    .command("list")
    .description("the configured plugins as the running instances see them: name, version, state, processes, restarts, calls, last error (one JSON line each; the lease holder's view wins)")
    .option("--nats <url>", "server URL")
    .action(async (opts: { nats?: string }) => {
      const nc = await connectCli(opts.nats);
      try {
        const views = await collectPluginViews(nc);
        if (views.length === 0) process.stderr.write("flexcore: no running instance answered (is `flexcore up` running, with plugins: in flexcore.yaml?)\n");
        for (const v of merge(views)) print(v);
      } finally {
        await nc.drain();
      }
    });
  for (const [verb, enabled] of [["enable", true], ["disable", false]] as const) {
    plugins
      .command(verb)
      .description(enabled ? "let FlexCore call the plugin again (every instance, persisted in flex_state)" : "stop calling the plugin on every instance (persisted in flex_state): processor messages wait unacknowledged, steps retry; nothing is dropped")
      .argument("<name>", "the plugin's name in flexcore.yaml")
      .option("--nats <url>", "server URL")
      .action(async (name: string, opts: { nats?: string }) => {
        const nc = await connectCli(opts.nats);
        try {
          print({ plugin: name, ...(await setPluginEnabled(nc, name, enabled, "cli")) });
        } finally {
          await nc.drain();
        }
      });
  }
  plugins
    .command("restart")
    .description("restart a plugin's processes on the instance holding its lease, clearing a crash loop or protocol failure")
    .argument("<name>", "the plugin's name")
    .option("--nats <url>", "server URL")
    .action(async (name: string, opts: { nats?: string }) => {
      const nc = await connectCli(opts.nats);
      try {
        print(await requestPluginRestart(nc, name));
      } finally {
        await nc.drain();
      }
    });
  plugins
    .command("upgrade")
    .description("upgrade a managed plugin without loss: the instance holding its lease verifies and installs the bundle (checksum, signature per its trusted keys, compatibility), starts it beside the running version, switches every instance's calls between two batches once it is ready, and drains the old one; if it never becomes ready, the old one keeps serving (FLEX_PLUGIN_UPGRADE_FAILED). The folder is read by the lease holder only: the verified bundle goes to the flex_plugin_bundles object store, from which any instance that takes the plugin over installs it (verified again against its own trusted keys)")
    .argument("<name>", "the plugin's name in flexcore.yaml")
    .argument("<bundle>", "the new version's bundle folder (packed and signed)")
    .option("--timeout <ms>", "how long to wait for the answer", "120000")
    .option("--nats <url>", "server URL")
    .action(async (name: string, bundle: string, opts: { nats?: string; timeout: string }) => {
      const timeoutMs = Number(opts.timeout);
      if (!Number.isInteger(timeoutMs) || timeoutMs < 1000) throw new InvalidOptionError("--timeout", opts.timeout, "a whole number of ms from 1000");
      const dir = resolve(bundle);
      const s = await stat(dir).catch(() => undefined);
      if (!s?.isDirectory()) throw new InvalidOptionError("<bundle>", bundle, "a bundle folder (flexcore-plugin.yaml, .sum, .sig); unpack an archive first");
      const nc = await connectCli(opts.nats);
      try {
        print(await requestPluginUpgrade(nc, name, dir, { timeoutMs, by: "cli" }));
      } finally {
        await nc.drain();
      }
    });
  plugins
    .command("logs")
    .description("the last lines of a plugin's output, kept in memory by the instance holding its lease")
    .argument("<name>", "the plugin's name")
    .option("-n, --lines <n>", "how many lines", "100")
    .option("--nats <url>", "server URL")
    .action(async (name: string, opts: { nats?: string; lines: string }) => {
      const n = Number(opts.lines);
      if (!Number.isInteger(n) || n < 1) throw new InvalidOptionError("--lines", opts.lines, "a whole number from 1");
      const nc = await connectCli(opts.nats);
      try {
        const r = await requestPluginLogs(nc, name, n);
        for (const line of r.lines) process.stdout.write(`${line}\n`);
      } finally {
        await nc.drain();
      }
    });
  plugins
    .command("schema")
    .description("print the JSON Schema of flexcore-plugin.yaml (for editors: `# yaml-language-server: $schema=<file>`)")
    .action(() => {
      process.stdout.write(`${JSON.stringify(manifestSchema(), null, 2)}\n`);
    });
}

/** One line per plugin: the view of the instance holding its lease (else the first), with every instance's calls added up. */
function merge(views: readonly PluginInstanceView[]): Array<Record<string, unknown>> {
  const by = new Map<string, PluginInstanceView[]>();
  for (const v of views) by.set(v.plugin, [...(by.get(v.plugin) ?? []), v]);
  return [...by].sort(([a], [b]) => a.localeCompare(b)).map(([plugin, list]) => {
    const main = list.find((v) => v.leaseHeld) ?? list[0]!;
    return {
      plugin,
      version: main.version ?? null,
      tenant: main.tenant,
      state: main.state,
      enabled: main.enabled,
      processes: main.processes,
      restarts: main.restarts,
      lastError: main.lastError,
      supervisedBy: list.find((v) => v.leaseHeld)?.instance ?? null,
      calls: list.reduce((n, v) => n + v.calls, 0),
      errors: list.reduce((n, v) => n + Object.values(v.errors).reduce((a, b) => a + b, 0), 0),
    };
  });
}
