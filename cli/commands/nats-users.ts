import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Command } from "commander";
import { generateNatsUsers } from "../../gateway/index.js";
import { dataDir } from "../connection.js";

interface NatsUsersOpts {
  tenant: string[];
  out?: string;
  seeds?: string;
  service: boolean;
}

export function register(program: Command): void {
  program
    .command("nats-users")
    .description("write the nats.conf users block: one NKey per tenant, allowed to publish only to evt.<tenant>.> (see docs/security.md)")
    .requiredOption("-t, --tenant <tenant>", "a tenant (repeat for several)", (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option("-o, --out <file>", "config file to write (default: <data>/tenants.conf; - for stdout)")
    .option("--seeds <dir>", "directory of the NKey seeds (default: <data>/nats-seeds)")
    .option("--no-service", "leave out the full-access `flexcore` service user")
    .action(async (opts: NatsUsersOpts) => {
      const seedsDir = opts.seeds ?? join(dataDir(), "nats-seeds");
      const result = await generateNatsUsers({ tenants: opts.tenant, seedsDir, serviceUser: opts.service });
      const out = opts.out ?? join(dataDir(), "tenants.conf");
      if (out === "-") {
        process.stdout.write(result.config);
      } else {
        await writeFile(out, result.config);
        process.stderr.write(`flexcore: wrote ${out}; add \`include "${out}"\` to nats.conf and reload the server\n`);
      }
      for (const u of result.users) process.stderr.write(`  ${u.name}: ${u.publicKey} (seed ${u.seedFile}${u.inboxPrefix ? `, inbox prefix ${u.inboxPrefix}` : ""})\n`);
    });
}
