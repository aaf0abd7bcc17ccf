import type { Command } from "commander";
import { openKeyStore } from "../../gateway/index.js";
import { gatewayKeysDir } from "../connection.js";

interface KeysOpts {
  dir?: string;
}

function print(keys: ReadonlyArray<{ kid: string; createdAt: number; retiredAt?: number }>, active: string): void {
  for (const k of keys) {
    const state = k.kid === active ? "signs" : `verifies only (retired ${new Date(k.retiredAt ?? 0).toISOString()})`;
    process.stdout.write(`${k.kid}  created ${new Date(k.createdAt).toISOString()}  ${state}\n`);
  }
}

export function register(program: Command): void {
  const keys = program
    .command("keys")
    .description("the gateway's signing keys in a key directory ($FLEXCORE_GATEWAY_KEYS_DIR or <data>/gateway/keys); instances that share the directory accept each other's tokens");
  keys
    .command("list", { isDefault: true })
    .description("list the keys, generating the first one (mode 0600) when the directory has none")
    .option("--dir <dir>", "key directory")
    .action(async (opts: KeysOpts) => {
      const store = await openKeyStore({ dir: opts.dir ?? gatewayKeysDir() });
      print(store.keys, store.activeKid);
    });
  keys
    .command("rotate")
    .description("generate a new signing key; the old one keeps verifying for 30 days. Restart the gateways so they sign with it")
    .option("--dir <dir>", "key directory")
    .action(async (opts: KeysOpts) => {
      const store = await openKeyStore({ dir: opts.dir ?? gatewayKeysDir() });
      await store.rotate();
      print(store.keys, store.activeKid);
    });
}
