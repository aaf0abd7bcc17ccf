import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { deadLetterHeaders, encodeEvent } from "../streams/index.js";
import type { Gateway, Role } from "../gateway/index.js";

/** What {@link seedTenant} stores for one tenant. */
export interface TenantSeed {
  readonly events: number;
  readonly derived?: number;
  /** Dead letters per source. */
  readonly deadLetters?: Readonly<Record<string, number>>;
}

/**
 * Stores a tenant's events, processor outputs and dead letters straight into the streams
 * (as the processors would), so overview figures have something to count.
 */
export async function seedTenant(nc: NatsConnection, tenant: string, seed: TenantSeed): Promise<void> {
  const js = jetstream(nc);
  const acks: Array<Promise<unknown>> = [];
  for (let i = 0; i < seed.events; i++) {
    const e = encodeEvent({ id: `${tenant}-e${i}`, type: "Reading", data: { i } });
    acks.push(js.publish(`evt.${tenant}.sensor.s${i % 7}`, e.data, { headers: e.headers }));
  }
  for (let i = 0; i < (seed.derived ?? 0); i++) {
    const e = encodeEvent({ id: `${tenant}-d${i}`, type: "AnomalyScored", data: { score: i } });
    acks.push(js.publish(`drv.${tenant}.anomaly.s${i % 7}`, e.data, { headers: e.headers }));
  }
  for (const [source, n] of Object.entries(seed.deadLetters ?? {})) {
    for (let i = 0; i < n; i++) {
      const headers = deadLetterHeaders({ id: `${tenant}-${source}-${i}`, type: "ProcessingFailed", sourceSeq: i + 1, sourceSubject: `evt.${tenant}.sensor.s0`, reason: `${source} failed on ${i}` });
      acks.push(js.publish(`dlq.${tenant}.${source}`, new TextEncoder().encode(JSON.stringify({ i })), { headers }));
    }
  }
  await Promise.all(acks);
}

/** An access token of `tenant` with `roles`, issued by the gateway's own issuer. */
export async function tokenFor(gw: Gateway, tenant: string, roles: readonly Role[]): Promise<string> {
  return (await gw.issuer!.issueAccess({ tenant, subject: roles.join("+"), roles: [...roles] })).token;
}
