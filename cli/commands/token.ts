import type { Command } from "commander";
import { InvalidOptionError } from "../../streams/index.js";
import { checkRoles, checkUserTenant, createTokenIssuer, openKeyStore } from "../../gateway/index.js";
import { gatewayKeysDir } from "../connection.js";

interface TokenOpts {
  tenant: string;
  subject: string;
  roles: string;
  ttl: string;
  keys?: string;
  issuer?: string;
  audience?: string;
}

export function register(program: Command): void {
  program
    .command("token")
    .description("print an access token signed with the gateway's key (for scripts and tests)")
    .requiredOption("--tenant <tenant>", "tenant of the token")
    .requiredOption("--roles <list>", "comma-separated roles: admin, writer, reader, operator")
    .option("--subject <name>", "sub claim", "cli")
    .option("--ttl <seconds>", "lifetime in seconds", "900")
    .option("--keys <dir>", "key directory (default: $FLEXCORE_GATEWAY_KEYS_DIR or <data>/gateway/keys, as the gateway)")
    .option("--issuer <iss>", "iss claim (default: the gateway's)")
    .option("--audience <aud>", "aud claim (default: the gateway's)")
    .action(async (opts: TokenOpts) => {
      const ttl = Number(opts.ttl);
      if (!Number.isInteger(ttl) || ttl < 1) throw new InvalidOptionError("--ttl", opts.ttl, "an integer number of seconds from 1 and up");
      // Before the key directory is opened (which creates a key on first use).
      checkUserTenant(opts.tenant, "--tenant");
      const keys = await openKeyStore({ dir: opts.keys ?? gatewayKeysDir() });
      const issuer = createTokenIssuer(keys, { ...(opts.issuer ? { issuer: opts.issuer } : {}), ...(opts.audience ? { audience: opts.audience } : {}) });
      const roles = checkRoles(opts.roles.split(",").map((r) => r.trim()).filter(Boolean));
      const { token } = await issuer.issueAccess({ tenant: opts.tenant, subject: opts.subject, roles, ttlSeconds: ttl });
      process.stdout.write(`${token}\n`);
    });
}
