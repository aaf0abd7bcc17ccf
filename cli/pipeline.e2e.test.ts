import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createTokenIssuer, openKeyStore } from "../gateway/index.js";
import { ensureTopology } from "../streams/index.js";
import { startTestCluster } from "../test/nats-cluster.js";
import { startUp } from "../test/flexcore-up.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";

// The whole pipeline under `flexcore up`, on one server and on a 3-node cluster with R3
// streams: HTTP batch ingest → an anomaly processor → derived events → the projections →
// a gateway query.
const KEYS = 4;
const PER_KEY = 100;
/** Per-key indexes of the spikes: past the anomaly detector's warm-up, far apart. */
const SPIKES = [50, 90];

interface Broker {
  /** NATS_URL and the service user's credentials for `up` (one place to adapt). */
  readonly env: Readonly<Record<string, string>>;
  close(): Promise<void>;
}

const brokers: Record<string, () => Promise<Broker>> = {
  "one server": async () => {
    const nats = await startTestNats();
    await ensureTopology(nats.nc);
    return { env: nats.env, close: () => nats.close() };
  },
  "a 3-node cluster (R3)": async () => {
    const cluster = await startTestCluster();
    await ensureTopology(cluster.nc, { replicas: 3 });
    return { env: { ...cluster.env, FLEXCORE_REPLICAS: "3" }, close: () => cluster.close() };
  },
};

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-pipeline-"));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe.each(Object.keys(brokers))("the pipeline under flexcore up on %s", (kind) => {
  let broker: Broker | undefined;
  beforeAll(async () => {
    broker = await brokers[kind]!();
  }, 90_000);
  afterAll(async () => {
    await broker?.close();
  });

  it("batch ingest over HTTP → processor → derived events → projections → gateway query; another tenant sees none of it", async () => {
    const processor = uniqueName("anom");
    const config = join(dir, `${processor}.yaml`);
    await writeFile(config, `
runtime:
  threads: 1
processors:
  - name: ${processor}
    kind: anomaly
    subjects: ["evt.*.sensor.*"]
    partitions: 2
    batch_size: 64
    options: { method: zscore, field: value, window: 30, threshold: 4, emit: flagged }
workflows:
  runner: false
`);
    const keysDir = join(dir, uniqueName("keys"));
    await using up = await startUp({ config, env: { ...broker!.env, FLEXCORE_DATA: join(dir, uniqueName("data")), FLEXCORE_GATEWAY_PORT: "0", FLEXCORE_GATEWAY_KEYS_DIR: keysDir } });
    const issuer = createTokenIssuer(await openKeyStore({ dir: keysDir }));
    const tenant = uniqueName("acme");
    const other = uniqueName("other");
    const writer = (await issuer.issueAccess({ tenant, subject: "ingest", roles: ["writer", "reader"], ttlSeconds: 600 })).token;
    const stranger = (await issuer.issueAccess({ tenant: other, subject: "nosy", roles: ["writer", "reader"], ttlSeconds: 600 })).token;
    const call = async (token: string, path: string, body?: unknown) => {
      const r = await fetch(`${up.gatewayUrl}${path}`, {
        method: body === undefined ? "GET" : "POST",
        headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      return { status: r.status, body: (await r.json()) as any };
    };

    const events = Array.from({ length: KEYS * PER_KEY }, (_, i) => {
      const k = i % KEYS;
      const n = Math.floor(i / KEYS);
      // A `tenant` in the body is no way into another tenant: the token decides.
      return { id: `${tenant}-${i}`, category: "sensor", stream: `s${k}`, type: "ReadingRecorded", tenant: other, data: { value: SPIKES.includes(n) ? 500 : 10 + ((n * 7) % 5) } };
    });
    let lastSeq = 0;
    for (let at = 0; at < events.length; at += 200) {
      const r = await call(writer, "/v1/events", { events: events.slice(at, at + 200) });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(r.body).toMatchObject({ accepted: 200, duplicates: 0, rejected: 0 });
      lastSeq = Math.max(lastSeq, ...(r.body.results as Array<{ seq: number }>).map((x) => x.seq));
    }
    // A retried batch is stored once.
    expect((await call(writer, "/v1/events", { events: events.slice(0, 10) })).body).toMatchObject({ accepted: 0, duplicates: 10 });

    // The raw events, read after write (minSeq) through the generic read model.
    const aggregates = await call(writer, `/v1/projections/generic?minSeq=${lastSeq}&sort=id&filter=${encodeURIComponent(JSON.stringify({ category: "sensor" }))}`);
    expect(aggregates.status, JSON.stringify(aggregates.body)).toBe(200);
    expect(aggregates.body.rows.map((r: any) => [r.id, r.revision])).toEqual(Array.from({ length: KEYS }, (_, k) => [`s${k}`, PER_KEY]));

    // The processor's derived events, folded by pipeline_summary: one per spike.
    const derivedFilter = encodeURIComponent(JSON.stringify({ source: "derived", category: processor }));
    let summary: any[] = [];
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      const r = await call(writer, `/v1/projections/pipeline_summary?filter=${derivedFilter}`);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      summary = r.body.rows;
      if (summary.reduce((n, row) => n + row.count, 0) >= KEYS * SPIKES.length) break;
      await sleep(250);
    }
    expect(summary.map((r) => ({ category: r.category, type: r.type, source: r.source, count: r.count }))).toEqual([
      { category: processor, type: "AnomalyScored", source: "derived", count: KEYS * SPIKES.length },
    ]);
    // Each key's outputs are its spikes, caused by exactly those events.
    for (let k = 0; k < KEYS; k++) {
      const r = await call(writer, `/v1/derived/${processor}?key=s${k}&limit=100`);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      const outputs = r.body.outputs as Array<{ causationId: string; data: { flagged: boolean } }>;
      expect(outputs.map((o) => o.causationId).sort()).toEqual(SPIKES.map((n) => `${tenant}-${n * KEYS + k}`).sort());
      expect(outputs.every((o) => o.data.flagged)).toBe(true);
    }

    // The other tenant, with a valid token of the same gateway, reads none of it.
    for (const path of ["/v1/projections/generic", "/v1/projections/pipeline_summary", `/v1/derived/${processor}`]) {
      const r = await call(stranger, path);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(JSON.stringify(r.body)).not.toContain(tenant);
      expect(JSON.stringify(r.body)).not.toMatch(/"count":[1-9]|"revision":[1-9]|"flagged"/u);
    }
    // And a token signed by a key outside the gateway's key set is refused.
    const forged = (await createTokenIssuer(await openKeyStore({ dir: join(dir, uniqueName("forged")) })).issueAccess({ tenant, subject: "x", roles: ["reader"], ttlSeconds: 600 })).token;
    expect((await call(forged, "/v1/projections/generic")).status).toBe(401);
  }, 240_000);
});
