import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { checkNatsServerVersion, createEventStore, ensureTopology, missingFeatures } from "../streams/index.js";
import { adoptPluginVersion, applyPluginVersions, checkPluginEndpoints, checkPluginProcessors, createPluginHost, createPluginLifecycle, flexcoreVersion, followPluginSwitches, followPluginVersions, generatePluginUsers, PluginLogBuffer, pluginServiceNames, readPluginSwitches, readPluginVersions, resolvePlugins, servePluginControl, serveUpgradeJoin, startPluginEndpoints, startPluginSupervisor, pluginInstanceKey, supervisedSpecs, tenantServiceName, upgradeJoinCoordinator, upgradePlugin } from "../plugins/index.js";
import type { PluginEndpoints, PluginHost, PluginSupervisor } from "../plugins/index.js";
import type { NatsServer } from "../streams/index.js";
import { loadConfig, resolveConfigPath, startProcessorRuntime } from "../processors/index.js";
import { startWorkflows, workflowsSection } from "../workflows/index.js";
import { createProjectionEngine, serveProjectionControl } from "../projections/index.js";
import { dataDir as defaultDataDir, embeddedConnectOptions, pluginCredentialsDir, pluginStoreDir, serviceConnectOptions, trustedKeysDir } from "./connection.js";
import { startEmbeddedServer, syncPluginCredentials } from "./embedded.js";
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
    ? { processors: [], runtime: sections.runtime(undefined, "runtime"), workflows: workflowsSection(undefined, "workflows"), gateway: sections.gateway(undefined, "gateway"), plugins: [], sinks: [], sources: [] }
    : await loadConfig(configFile, sections);
  // Every managed bundle is verified and installed, and every processor of a plugin's kind
  // checked against its manifest, before anything starts: a refused bundle starts nothing.
  let plugins = await resolvePlugins(config.plugins, { baseDir: dirname(configFile), storeDir: pluginStoreDir(dir), trustedKeysDir: trustedKeysDir(dir), file: configFile });
  checkPluginProcessors(config.processors, plugins, configFile);
  checkPluginEndpoints(config.sinks, config.sources, plugins, configFile);
  // Disabled ones too: enabling one later starts it without a restart of FlexCore.
  const managed = plugins.managed;
  // Each managed plugin has two NATS users, `<name>` and `<name>--b`: an upgrade starts the new version under the other one.
  // A `tenancy: tenant` plugin has both per tenant instead, `<name>_<tenant>` and `<name>--b_<tenant>`.
  const pluginServices = managed.flatMap((m) => pluginServiceNames(m.entry.name).filter((x): x is string => x !== undefined).flatMap((slot) => m.tenants !== undefined ? m.tenants.map((t) => tenantServiceName(slot, t)) : [slot]));
  for (const m of plugins.managed) log(`flexcore: plugin ${m.entry.name} ${m.manifest.version} verified (${m.installed.signer ? `signed by ${m.installed.signer}` : `unsigned, allowed: ${m.installed.unsignedReason ?? ""}`}), installed at ${m.installed.path}${m.entry.enabled ? "" : "; disabled"}`);
  let server: NatsServer | undefined;
  // Each managed plugin's NATS user (its own subjects only): in the embedded server's auth file.
  await syncPluginCredentials(dir, pluginServices);
  if (url && managed.length > 0) {
    const users = await generatePluginUsers({ services: pluginServices, dir: pluginCredentialsDir(dir) });
    const file = join(dir, "nats-plugin-users.conf");
    await writeFile(file, `${users.entries.join("\n")}\n`, { mode: 0o600 });
    log(`flexcore: the managed plugins' NATS users are in ${file}: add them to the users list of ${url}'s authorization block and reload it`);
  }
  if (!url) {
    server = await startEmbeddedServer(dir, join(root, "nats.conf"), undefined, areaLog("nats"));
    log(`flexcore: embedded nats-server ${server.version} at ${server.url} (store ${server.storeDir})`);
  }
  const natsUrl = url ?? server!.url;
  const components: Component[] = [];
  let nc: NatsConnection | undefined;
  // Whether the server answers now (the connection's last status): a stop without it does not
  // wait for acknowledgements and checkpoints that cannot arrive.
  let reachable = true;
  const close = async (): Promise<void> => {
    if (nc && !nc.isClosed() && !reachable) {
      // Every request in flight or to come fails at once instead of at its timeout: what was
      // not acknowledged is redelivered on the next start, as after a crash.
      upLogger.warn("NATS is unreachable: stopping without it; unacknowledged work is redelivered on the next start");
      await nc.close().catch(() => undefined);
    }
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
    const watched = nc;
    void (async () => {
      for await (const s of watched.status()) {
        if (s.type === "disconnect") reachable = false;
        else if (s.type === "reconnect") reachable = true;
      }
    })().catch(() => undefined);
    const version = nc.info?.version ?? "unknown";
    await checkNatsServerVersion(version, natsUrl);
    for (const gap of missingFeatures(version)) log(`flexcore: nats-server ${version}: ${gap}`);
    const replicas = process.env.FLEXCORE_REPLICAS ? Number(process.env.FLEXCORE_REPLICAS) : undefined;
    const report = await ensureTopology(nc, replicas === undefined ? {} : { replicas });
    log(`flexcore: topology: created [${report.created.join(", ")}], unchanged [${report.unchanged.join(", ")}]`);
    for (const d of report.drift) log(`flexcore: drift in ${d.resource}.${d.field}: expected ${JSON.stringify(d.expected)}, found ${JSON.stringify(d.actual)}`);
    // Plugins start before the processors that call them and stop after them, before NATS.
    let supervisor: PluginSupervisor | undefined;
    const endpointsRef: { current: PluginEndpoints | undefined } = { current: undefined };
    const pluginLogs = new PluginLogBuffer();
    const pluginLog = areaLog("plugins");
    // The stored switches and chosen versions (flexcore plugins enable|disable|upgrade) outrank flexcore.yaml.
    const storedSwitches = config.plugins.length > 0 ? await readPluginSwitches(nc) : new Map();
    if (managed.length > 0) plugins = await applyPluginVersions(plugins, await readPluginVersions(nc), { nc, storeDir: pluginStoreDir(dir), trustedKeysDir: trustedKeysDir(dir), log: (line, level) => pluginLog(line, level) });
    if (managed.length > 0) {
      const lifecycle = createPluginLifecycle({ store: await createEventStore(nc), log: areaLog("plugins") });
      supervisor = await startPluginSupervisor({
        nc,
        // A tenant's instance set runs when the plugin's switch and its own (`<name>_<tenant>`) are both on.
        plugins: plugins.managed.flatMap((m) => supervisedSpecs(m).map((spec) => ({ ...spec, enabled: (storedSwitches.get(m.entry.name)?.enabled ?? m.entry.enabled) && (storedSwitches.get(pluginInstanceKey(spec))?.enabled ?? true) }))),
        natsUrl,
        credentialsDir: pluginCredentialsDir(dir),
        // Each plugin's last lines stay in memory for `flexcore plugins logs`.
        log: (line, level) => {
          pluginLogs.capture(line);
          pluginLog(line, level);
        },
        lifecycle,
        ...(config.runtime.instanceId ? { instanceId: `${config.runtime.instanceId}` } : {}),
        leaseTtlMs: config.runtime.leaseTtlMs,
        hostVersion: flexcoreVersion(),
      });
      const running = supervisor;
      components.push({ name: "plugins", close: async () => {
        await running.stop();
        lifecycle.close();
      } });
      log(`flexcore: plugins: ${plugins.managed.map((m) => `${m.entry.name} ${m.manifest.version} (${m.spec.instances ?? 1} instance(s)${m.tenants ? ` per tenant: ${m.tenants.join(", ")}` : ""})`).join("; ")}`);
    }
    const pluginHost: PluginHost | undefined = config.plugins.length > 0 ? createPluginHost({ nc, plugins, ...(supervisor ? { supervisor } : {}) }) : undefined;
    if (pluginHost) {
      // enable/disable is stored in flex_state, so every instance agrees (and it outlives a restart).
      for (const [name, s] of storedSwitches) pluginHost.setEnabled(name, s.enabled);
      const switches = await followPluginSwitches(nc, pluginHost, (line) => log(line), supervisor);
      // Upgrades (flexcore plugins upgrade) switch every instance's callers to the chosen service.
      // Sinks and sources (started below) follow too.
      // The standby sets follow the choice too, so a failover launches the chosen version under the chosen service.
      const resolved = new Map(plugins.managed.map((m) => [m.entry.name, m]));
      const standby = supervisor;
      const versions = await followPluginVersions(nc, { setService: (name, service, manifest) => {
        pluginHost.setService(name, service, manifest);
        endpointsRef.current?.setService(name, service);
      } }, (line) => log(line), standby ? (name, record) => {
        const m = resolved.get(name);
        if (!m) return;
        adoptPluginVersion(standby, m, record, { nc: nc!, storeDir: pluginStoreDir(dir), trustedKeysDir: trustedKeysDir(dir), log: (line, level) => pluginLog(line, level) })
          .catch((err: unknown) => pluginLog(`flexcore: plugin ${name}: the standby sets cannot follow version ${record.version}: ${(err as Error).message}`, "error"));
      } : undefined);
      const running = supervisor;
      const host = pluginHost;
      const entries = new Map(plugins.managed.map((m) => [m.entry.name, m.entry]));
      const instance = config.runtime.instanceId ?? `${hostname()}-${process.pid}`;
      // A tenant plugin's sets may be spread over instances: the coordinator asks the others to join.
      const joiners = upgradeJoinCoordinator(nc, { instance, log: (line, level) => pluginLog(line, level) });
      const upgrade = running
        ? (name: string, bundle: string, by: string) => upgradePlugin(name, bundle, { nc: nc!, supervisor: running, host, storeDir: pluginStoreDir(dir), trustedKeysDir: trustedKeysDir(dir), allowUnsigned: entries.get(name)?.allowUnsigned ?? false, by, log: (line, level) => pluginLog(line, level), joiners })
        : undefined;
      const control = servePluginControl(nc, { host: pluginHost, ...(supervisor ? { supervisor } : {}), ...(upgrade ? { upgrade } : {}), logs: pluginLogs, instance });
      const join = running ? serveUpgradeJoin(nc, { supervisor: running, host, instance, storeDir: pluginStoreDir(dir), trustedKeysDir: trustedKeysDir(dir), allowUnsigned: (name) => entries.get(name)?.allowUnsigned ?? false, log: (line, level) => pluginLog(line, level) }) : undefined;
      components.push({ name: "plugin control", close: async () => {
        switches.stop();
        versions.stop();
        await control.close();
        await join?.close();
      } });
    }
    const processors = await startProcessorRuntime(nc, {
      ...(pluginHost ? { remote: pluginHost } : {}),
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
    let endpoints: PluginEndpoints | undefined;
    if (config.sinks.length > 0 || config.sources.length > 0) {
      endpoints = await startPluginEndpoints(nc, { sinks: config.sinks, sources: config.sources, plugins, instanceId: config.runtime.instanceId ?? `${hostname()}-${process.pid}`, leaseTtlMs: config.runtime.leaseTtlMs, log: pluginLog });
      const started = endpoints;
      endpointsRef.current = endpoints;
      // A switch between the host's start and now: the host knows it.
      for (const p of pluginHost?.plugins.values() ?? []) if (p.managed) endpoints.setService(p.name, p.service);
      components.push({ name: "sinks and sources", close: () => started.close() });
    }
    log(`flexcore: processors: ${config.processors.map((p) => `${p.name} (${p.kind} on ${p.subjects.join(", ")})`).join("; ") || "none"} from ${configFile}`);
    // Processor steps run on the runtime's pool, off the event loop (closed after the runner).
    const workflows = await startWorkflows(nc, config.workflows, { root, log: areaLog("workflows"), processors, ...(pluginHost ? { plugins: pluginHost } : {}) });
    components.push({ name: "workflows", close: () => workflows.close() });
    const ctx: UpContext = { nc, natsUrl, dataDir: dir, root, log, logger, config, processors, ...(pluginHost ? { plugins: pluginHost } : {}), ...(endpoints ? { pluginEndpoints: endpoints } : {}) };
    const projections = createProjectionEngine(nc, { dataDir: dir, log: areaLog("projections") });
    await projections.start();
    // The control has its own connection: a request must not queue behind the stream data a
    // rebuild reads on the main one (a refusal would reach the requester seconds late).
    const controlConnection = { ...connection, name: "flexcore-control" };
    const controlNc = await connect(server ? embeddedConnectOptions(natsUrl, dir, controlConnection) : serviceConnectOptions(natsUrl, controlConnection, dir));
    // Its membership key in `flex_leases` tells a rebuild requester to wait for this instance's copy.
    const control = await serveProjectionControl(controlNc, projections, { instance: config.runtime.instanceId ?? `${hostname()}-${process.pid}`, log: areaLog("projections") }).catch(async (err: unknown) => {
      await projections.close();
      await controlNc.close().catch(() => undefined);
      throw err;
    });
    components.push({ name: "projections", close: async () => {
      await control.close();
      await projections.close();
      await controlNc.close().catch(() => undefined);
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
