import { chmod, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { generateNatsUsers, seededTenants } from "../gateway/index.js";
import { generatePluginUsers, PLUGIN_SERVICE_PATTERN } from "../plugins/index.js";
import { processAlive, startNatsServer } from "../streams/index.js";
import type { NatsServer } from "../streams/index.js";
import { AUTH_FILE, DEFAULT_NATS_PORT, pluginCredentialsDir, URL_FILE } from "./connection.js";
import { portFree } from "./ports.js";

/** Holds the embedded server's pid while it runs, beside its store. */
export const PID_FILE = "nats.pid";

/** Whether `pid` is a nats-server on `storeDir` (given with -sd, or in the configuration given with -c). */
async function servesStore(pid: number, storeDir: string): Promise<boolean> {
  const argv = (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).split("\0");
  if (!argv.some((a) => a.endsWith("nats-server"))) return false;
  const store = resolve(storeDir);
  if (argv.includes(store)) return true;
  const config = argv[argv.indexOf("-c") + 1];
  if (!argv.includes("-c") || !config) return false;
  return (await readFile(config, "utf8").catch(() => "")).includes(`store_dir: ${JSON.stringify(store)}`);
}

/**
 * Stops a nats-server that an earlier run left on this store (its `up` was killed with
 * SIGKILL, so it could not stop its child): two servers on one store would corrupt it.
 * Only a process whose command line is nats-server with this store is touched.
 */
async function stopLeftover(dataDir: string, storeDir: string, notice?: (line: string) => void): Promise<void> {
  const pidFile = join(dataDir, PID_FILE);
  const pid = Number.parseInt(await readFile(pidFile, "utf8").catch(() => ""), 10);
  if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid)) {
    await rm(pidFile, { force: true });
    return;
  }
  if (!(await servesStore(pid, storeDir))) {
    await rm(pidFile, { force: true });
    return;
  }
  notice?.(`stopping nats-server pid ${pid}, left running on ${storeDir} by an earlier run`);
  process.kill(pid, "SIGTERM");
  for (let i = 0; i < 100 && processAlive(pid); i++) await sleep(100);
  if (processAlive(pid)) process.kill(pid, "SIGKILL");
  for (let i = 0; i < 50 && processAlive(pid); i++) await sleep(100);
  await rm(pidFile, { force: true });
}

/** The managed plugins that have a password in `<dataDir>/plugin-credentials` (`flexcore up` keeps it to the configured ones). */
export async function credentialedPlugins(dataDir: string): Promise<string[]> {
  const files = await readdir(pluginCredentialsDir(dataDir)).catch(() => [] as string[]);
  return files.filter((f) => f.endsWith(".pass")).map((f) => f.slice(0, -".pass".length)).filter((n) => PLUGIN_SERVICE_PATTERN.test(n)).sort();
}

/**
 * Makes `<dataDir>/plugin-credentials` hold passwords of exactly `names` (created when
 * missing, reused otherwise; others deleted, so a plugin taken out of flexcore.yaml loses its
 * NATS user at the next start).
 */
export async function syncPluginCredentials(dataDir: string, names: readonly string[]): Promise<void> {
  const dir = pluginCredentialsDir(dataDir);
  for (const old of await credentialedPlugins(dataDir)) if (!names.includes(old)) await rm(join(dir, `${old}.pass`), { force: true });
  await generatePluginUsers({ services: names, dir });
}

/**
 * Writes `<dataDir>/nats-auth.conf`, the embedded server's users: FlexCore's service user,
 * one confined user per tenant that has a seed in `<dataDir>/nats-seeds` (`flexcore
 * nats-users`), and one per managed plugin with a password in `<dataDir>/plugin-credentials`
 * (its own subjects only, plugins/nats-users.ts). Seeds are created on first use and reused
 * after. Returns the file's path.
 */
export async function writeEmbeddedAuth(dataDir: string): Promise<string> {
  const seedsDir = join(dataDir, "nats-seeds");
  const plugins = await generatePluginUsers({ services: await credentialedPlugins(dataDir), dir: pluginCredentialsDir(dataDir) });
  const users = await generateNatsUsers({ tenants: await seededTenants(seedsDir), seedsDir, extraUsers: plugins.entries });
  const file = resolve(dataDir, AUTH_FILE);
  await writeFile(file, users.config, { mode: 0o600 });
  await chmod(file, 0o600);
  return file;
}

/**
 * Makes the embedded server of `dataDir`, if one runs, read its configuration again (so
 * users written by `flexcore nats-users` take effect). Returns whether one was signalled.
 */
export async function reloadEmbeddedServer(dataDir: string): Promise<boolean> {
  const pid = Number.parseInt(await readFile(join(dataDir, PID_FILE), "utf8").catch(() => ""), 10);
  if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid)) return false;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
  if (!cmdline.includes("nats-server")) return false;
  process.kill(pid, "SIGHUP");
  return true;
}

/**
 * Starts the embedded nats-server for `npm start`: config derived from `nats.conf`, store
 * under `<dataDir>/nats`, on 127.0.0.1:4222 or a free port when 4222 is taken, with
 * authorization on ({@link writeEmbeddedAuth}: anonymous clients are refused). Its URL is
 * written to `<dataDir>/nats.url` (removed on close) so the CLI finds it, its pid to
 * `<dataDir>/nats.pid`, so a server an earlier run left behind is stopped first.
 */
export async function startEmbeddedServer(
  dataDir: string,
  configFile: string,
  log?: (line: string) => void,
  notice?: (line: string) => void,
  /** How port 4222 is checked before it is asked for (a test makes the check lie). */
  isPortFree: (port: number, host: string) => Promise<boolean> = portFree,
): Promise<NatsServer> {
  const host = "127.0.0.1";
  await mkdir(dataDir, { recursive: true });
  const storeDir = join(dataDir, "nats");
  await stopLeftover(dataDir, storeDir, notice);
  const port = (await isPortFree(DEFAULT_NATS_PORT, host)) ? DEFAULT_NATS_PORT : -1;
  const authFile = await writeEmbeddedAuth(dataDir);
  // Detached: a Ctrl-C in the terminal reaches only `up`, which stops the server last (after
  // the processors' acknowledgements and the projections' commits), not at the same time.
  const start = (p: number): Promise<NatsServer> => startNatsServer({ storeDir, host, port: p, configFile, include: [authFile], detached: true, ...(log ? { log } : {}) });
  let server: NatsServer;
  try {
    server = await start(port);
  } catch (err) {
    // Free when checked, taken before the server bound it (another server starting at the
    // same moment): any free port then, as when it was taken from the start.
    if (port !== DEFAULT_NATS_PORT || !/address already in use/u.test((err as Error).message)) throw err;
    notice?.(`flexcore: port ${DEFAULT_NATS_PORT} was taken while the embedded nats-server started; using a free port`);
    server = await start(-1);
  }
  const urlFile = join(dataDir, URL_FILE);
  const pidFile = join(dataDir, PID_FILE);
  await writeFile(urlFile, `${server.url}\n`);
  if (server.pid !== undefined) await writeFile(pidFile, `${server.pid}\n`);
  const close = server.close;
  return Object.assign(server, {
    close: async () => {
      await rm(urlFile, { force: true });
      await rm(pidFile, { force: true });
      await close();
    },
  });
}
