import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createGateway } from "../gateway/index.js";
import type { Gateway, GatewayOptions } from "../gateway/index.js";
import { createProjectionEngine, serveProjectionControl } from "../projections/index.js";
import type { Projection, ProjectionControl, ProjectionEngine } from "../projections/index.js";
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

/** A {@link TestGateway} that serves a real projection engine's read models. */
export interface TestProjectionGateway extends TestGateway {
  /** The engine (data under `<dir>/projections`), started, closed with the gateway. */
  readonly engine: ProjectionEngine;
  /** The engine's rebuild control on NATS, when asked for. */
  readonly control: ProjectionControl | undefined;
}

/** What {@link startProjectionGateway} sets up besides the gateway. */
export interface TestProjectionGatewaySetup {
  /** Serve the engine's rebuild control (`serveProjectionControl`) too. @default false */
  readonly control?: boolean;
  /** Stores events before the engine starts (so it catches up on them), e.g. with `seedTenant`. */
  readonly seed?: (nats: TestNats) => Promise<void>;
}

/**
 * Starts nats-server (topology provisioned), runs `setup.seed`, starts a projection engine with
 * `projections` and gives it to a gateway on port 0 (route reports and workflows off). `close`
 * stops the gateway, the control, the engine and the server and deletes the data directory.
 */
export async function startProjectionGateway(projections: readonly Projection[], setup: TestProjectionGatewaySetup = {}): Promise<TestProjectionGateway> {
  const nats = await startTestNats();
  const dir = await mkdtemp(join(tmpdir(), "flexcore-test-gw-"));
  let gw: Gateway | undefined;
  let engine: ProjectionEngine | undefined;
  let control: ProjectionControl | undefined;
  const close = async (): Promise<void> => {
    await gw?.close();
    await control?.close();
    await engine?.close();
    await nats.close();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await ensureTopology(nats.nc);
    await setup.seed?.(nats);
    engine = createProjectionEngine(nats.nc, { dataDir: join(dir, "projections"), projections, log: () => undefined });
    await engine.start();
    if (setup.control) control = await serveProjectionControl(nats.nc, engine);
    gw = await createGateway({ nc: nats.nc, dataDir: dir, port: 0, metricsIntervalMs: 0, workflows: false, projections: engine });
    const url = await gw.listen();
    return { nats, gw, url, dir, engine, control, close, [Symbol.asyncDispose]: close };
  } catch (err) {
    await close();
    throw err;
  }
}
