import { processorsStatus } from "../../processors/index.js";
import type { ProcessorStatus } from "../../processors/index.js";
import { STREAMS } from "../../streams/index.js";
import type { RouteContext } from "../route-context.js";

// Stream info is fetched at most this often for /readyz.
const TOPOLOGY_CHECK_MS = 2_000;
// Processor status (partition owners, lag) is read from NATS at most this often.
const PROCESSORS_STATUS_MS = 1_000;

/** `/healthz`, `/readyz`, `/metrics`, `/ops/processors`, `/.well-known/jwks.json`: public. */
export function registerHealthRoutes(ctx: RouteContext): void {
  const { app, nc, jsm, keys, metrics, readModels, limits, readiness } = ctx;
  let topologyCheckedAt = 0;
  let topologyOk = false;

  app.get("/healthz", { schema: { tags: ["ops"], summary: "Liveness: the process answers" } }, async () => ({ status: "ok" }));

  app.get("/readyz", { schema: { tags: ["ops"], summary: "Readiness: NATS connected, topology present, projection lag under the bound, processors and workflow runner running" } }, async (_req, reply) => {
    const checks: Record<string, { ok: boolean; detail?: unknown }> = {};
    checks.nats = { ok: !nc.isClosed() && !(nc as { isDraining?: () => boolean }).isDraining?.(), detail: nc.getServer() };
    if (Date.now() - topologyCheckedAt > TOPOLOGY_CHECK_MS || !topologyOk) {
      topologyOk = await Promise.all(Object.values(STREAMS).map((s) => jsm.streams.info(s))).then(() => true, () => false);
      topologyCheckedAt = Date.now();
    }
    checks.topology = { ok: topologyOk };
    if (readModels?.lag) {
      const lags = await Promise.resolve(readModels.lag()).catch(() => undefined);
      const worst = lags?.reduce((m, l) => Math.max(m, l.lag), 0);
      checks.projections = { ok: worst !== undefined && worst <= limits.maxReadyLag, detail: { maxLag: worst ?? null, bound: limits.maxReadyLag } };
    }
    for (const [name, check] of Object.entries(readiness)) {
      checks[name] = await Promise.resolve().then(check).then((c) => ({ ok: c.ok === true, ...(c.detail === undefined ? {} : { detail: c.detail }) }), (err: unknown) => ({ ok: false, detail: (err as Error)?.message ?? String(err) }));
    }
    const ready = Object.values(checks).every((c) => c.ok);
    if (ready) return { ready, checks };
    return reply.code(503).send({ error: { code: "FLEX_NOT_READY", message: `Not ready: ${Object.entries(checks).filter(([, c]) => !c.ok).map(([k]) => k).join(", ")}`, details: { checks } } });
  });

  app.get("/metrics", { schema: { tags: ["ops"], summary: "Prometheus metrics" } }, async (_req, reply) => {
    const text = await metrics.registry.metrics();
    return reply.type(metrics.registry.contentType).send(text);
  });

  // What `flexcore processors status --json` prints, for operators (the same facts /metrics
  // exports: processors, partition owners, lag, throughput; no tenant's data). Read from NATS
  // at most once a second, however often it is asked.
  let status: { at: number; value: Promise<ProcessorStatus[]> } | undefined;
  app.get("/ops/processors", { schema: { tags: ["ops"], summary: "Processors: which instance holds which partitions, their lag and throughput (as `flexcore processors status --json`)" } }, async () => {
    if (!status || Date.now() - status.at > PROCESSORS_STATUS_MS) {
      const value = processorsStatus(nc);
      status = { at: Date.now(), value };
      value.catch(() => (status = undefined));
    }
    return { processors: await status.value };
  });

  app.get("/.well-known/jwks.json", { schema: { tags: ["auth"], summary: "Public keys that verify FlexCore tokens (JWK Set)" } }, async (_req, reply) => {
    void reply.header("cache-control", "public, max-age=300");
    return keys ? keys.jwks() : { keys: [] };
  });
}
