import { chmod, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { nkeys } from "@nats-io/transport-node";
import { InvalidOptionError, RESERVED_CATEGORIES, SUBJECT_ROOTS } from "../streams/index.js";
import { checkUserTenant } from "./users.js";

/** Name of the service user (FlexCore's own processes), which keeps full access. */
export const SERVICE_USER = "flexcore";
/** File name of a seed: `<name>.nk`, the name percent-encoded (a tenant may hold `/`). */
const SEED_SUFFIX = ".nk";

/** Options of {@link generateNatsUsers}. */
export interface NatsUsersOptions {
  /** Tenants to write a user for (may be empty when the service user is written). */
  readonly tenants: readonly string[];
  /**
   * Directory of the NKey seeds (`<tenant>.nk`, `flexcore.nk`, mode 0600). Existing seeds
   * are reused, so running the command again keeps every client's credentials.
   */
  readonly seedsDir: string;
  /** Also write the full-access service user for FlexCore itself. @default true */
  readonly serviceUser?: boolean;
  /**
   * More entries of the `users = [...]` list, written after the tenants' (the managed plugins'
   * users, from `generatePluginUsers` in plugins/): the server reads one `authorization` block. @default []
   */
  readonly extraUsers?: readonly string[];
}

/** One user of the generated block. */
export interface NatsUser {
  /** A tenant, or {@link SERVICE_USER}. */
  readonly name: string;
  readonly publicKey: string;
  readonly seedFile: string;
  /** The inbox prefix a tenant's client must use; none for the service user. */
  readonly inboxPrefix: string | undefined;
}

/** What {@link generateNatsUsers} produced. */
export interface NatsUsers {
  /** The `authorization { users = [...] }` block for `nats.conf`. */
  readonly config: string;
  /** Seed file and public key per user (tenants, then `flexcore`). */
  readonly users: readonly NatsUser[];
}

/** Inbox prefix a tenant's client must use (`inboxPrefix` in nats.js, `--inbox-prefix` in the nats CLI). */
export function tenantInboxPrefix(tenant: string): string {
  return `_INBOX_${tenant}`;
}

/** Path of the seed file of a tenant or the service user in `seedsDir`. */
export function seedFile(seedsDir: string, name: string): string {
  return join(seedsDir, `${encodeURIComponent(name)}${SEED_SUFFIX}`);
}

/** Tenants that have a seed in `seedsDir` (every user `flexcore nats-users` wrote), sorted. */
export async function seededTenants(seedsDir: string): Promise<string[]> {
  const files = await readdir(seedsDir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return [] as string[];
    throw err;
  });
  return files
    .filter((f) => f.endsWith(SEED_SUFFIX))
    .map((f) => decodeURIComponent(f.slice(0, -SEED_SUFFIX.length)))
    .filter((name) => name !== SERVICE_USER)
    .sort();
}

async function seedFor(dir: string, name: string): Promise<{ seed: Uint8Array; file: string }> {
  const file = seedFile(dir, name);
  try {
    const text = (await readFile(file, "utf8")).trim();
    nkeys.fromSeed(new TextEncoder().encode(text)); // throws if the file is not a user seed
    return { seed: new TextEncoder().encode(text), file };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw new InvalidOptionError(`seed file ${file}`, "(unreadable)", "an NKey user seed (SU...)");
  }
  const seed = nkeys.createUser().getSeed();
  await writeFile(file, `${new TextDecoder().decode(seed)}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return { seed, file };
}

/** A quoted string of the server's configuration language (JSON's quoting is a subset it reads). */
const q = (s: string): string => JSON.stringify(s);

/**
 * The permissions of a tenant's user: publish its own events (not the categories FlexCore
 * writes itself, so it cannot forge a workflow run, a plugin's status or metrics), receive its JetStream acks on its own inbox prefix, and watch its own
 * events and derived events live. No JetStream API: a consumer's deliver subject cannot be
 * confined by permissions, so a tenant that could create one could make the server write
 * into another tenant's subjects. It may not answer requests (`allow_responses` is off): it
 * sees FlexCore's own publishes to its subjects, and must not be able to forge their acks.
 */
function tenantBlock(tenant: string, publicKey: string): string {
  const own = `${SUBJECT_ROOTS.events}.${tenant}`;
  const inbox = tenantInboxPrefix(tenant);
  return [
    `    # tenant ${q(tenant)}: publishes only its own events; JetStream acks come back on ${inbox}.>`,
    `    {`,
    `      nkey: ${publicKey}`,
    `      permissions: {`,
    `        publish: { allow: [${q(`${own}.>`)}], deny: [${RESERVED_CATEGORIES.map((c) => q(`${own}.${c}.>`)).join(", ")}] }`,
    `        subscribe: { allow: [${[`${inbox}.>`, `${own}.>`, `${SUBJECT_ROOTS.derived}.${tenant}.>`].map(q).join(", ")}] }`,
    `      }`,
    `    }`,
  ].join("\n");
}

/**
 * Writes one NKey per tenant and the `nats.conf` users block that confines each tenant to
 * publishing its own events (`evt.<tenant>.>`, less FlexCore's own categories) and receiving
 * its replies (JetStream acks) on its own inbox prefix. A tenant user cannot publish to
 * another tenant's subjects, read another tenant's subjects, subscribe to other inboxes or
 * call the JetStream API (no stream, KV bucket or consumer of anyone).
 */
export async function generateNatsUsers(options: NatsUsersOptions): Promise<NatsUsers> {
  const service = options.serviceUser ?? true;
  if (!Array.isArray(options.tenants) || (options.tenants.length === 0 && !service)) {
    throw new InvalidOptionError("tenants", options.tenants, "a non-empty list of tenant names");
  }
  const tenants = [...new Set(options.tenants.map((t) => checkUserTenant(t)))];
  if (tenants.includes(SERVICE_USER)) throw new InvalidOptionError("tenants", SERVICE_USER, `tenant names other than \`${SERVICE_USER}\` (the service user's seed file)`);
  await mkdir(options.seedsDir, { recursive: true, mode: 0o700 });
  const users: NatsUser[] = [];
  const blocks: string[] = [];
  for (const tenant of tenants) {
    const { seed, file } = await seedFor(options.seedsDir, tenant);
    const publicKey = nkeys.fromSeed(seed).getPublicKey();
    users.push({ name: tenant, publicKey, seedFile: file, inboxPrefix: tenantInboxPrefix(tenant) });
    blocks.push(tenantBlock(tenant, publicKey));
  }
  if (service) {
    const { seed, file } = await seedFor(options.seedsDir, SERVICE_USER);
    const publicKey = nkeys.fromSeed(seed).getPublicKey();
    users.push({ name: SERVICE_USER, publicKey, seedFile: file, inboxPrefix: undefined });
    blocks.push([
      `    # ${SERVICE_USER}: FlexCore's own processes (gateway, processors, projections, CLI): full access`,
      `    { nkey: ${publicKey} }`,
    ].join("\n"));
  }
  blocks.push(...(options.extraUsers ?? []));
  const config = [
    `# Generated by FlexCore (\`flexcore nats-users\`, \`flexcore up\`) on ${new Date().toISOString()}.`,
    `# Seeds (keep them secret, mode 0600) are in ${options.seedsDir}. Anonymous clients are refused.`,
    `authorization {`,
    `  users = [`,
    blocks.join("\n"),
    `  ]`,
    `}`,
    ``,
  ].join("\n");
  return { config, users };
}
