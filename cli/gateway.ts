import { createGateway, externalIssuerOptions } from "../gateway/index.js";
import type { Gateway } from "../gateway/index.js";
import type { ProjectionEngine } from "../projections/index.js";
import type { ProcessorRuntime } from "../processors/index.js";
import { createWorkflowClient } from "../workflows/index.js";
import { setPluginEnabled } from "../plugins/index.js";
import type { WorkflowRunner } from "../workflows/index.js";
import { InvalidOptionError } from "../streams/index.js";
import { gatewayKeysDir } from "./connection.js";
import { portFree } from "./ports.js";
import type { Component, UpContext } from "./pipeline-config.js";

/** Port of the gateway when FLEXCORE_GATEWAY_PORT is unset. */
export const DEFAULT_GATEWAY_PORT = 8080;


/** What `flexcore up` hands the gateway besides the shared context. */
export interface GatewayParts {
  /** The running projection engine, for `/v1/projections`. */
  readonly projections?: ProjectionEngine;
  /** The workflow runner (absent when `workflows.runner` is off), for `/metrics` and `/readyz`. */
  readonly workflows?: WorkflowRunner;
}

/**
 * Starts the HTTP gateway of `flexcore up`: FLEXCORE_GATEWAY_HOST (default 127.0.0.1),
 * FLEXCORE_GATEWAY_PORT (default 8080, or a free port when 8080 is taken and the variable
 * is unset, as the embedded NATS server does with 4222), signing keys from FLEXCORE_GATEWAY_KEY_FILES
 * (comma-separated PEM files, first signs), or the key directory FLEXCORE_GATEWAY_KEYS_DIR
 * (default `<data>/gateway/keys`, generated on first start); instances that share the files or
 * the directory accept each other's tokens. Processor consumer lag goes to `/metrics`.
 * `gateway.external_issuer` of `flexcore.yaml` (or the `FLEXCORE_EXTERNAL_*` variables)
 * makes it accept an external issuer's tokens instead; `gateway.auth_sweep_interval` sets
 * how often expired sessions and revocations leave `flex_auth`.
 */
export async function startGateway(ctx: Omit<UpContext, "processors"> & { readonly processors?: ProcessorRuntime }, parts: GatewayParts = {}): Promise<Component & { readonly gateway: Gateway }> {
  const portText = process.env.FLEXCORE_GATEWAY_PORT;
  let port = portText ? Number(portText) : DEFAULT_GATEWAY_PORT;
  if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new InvalidOptionError("FLEXCORE_GATEWAY_PORT", portText, "a port number from 0 to 65535");
  const host = process.env.FLEXCORE_GATEWAY_HOST || "127.0.0.1";
  if (!portText && !(await portFree(port, host))) port = 0;
  const keyFiles = process.env.FLEXCORE_GATEWAY_KEY_FILES?.split(",").map((f) => f.trim()).filter(Boolean);
  const processors = ctx.processors;
  const section = ctx.config.gateway;
  const external = section?.externalIssuer ? externalIssuerOptions(section.externalIssuer) : undefined;
  const logger = ctx.logger.child({ area: "gateway" });
  // With plugins, the API checks a definition's `plugin` steps against them before storing it.
  const workflowClient = ctx.plugins ? await createWorkflowClient(ctx.nc, { plugins: ctx.plugins }) : undefined;
  const pluginHost = ctx.plugins;
  const gateway = await createGateway({
    ...(workflowClient ? { workflows: workflowClient } : {}),
    ...(pluginHost ? { plugins: {
      list: () => pluginHost.metrics().flatMap((m) => {
        const p = pluginHost.plugins.get(m.plugin)!;
        // A tenancy: tenant plugin: one view per tenant instance set, so each tenant sees its own and never another's.
        if (p.tenants !== undefined) {
          return pluginHost.tenantInstances(m.plugin).map((i) => ({ name: m.plugin, version: p.manifest?.version ?? null, tenant: i.tenant, managed: p.managed, enabled: i.enabled, state: i.state, restarts: i.restarts, instance: i.service }));
        }
        return [{ name: m.plugin, version: p.manifest?.version ?? null, tenant: p.tenant ?? null, managed: p.managed, enabled: m.enabled, state: m.state, restarts: m.restarts }];
      }),
      setEnabled: async (name: string, enabled: boolean, by: string) => {
        await setPluginEnabled(ctx.nc, name, enabled, by);
        // This instance at once; the others (and this one again) through the watch of flex_state.
        pluginHost.setEnabled(name, enabled);
      },
    } } : {}),
    nc: ctx.nc,
    logger,
    dataDir: ctx.dataDir,
    host,
    port,
    ...(external ? { external } : { keys: keyFiles && keyFiles.length > 0 ? { keyFiles } : { dir: gatewayKeysDir() } }),
    ...(section ? { authSweepIntervalMs: section.authSweepIntervalMs } : {}),
    ...(parts.projections ? { projections: parts.projections } : {}),
    ...(processors ? { lagSources: { consumers: () => processors.lag() } } : {}),
    metricSources: {
      ...(processors ? { processors: () => processors.metrics() } : {}),
      ...(processors ? { publishers: () => ({ processors: processors.publisherStats }) } : {}),
      ...(parts.workflows ? { workflows: () => ({ active: parts.workflows!.active, ...parts.workflows!.stats }) } : {}),
      ...(ctx.plugins ? { plugins: () => ctx.plugins!.metrics() } : {}),
      ...(ctx.pluginEndpoints ? { pluginEndpoints: () => ctx.pluginEndpoints!.metrics() } : {}),
    },
    readiness: {
      ...(processors ? { processors: () => ({ ok: processors.running, detail: { running: processors.processors.length, owned: processors.metrics().filter((m) => m.owner).length } }) } : {}),
      // Ready when no managed plugin this instance supervises is failed (crash loop, protocol) or still starting.
      ...(ctx.plugins ? { plugins: () => {
        const all = ctx.plugins!.metrics();
        const notReady = all.filter((p) => p.state === "failed" || p.state === "starting");
        return { ok: notReady.length === 0, detail: Object.fromEntries(all.map((p) => [p.plugin, p.state])) };
      } } : {}),
      workflows: () => (parts.workflows ? { ok: parts.workflows.running, detail: { active: parts.workflows.active } } : { ok: true, detail: "runner off (workflows.runner: false)" }),
    },
  });
  const url = await gateway.listen();
  if (external) logger.info(`gateway accepts tokens of ${external.issuer} (audience ${external.audience}, keys from ${external.jwksUrl ?? section!.externalIssuer!.publicKeyFile}); sign-in and refresh are off`);
  logger.info(`gateway at ${url} (OpenAPI ${url}/docs; projections ${parts.projections ? "served" : "not running: /v1/projections answers 503"})`);
  return { name: "gateway", gateway, close: async () => {
    await gateway.close();
    await workflowClient?.close();
  } };
}
