import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { processAlive, startNatsServer } from "../streams/index.js";
import type { NatsServer } from "../streams/index.js";
import { DEFAULT_NATS_PORT, URL_FILE } from "./connection.js";
import { portFree } from "./ports.js";

/** Holds the embedded server's pid while it runs, beside its store. */
export const PID_FILE = "nats.pid";

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
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
  if (!cmdline.includes("nats-server") || !cmdline.includes(resolve(storeDir))) {
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

/**
 * Starts the embedded nats-server for `npm start`: config derived from `nats.conf`, store
 * under `<dataDir>/nats`, on 127.0.0.1:4222 or a free port when 4222 is taken. Its URL is
 * written to `<dataDir>/nats.url` (removed on close) so the CLI finds it, its pid to
 * `<dataDir>/nats.pid`, so a server an earlier run left behind is stopped first.
 */
export async function startEmbeddedServer(
  dataDir: string,
  configFile: string,
  log?: (line: string) => void,
  notice?: (line: string) => void,
): Promise<NatsServer> {
  const host = "127.0.0.1";
  await mkdir(dataDir, { recursive: true });
  const storeDir = join(dataDir, "nats");
  await stopLeftover(dataDir, storeDir, notice);
  const port = (await portFree(DEFAULT_NATS_PORT, host)) ? DEFAULT_NATS_PORT : -1;
  const server = await startNatsServer({ storeDir, host, port, configFile, ...(log ? { log } : {}) });
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
