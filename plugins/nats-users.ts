/**
 * The NATS users of managed plugins: `plugin-<service>` with a random password, allowed to
 * serve its own services-protocol subjects and to answer what it is asked, nothing else.
 * The entries are text for the `users = [...]` list of the server's `authorization` block
 * (see `generateNatsUsers({ extraUsers })` in gateway/ and `flexcore up`).
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { InvalidOptionError } from "../streams/index.js";
import { ENDPOINT_SUBJECT_ROOT, PLUGIN_NAME_PATTERN } from "./protocol.js";
import { checkServiceName } from "./tenancy.js";

/** Prefix of a plugin's NATS user name. */
export const PLUGIN_USER_PREFIX = "plugin-";
/** Bytes of randomness in a generated password (base64url). */
const PASSWORD_BYTES = 24;
const PASSWORD_SUFFIX = ".pass";

/** @throws InvalidOptionError unless `name` matches {@link PLUGIN_NAME_PATTERN} */
export function checkPluginName(name: unknown, field = "name"): string {
  if (typeof name !== "string" || !PLUGIN_NAME_PATTERN.test(name)) {
    throw new InvalidOptionError(field, name, "a plugin name: a lowercase letter, then 1 to 39 lowercase letters, digits or `-`");
  }
  return name;
}

/** The NATS user name of a plugin's service. */
export function pluginUserName(service: string): string {
  return `${PLUGIN_USER_PREFIX}${checkServiceName(service)}`;
}

/** What a plugin's user may do, in the server's terms. */
export interface PluginPermissions {
  readonly publish: { readonly deny: readonly string[] };
  readonly subscribe: { readonly allow: readonly string[] };
  /** It may answer each request it received, once. */
  readonly allowResponses: true;
}

/**
 * Subscribe: the services protocol's discovery subjects for everyone and for its own service
 * (`$SRV.PING|INFO|STATS`, `$SRV.*.<service>`, `$SRV.*.<service>.>`) and its endpoints
 * (`flexplugin.<service>.>`). Publish: nothing but replies (`allow_responses`). So no
 * `evt.>`/`drv.>`, no JetStream or KV API, no other plugin's subjects, no `_INBOX.>`.
 */
export function pluginPermissions(service: string): PluginPermissions {
  checkServiceName(service);
  return {
    publish: { deny: [">"] },
    subscribe: { allow: ["$SRV.PING", "$SRV.INFO", "$SRV.STATS", `$SRV.*.${service}`, `$SRV.*.${service}.>`, `${ENDPOINT_SUBJECT_ROOT}.${service}.>`] },
    allowResponses: true,
  };
}

/** A plugin's NATS credentials. */
export interface PluginCredentials {
  readonly user: string;
  readonly password: string;
  /** Where the password is kept (mode 0600). */
  readonly file: string;
}

/**
 * The credentials of `service`, from `<dir>/<service>.pass` (mode 0600); the password is
 * created (random, 24 bytes base64url) on first use and reused after, so the users block and
 * a running plugin agree across restarts of the host.
 */
export async function pluginCredentials(dir: string, service: string): Promise<PluginCredentials> {
  const user = pluginUserName(service);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, `${service}${PASSWORD_SUFFIX}`);
  let password = (await readFile(file, "utf8").catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return "";
    throw err;
  })).trim();
  if (!/^[A-Za-z0-9_-]{32,}$/.test(password)) {
    password = randomBytes(PASSWORD_BYTES).toString("base64url");
    await writeFile(file, `${password}\n`, { mode: 0o600 });
  }
  await chmod(file, 0o600);
  return { user, password, file };
}

const q = (s: string): string => JSON.stringify(s);

/** One entry of the server's `users = [...]` list for a plugin. */
export function pluginUserEntry(service: string, password: string): string {
  const p = pluginPermissions(service);
  return [
    `    # plugin ${q(service)}: serves only its own $SRV and ${ENDPOINT_SUBJECT_ROOT}.${service}.> subjects, publishes only replies`,
    `    {`,
    `      user: ${q(pluginUserName(service))}`,
    `      password: ${q(password)}`,
    `      permissions: {`,
    `        publish: { deny: [${p.publish.deny.map(q).join(", ")}] }`,
    `        subscribe: { allow: [${p.subscribe.allow.map(q).join(", ")}] }`,
    `        allow_responses: true`,
    `      }`,
    `    }`,
  ].join("\n");
}

/** What {@link generatePluginUsers} produced. */
export interface PluginUsers {
  /** Entries for the `users = [...]` list of the `authorization` block, one per plugin. */
  readonly entries: readonly string[];
  readonly credentials: ReadonlyMap<string, PluginCredentials>;
}

/** Credentials (created when missing, in `dir`) and users-list entries for each plugin service. */
export async function generatePluginUsers(options: { readonly services: readonly string[]; readonly dir: string }): Promise<PluginUsers> {
  if (!Array.isArray(options.services)) throw new InvalidOptionError("services", options.services, "a list of plugin names");
  const credentials = new Map<string, PluginCredentials>();
  const entries: string[] = [];
  for (const service of [...new Set(options.services)].sort()) {
    const c = await pluginCredentials(options.dir, service);
    credentials.set(service, c);
    entries.push(pluginUserEntry(service, c.password));
  }
  return { entries, credentials };
}
