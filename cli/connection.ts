import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";

/** Where `npm start` keeps its state. */
export const DEFAULT_DATA_DIR = "data";
/** File in the data directory holding the embedded server's URL. */
export const URL_FILE = "nats.url";
/** Port the embedded server prefers. */
export const DEFAULT_NATS_PORT = 4222;

/** The data directory: `FLEXCORE_DATA` or `./data`. */
export function dataDir(): string {
  return resolve(process.env.FLEXCORE_DATA ?? DEFAULT_DATA_DIR);
}

/**
 * The gateway's key directory: `FLEXCORE_GATEWAY_KEYS_DIR` (e.g. a volume shared by several
 * instances, so each accepts the others' tokens), else `<data>/gateway/keys`.
 */
export function gatewayKeysDir(): string {
  const shared = process.env.FLEXCORE_GATEWAY_KEYS_DIR;
  return resolve(shared ? shared : join(dataDir(), "gateway", "keys"));
}

/** The server to talk to: `NATS_URL`, else the embedded server's recorded URL, else localhost:4222. */
export async function resolveNatsUrl(explicit?: string): Promise<string> {
  if (explicit) return explicit;
  if (process.env.NATS_URL) return process.env.NATS_URL;
  try {
    const recorded = (await readFile(join(dataDir(), URL_FILE), "utf8")).trim();
    if (recorded) return recorded;
  } catch {
    // no embedded server recorded
  }
  return `nats://127.0.0.1:${DEFAULT_NATS_PORT}`;
}

/** Connects a CLI command, with a clear message when no server answers. */
export async function connectCli(url?: string, name = "flexcore-cli"): Promise<NatsConnection> {
  const servers = await resolveNatsUrl(url);
  try {
    return await connect({ servers, name, maxReconnectAttempts: 10, reconnectTimeWait: 500 });
  } catch (err) {
    throw new Error(`Cannot reach nats-server at ${servers} (${(err as Error).message}). Start FlexCore with \`npm start\` or set NATS_URL.`, { cause: err });
  }
}
