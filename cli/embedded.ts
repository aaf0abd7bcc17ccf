import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { startNatsServer } from "../streams/index.js";
import type { NatsServer } from "../streams/index.js";
import { DEFAULT_NATS_PORT, URL_FILE } from "./connection.js";
import { portFree } from "./ports.js";



/**
 * Starts the embedded nats-server for `npm start`: config derived from `nats.conf`, store
 * under `<dataDir>/nats`, on 127.0.0.1:4222 or a free port when 4222 is taken. Its URL is
 * written to `<dataDir>/nats.url` (removed on close) so the CLI finds it.
 */
export async function startEmbeddedServer(dataDir: string, configFile: string, log?: (line: string) => void): Promise<NatsServer> {
  const host = "127.0.0.1";
  await mkdir(dataDir, { recursive: true });
  const port = (await portFree(DEFAULT_NATS_PORT, host)) ? DEFAULT_NATS_PORT : -1;
  const server = await startNatsServer({ storeDir: join(dataDir, "nats"), host, port, configFile, ...(log ? { log } : {}) });
  const urlFile = join(dataDir, URL_FILE);
  await writeFile(urlFile, `${server.url}\n`);
  const close = server.close;
  return Object.assign(server, {
    close: async () => {
      await rm(urlFile, { force: true });
      await close();
    },
  });
}
