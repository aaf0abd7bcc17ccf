/**
 * What the CLI offers tests: a `flexcore up` with signed plugin bundles, set up as an operator
 * would (a store the plugin's own uid can traverse, a trusted operator key, the echo plugin
 * bundled, packed and signed), and the connections a test needs around it.
 */
import { execFileSync } from "node:child_process";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { createTokenIssuer, openKeyStore } from "../gateway/index.js";
import type { Role } from "../gateway/index.js";
import { keygen, pack, sign, writeKeyPair } from "../plugins/index.js";
import { createPublisher } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { startUp } from "../test/flexcore-up.js";
import type { UpProcess } from "../test/flexcore-up.js";
import { embeddedConnectOptions } from "./connection.js";

const ECHO = fileURLToPath(new URL("../plugins/echo/", import.meta.url));

/** A temp directory holding `data/` (FLEXCORE_DATA) whose plugin store trusts one operator key. */
export interface PluginUpStore {
  readonly dir: string;
  readonly data: string;
  /** The trusted operator's private key, to sign bundles with. */
  readonly privateKeyPem: string;
}

/**
 * Makes the store: the plugin runs as a uid of its own, so the path to it must be traversable
 * (0755); `data/plugins/trusted-keys/operator.pub` is a fresh operator key's public half.
 */
export async function preparePluginUpStore(prefix: string): Promise<PluginUpStore> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const data = join(dir, "data");
  await chmod(dir, 0o755);
  await mkdir(data, { mode: 0o755 });
  const trusted = join(data, "plugins", "trusted-keys");
  await mkdir(trusted, { recursive: true, mode: 0o755 });
  await chmod(join(data, "plugins"), 0o755);
  await chmod(trusted, 0o755);
  const pair = keygen();
  const files = await writeKeyPair(pair, join(dir, "keys"), "operator");
  await copyFile(files.publicKeyFile, join(trusted, "operator.pub"));
  await chmod(join(trusted, "operator.pub"), 0o644);
  return { dir, data, privateKeyPem: pair.privateKeyPem };
}

/**
 * The echo plugin as one file (main.js) beside its manifest, what a packed TypeScript bundle
 * holds, in `into`; `manifest` may rewrite the manifest's text. Packed and signed with
 * `privateKeyPem` when given.
 */
export async function echoBundle(into: string, options: { readonly privateKeyPem?: string; readonly manifest?: (yaml: string) => string } = {}): Promise<void> {
  await mkdir(into, { recursive: true });
  await build({
    entryPoints: [join(ECHO, "main.ts")],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    outfile: join(into, "main.js"),
    banner: { js: "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);" },
    logLevel: "error",
  });
  const yaml = await readFile(join(ECHO, "flexcore-plugin.yaml"), "utf8");
  await writeFile(join(into, "flexcore-plugin.yaml"), options.manifest ? options.manifest(yaml) : yaml);
  if (options.privateKeyPem !== undefined) {
    await pack(into);
    await sign(into, options.privateKeyPem);
  }
}

/** A running `flexcore up` over its embedded nats-server, with a host connection and a token issuer. */
export interface PluginUp extends AsyncDisposable {
  readonly up: UpProcess;
  /** The embedded server's URL (`data/nats.url`). */
  readonly natsUrl: string;
  /** FlexCore's own connection to the embedded server. */
  readonly nc: NatsConnection;
  readonly publisher: Publisher;
  /** An access token of `tenant` with `roles` (default writer, reader, admin), from the gateway's keys. */
  token(tenant: string, roles?: Role[]): Promise<string>;
  /** Stops `up` (SIGKILL if a SIGTERM hangs 30 s), closes the connections and deletes the store. */
  close(): Promise<void>;
}

/**
 * Writes `config` as `<dir>/flexcore.yaml` and runs `flexcore up` on it with no NATS_URL (so it
 * starts its embedded server, with the plugins' users in its auth file), the gateway on port 0.
 */
export async function startPluginUp(store: PluginUpStore, config: string): Promise<PluginUp> {
  const file = join(store.dir, "flexcore.yaml");
  await writeFile(file, config);
  let up: UpProcess | undefined;
  let nc: NatsConnection | undefined;
  let publisher: Publisher | undefined;
  const close = async (): Promise<void> => {
    await publisher?.close().catch(() => undefined);
    await nc?.close().catch(() => undefined);
    if (up) {
      const code = await Promise.race([up.stop(), new Promise<"hung">((r) => setTimeout(() => r("hung"), 30_000))]);
      if (code === "hung") await up.kill();
    }
    // The store is read-only by design; make it writable again to clean up.
    execFileSync("chmod", ["-R", "u+w", store.dir]);
    await rm(store.dir, { recursive: true, force: true });
  };
  try {
    up = await startUp({ config: file, env: { NATS_URL: "", FLEXCORE_DATA: store.data, FLEXCORE_GATEWAY_PORT: "0", FLEXCORE_GATEWAY_KEYS_DIR: join(store.dir, "gw-keys") }, timeoutMs: 120_000 });
    const natsUrl = (await readFile(join(store.data, "nats.url"), "utf8")).trim();
    nc = await connect(embeddedConnectOptions(natsUrl, store.data));
    publisher = createPublisher(nc);
    const issuer = createTokenIssuer(await openKeyStore({ dir: join(store.dir, "gw-keys") }));
    const token = async (tenant: string, roles: Role[] = ["writer", "reader", "admin"]): Promise<string> => (await issuer.issueAccess({ tenant, subject: "e2e", roles, ttlSeconds: 600 })).token;
    return { up, natsUrl, nc, publisher, token, close, [Symbol.asyncDispose]: close };
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * Polls `check` every 100 ms until it holds; on timeout throws naming `what`, with the end of
 * `up`'s stderr (retry chatter left out).
 */
export async function waitForUp(up: UpProcess | undefined, check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${up?.stderr().split("\n").filter((l) => !l.includes("retrying")).join("\n").slice(-6000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
