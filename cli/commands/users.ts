import type { Command } from "commander";
import { Kvm } from "@nats-io/kv";
import { BUCKETS, InvalidOptionError } from "../../streams/index.js";
import { checkUserTenant, openRevocations, openUserStore, revokeUserSessions } from "../../gateway/index.js";
import { connectCli } from "../connection.js";

interface Common {
  nats?: string;
}

/** Reads the password from FLEXCORE_PASSWORD or the first line of stdin (never from argv, which `ps` shows). */
async function readPassword(): Promise<string> {
  const fromEnv = process.env.FLEXCORE_PASSWORD;
  if (fromEnv) return fromEnv;
  if (process.stdin.isTTY) process.stderr.write("password: ");
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk as Buffer);
    if (Buffer.concat(chunks).includes(10)) break;
  }
  const line = Buffer.concat(chunks).toString("utf8").split(/\r?\n/u)[0] ?? "";
  if (!line) throw new InvalidOptionError("password", "", "a password in FLEXCORE_PASSWORD or on stdin");
  return line;
}

function roles(text: string): string[] {
  return text.split(",").map((r) => r.trim()).filter(Boolean);
}

async function withUsers<T>(opts: Common, fn: (ctx: Awaited<ReturnType<typeof open>>) => Promise<T>): Promise<T> {
  const ctx = await open(opts);
  try {
    return await fn(ctx);
  } finally {
    await ctx.revocations.close();
    await ctx.nc.drain();
  }
}

async function open(opts: Common) {
  const nc = await connectCli(opts.nats);
  const users = await openUserStore(nc);
  const revocations = await openRevocations(nc);
  const kv = await new Kvm(nc).open(BUCKETS.auth);
  return { nc, users, revocations, kv };
}

export function register(program: Command): void {
  const users = program.command("users").description("gateway users (flex_auth KV, scrypt hashes); passwords come from FLEXCORE_PASSWORD or stdin");
  users
    .command("add")
    .description("add a user")
    .argument("<tenant>")
    .argument("<username>")
    .requiredOption("-r, --roles <list>", "comma-separated roles: admin, writer, reader, operator (deployment-wide: projection rebuilds; only this CLI grants it)")
    .option("--nats <url>", "server URL")
    .action(async (tenant: string, username: string, opts: Common & { roles: string }) => {
      checkUserTenant(tenant); // before asking for a password: `_system` and other `_` tenants are FlexCore's
      const password = await readPassword();
      await withUsers(opts, async ({ users: store }) => {
        const user = await store.add(tenant, username, password, roles(opts.roles));
        process.stdout.write(`${JSON.stringify(user)}\n`);
      });
    });
  users
    .command("roles")
    .description("set a user's roles (the only way to grant or take away `operator`) and end its sessions")
    .argument("<tenant>")
    .argument("<username>")
    .requiredOption("-r, --roles <list>", "comma-separated roles: admin, writer, reader, operator")
    .option("--nats <url>", "server URL")
    .action(async (tenant: string, username: string, opts: Common & { roles: string }) => {
      checkUserTenant(tenant);
      await withUsers(opts, async ({ users: store, kv, revocations }) => {
        const user = await store.setRoles(tenant, username, roles(opts.roles));
        // Tokens carry roles: an old token would keep the old rights until it expired.
        const ended = await revokeUserSessions(kv, revocations, tenant, username);
        process.stdout.write(`${JSON.stringify({ ...user, sessionsEnded: ended })}\n`);
      });
    });
  users
    .command("list")
    .description("list users (of one tenant, or all)")
    .argument("[tenant]")
    .option("--nats <url>", "server URL")
    .action(async (tenant: string | undefined, opts: Common) => {
      if (tenant !== undefined) checkUserTenant(tenant);
      await withUsers(opts, async ({ users: store }) => {
        for (const u of await store.list(tenant)) process.stdout.write(`${JSON.stringify(u)}\n`);
      });
    });
  users
    .command("remove")
    .description("remove a user and end its sessions")
    .argument("<tenant>")
    .argument("<username>")
    .option("--nats <url>", "server URL")
    .action(async (tenant: string, username: string, opts: Common) => {
      await withUsers(opts, async ({ users: store, kv, revocations }) => {
        await store.remove(tenant, username);
        const ended = await revokeUserSessions(kv, revocations, tenant, username);
        process.stdout.write(`${JSON.stringify({ removed: { tenant, username }, sessionsEnded: ended })}\n`);
      });
    });
  users
    .command("passwd")
    .description("set a user's password and end its sessions")
    .argument("<tenant>")
    .argument("<username>")
    .option("--nats <url>", "server URL")
    .action(async (tenant: string, username: string, opts: Common) => {
      checkUserTenant(tenant);
      const password = await readPassword();
      await withUsers(opts, async ({ users: store, kv, revocations }) => {
        await store.setPassword(tenant, username, password);
        const ended = await revokeUserSessions(kv, revocations, tenant, username);
        process.stdout.write(`${JSON.stringify({ updated: { tenant, username }, sessionsEnded: ended })}\n`);
      });
    });
}
