import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createGateway } from "../gateway/index.js";
import type { Gateway, GatewayOptions } from "../gateway/index.js";
import { ensureTopology } from "../streams/index.js";
import { startTestNats } from "./nats-server.js";
import type { TestNats } from "./nats-server.js";

/** A real gateway listening on a free port, over a real nats-server with authorization on. */
export interface TestGateway extends AsyncDisposable {
  readonly nats: TestNats;
  readonly gw: Gateway;
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** The gateway's data directory (keys, projections), deleted on close. */
  readonly dir: string;
  close(): Promise<void>;
}

/**
 * Starts nats-server (topology provisioned), a gateway on port 0 with `options` (route
 * reports and workflows off unless given) and listens. `close` stops both and deletes the
 * data directory.
 */
export async function startTestGateway(options: Omit<Partial<GatewayOptions>, "nc" | "dataDir" | "port"> = {}): Promise<TestGateway> {
  const nats = await startTestNats();
  const dir = await mkdtemp(join(tmpdir(), "flexcore-test-gw-"));
  let gw: Gateway | undefined;
  const close = async (): Promise<void> => {
    await gw?.close();
    await nats.close();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await ensureTopology(nats.nc);
    gw = await createGateway({ metricsIntervalMs: 0, workflows: false, ...options, nc: nats.nc, dataDir: dir, port: 0 });
    const url = await gw.listen();
    return { nats, gw, url, dir, close, [Symbol.asyncDispose]: close };
  } catch (err) {
    await close();
    throw err;
  }
}
