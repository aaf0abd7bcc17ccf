import { writeFile } from "node:fs/promises";
import type { Command } from "commander";
import { generateNatsUsers } from "../../gateway/index.js";
import { dataDir, seedsDir as defaultSeedsDir } from "../connection.js";
import { reloadEmbeddedServer, writeEmbeddedAuth } from "../embedded.js";

interface NatsUsersOpts {
  tenant: string[];
  out?: string;
  seeds?: string;
  service: boolean;
}

export function register(program: Command): void {
  program
    .command("nats-users")
    .description("give tenants NATS users confined to their own subjects (see docs/security.md); the embedded server picks them up at once")
    .option("-t, --tenant <tenant>", "a tenant (repeat for several; none: only the service user)", (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option("-o, --out <file>", "also write the users block for another server's nats.conf (- for stdout)")
    .option("--seeds <dir>", "directory of the NKey seeds (default: <data>/nats-seeds, the embedded server's)")
    .option("--no-service", "leave the full-access `flexcore` service user out of the block written with --out")
    .action(async (opts: NatsUsersOpts) => {
      const seedsDir = opts.seeds ?? defaultSeedsDir();
      const result = await generateNatsUsers({ tenants: opts.tenant, seedsDir, serviceUser: opts.service });
      if (opts.out === "-") process.stdout.write(result.config);
      else if (opts.out) await writeFile(opts.out, result.config, { mode: 0o600 });
      if (opts.seeds === undefined) {
        // The embedded server's users: every tenant with a seed here, and the service user.
        const file = await writeEmbeddedAuth(dataDir());
        const reloaded = await reloadEmbeddedServer(dataDir());
        process.stderr.write(`flexcore: wrote ${file}${reloaded ? "; the running embedded server reloaded it" : "; `flexcore up` includes it"}\n`);
      }
      if (opts.out && opts.out !== "-") process.stderr.write(`flexcore: wrote ${opts.out}; include it from that server's nats.conf and reload it (nats-server --signal reload)\n`);
      for (const u of result.users) process.stderr.write(`  ${u.name}: ${u.publicKey} (seed ${u.seedFile}${u.inboxPrefix ? `, inbox prefix ${u.inboxPrefix}` : ""})\n`);
    });
}
