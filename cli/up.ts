import { existsSync } from "node:fs";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { checkNatsServerVersion, ensureTopology, missingFeatures } from "../streams/index.js";
import type { NatsServer } from "../streams/index.js";
import { loadConfig, resolveConfigPath, startProcessorRuntime } from "../processors/index.js";
import { startWorkflows, workflowsSection } from "../workflows/index.js";
import { createProjectionEngine, serveProjectionControl } from "../projections/index.js";
import { dataDir as defaultDataDir, embeddedConnectOptions, serviceConnectOptions } from "./connection.js";
import { startEmbeddedServer } from "./embedded.js";
import { startGateway } from "./gateway.js";
import { createRootLogger, lineLogger } from "./logger.js";
import { projectRoot } from "./paths.js";

import { configSections } from "./pipeline-config.js";
import type { Component, PipelineConfig, UpContext } from "./pipeline-config.js";

export { configSections };
export type { Component, PipelineConfig, UpContext };

export interface UpOptions {
  /** Connect here instead of starting an embedded server. @default $NATS_URL */
  readonly natsUrl?: string;
  /** @default $FLEXCORE_DATA or ./data */
  readonly dataDir?: string;
  /** Pipeline configuration file. @default $FLEXCORE_CONFIG or ./flexcore.yaml */
  readonly configFile?: string;
  /** The root logger. @default {@link createRootLogger}: JSON on standard error, pretty on a TTY, `LOG_LEVEL` */
  readonly logger?: Logger;
}

/** A running pipeline. */
export interface Pipeline extends AsyncDisposable {
  readonly natsUrl: string;
  readonly server: NatsServer | undefined;
  readonly components: readonly Component[];
  readonly logger: Logger;
  close(): Promise<void>;
}

/**
 * Starts the whole pipeline on one machine: the embedded nats-server when no URL is
 * given, the topology, then each area's components.
 */
export async function startPipeline(options: UpOptions = {}): Promise<Pipeline> {
  const logger = options.logger ?? createRootLogger();
  const areaLog = (area: string): ((line: string, level?: "warn" | "error") => void) => lineLogger(logger.child({ area }));
  const upLogger = logger.child({ area: "up" });
  const log = lineLogger(upLogger);
  const root = projectRoot();
  const dir = options.dataDir ?? defaultDataDir();
  const url = options.natsUrl || process.env.NATS_URL || undefined;
  // Validate the configuration before starting anything, so a mistake starts nothing.
  const configFile = resolveConfigPath(root, options.configFile);
  const explicitConfig = options.configFile !== undefined || process.env.FLEXCORE_CONFIG !== undefined;
  const sections = configSections(root);
  const config: PipelineConfig = !explicitConfig && !existsSync(configFile)
    ? { processors: [], runtime: sections.runtime(undefined, "runtime"), workflows: workflowsSection(undefined, "workflows"), gateway: sections.gateway(undefined, "gateway") }
    : await loadConfig(configFile, sections);
  let server: NatsServer | undefined;
  if (!url) {
    server = await startEmbeddedServer(dir, join(root, "nats.conf"), undefined, areaLog("nats"));
    log(`flexcore: embedded nats-server ${server.version} at ${server.url} (store ${server.storeDir})`);
  }
  const natsUrl = url ?? server!.url;
  const components: Component[] = [];
  let nc: NatsConnection | undefined;
  const close = async (): Promise<void> => {
    for (const c of components.splice(0).reverse()) {
      await c.close().then(() => log(`flexcore: stopped ${c.name}`), (err: unknown) => upLogger.warn({ err, component: c.name }, `stopping ${c.name} failed`));
    }
    if (nc && !nc.isClosed()) await nc.drain().catch(() => undefined);
    if (server) {
      await server.close();
      log("flexcore: embedded nats-server stopped");
    }
  };
  try {
    const connection = { name: "flexcore", maxReconnectAttempts: -1, reconnectTimeWait: 250 };
    nc = await connect(server ? embeddedConnectOptions(natsUrl, dir, connection) : serviceConnectOptions(natsUrl, connection, dir));
    const version = nc.info?.version ?? "unknown";
    await checkNatsServerVersion(version, natsUrl);
    for (const gap of missingFeatures(version)) log(`flexcore: nats-server ${version}: ${gap}`);
    const replicas = process.env.FLEXCORE_REPLICAS ? Number(process.env.FLEXCORE_REPLICAS) : undefined;
    const report = await ensureTopology(nc, replicas === undefined ? {} : { replicas });
    log(`flexcore: topology: created [${report.created.join(", ")}], unchanged [${report.unchanged.join(", ")}]`);
    for (const d of report.drift) log(`flexcore: drift in ${d.resource}.${d.field}: expected ${JSON.stringify(d.expected)}, found ${JSON.stringify(d.actual)}`);
    const processors = await startProcessorRuntime(nc, {
      processors: config.processors,
      threads: config.runtime.threads,
      workerMemoryMb: config.runtime.workerMemoryMb,
      metricsIntervalMs: config.runtime.metricsIntervalMs,
      maxKeysInMemory: config.runtime.maxKeysInMemory,
      ...(config.runtime.instanceId ? { instanceId: config.runtime.instanceId } : {}),
      leaseTtlMs: config.runtime.leaseTtlMs,
      log: areaLog("processors"),
    });
    components.push({ name: "processors", close: () => processors.close() });
    log(`flexcore: processors: ${config.processors.map((p) => `${p.name} (${p.kind} on ${p.subjects.join(", ")})`).join("; ") || "none"} from ${configFile}`);
    // Processor steps run on the runtime's pool, off the event loop (closed after the runner).
    const workflows = await startWorkflows(nc, config.workflows, { root, log: areaLog("workflows"), processors });
    components.push({ name: "workflows", close: () => workflows.close() });
    const ctx: UpContext = { nc, natsUrl, dataDir: dir, root, log, logger, config, processors };
    const projections = createProjectionEngine(nc, { dataDir: dir, log: areaLog("projections") });
    await projections.start();
    const control = serveProjectionControl(nc, projections);
    components.push({ name: "projections", close: async () => {
      await control.close();
      await projections.close();
    } });
    log(`flexcore: projections: ${projections.list().map((p) => p.name).join(", ")} in ${join(dir, "projections")}`);
    // The gateway starts last: it serves what the components above provide.
    components.push(await startGateway(ctx, { projections, ...(workflows.runner ? { workflows: workflows.runner } : {}) }));
  } catch (err) {
    await close();
    throw err;
  }
  return { natsUrl, server, components, logger, close, [Symbol.asyncDispose]: close };
}
