/**
 * One tenant's operating figures for the console's overview (`GET /v1/overview`): counts
 * from the streams filtered by the tenant's subjects, its dead letters, the plugins it may
 * see, and the deployment-wide lags that `/metrics` and `/ops/processors` already publish.
 */
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import type { JetStreamManager } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { processorsStatus } from "../processors/index.js";
import type { ProcessorStatus } from "../processors/index.js";
import { checkToken, createDeadLetters, STREAMS } from "../streams/index.js";
import type { ReadModels } from "./read-models.js";
import type { PluginsApi } from "./route-context.js";
import type { Overview } from "./api-types.js";

export type { Overview } from "./api-types.js";

/** Reads {@link Overview}s; readings of one tenant are shared for {@link OVERVIEW_CACHE_MS}, however many consoles ask. */
export interface OverviewReader {
  read(tenant: string): Promise<Overview>;
}

/** How long one tenant's reading is reused, in ms (consoles poll every 2 s). */
export const OVERVIEW_CACHE_MS = 1_000;
/**
 * How long an unused counting consumer lives on the server, in ms. Reading its info is not
 * activity to the server, so it is made again about this often while a console polls.
 */
const COUNTER_INACTIVE_MS = 60_000;

/**
 * Counts messages of a stream on a subject filter: the pending count of a pull consumer that
 * starts at the first message and is never pulled (no acks, in memory, one replica). One
 * consumer per filter is kept and its info read each time, so a poll costs a consumer info,
 * not a consumer creation (which a cluster's meta leader would have to agree on).
 */
function createCounter(jsm: JetStreamManager): (stream: string, filter: string) => Promise<number> {
  const names = new Map<string, { name: string; used: number }>();
  return async (stream, filter) => {
    const key = `${stream} ${filter}`;
    const known = names.get(key);
    for (const [k, v] of names) if (Date.now() - v.used > COUNTER_INACTIVE_MS) names.delete(k);
    if (known) {
      const info = await jsm.consumers.info(stream, known.name).catch(() => undefined);
      if (info) {
        known.used = Date.now();
        return info.num_pending;
      }
    }
    const info = await jsm.consumers.add(stream, {
      filter_subject: filter,
      ack_policy: AckPolicy.None,
      deliver_policy: DeliverPolicy.All,
      mem_storage: true,
      num_replicas: 1,
      inactive_threshold: nanos(COUNTER_INACTIVE_MS),
    });
    names.set(key, { name: info.name, used: Date.now() });
    return info.num_pending;
  };
}

export interface OverviewSources {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly readModels: ReadModels | undefined;
  readonly plugins: PluginsApi | undefined;
}

export function createOverviewReader(sources: OverviewSources): OverviewReader {
  const { nc, jsm, readModels, plugins } = sources;
  const dlq = createDeadLetters(nc);
  const count = createCounter(jsm);
  const cache = new Map<string, { at: number; value: Promise<Overview> }>();
  let status: { at: number; value: Promise<ProcessorStatus[]> } | undefined;
  const processors = (): Promise<ProcessorStatus[]> => {
    if (!status || Date.now() - status.at > OVERVIEW_CACHE_MS) {
      const value = processorsStatus(nc);
      status = { at: Date.now(), value };
      value.catch(() => (status = undefined));
    }
    return status.value;
  };

  const readNow = async (tenant: string): Promise<Overview> => {
    // The tenant comes from a verified token, but it becomes part of a subject filter here: a wildcard must never reach it.
    checkToken("tenant", tenant);
    const [events, derived, procs, lags, dead] = await Promise.all([
      count(STREAMS.events, `evt.${tenant}.>`),
      count(STREAMS.derived, `drv.${tenant}.>`),
      processors(),
      readModels?.lag ? Promise.resolve(readModels.lag()) : Promise.resolve([]),
      dlq.list(tenant),
    ]);
    const outputs = await Promise.all(procs.map((p) => count(STREAMS.derived, `drv.${tenant}.${p.processor}.>`)));
    return {
      tenant,
      at: new Date().toISOString(),
      events,
      derived,
      processors: procs.map((p, i) => ({ processor: p.processor, outputs: outputs[i]!, lag: p.lag })),
      projections: lags.map(({ name, lag }) => ({ name, lag })),
      deadLetters: dead.map(({ source, count: n, redrivePending }) => ({ source, count: n, redrivePending })),
      plugins: plugins
        ? plugins.list().filter((p) => p.tenant === null || p.tenant === tenant).map(({ name, state, enabled, restarts }) => ({ name, state, enabled, restarts }))
        : null,
    };
  };

  return {
    read(tenant) {
      const hit = cache.get(tenant);
      if (hit && Date.now() - hit.at <= OVERVIEW_CACHE_MS) return hit.value;
      const value = readNow(tenant);
      cache.set(tenant, { at: Date.now(), value });
      value.catch(() => cache.delete(tenant));
      // Old tenants' entries go, so the map holds only the consoles open now.
      for (const [t, e] of cache) if (Date.now() - e.at > OVERVIEW_CACHE_MS * 10) cache.delete(t);
      return value;
    },
  };
}
