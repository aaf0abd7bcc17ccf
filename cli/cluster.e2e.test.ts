import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import { createTokenIssuer, openKeyStore, openUserStore } from "../gateway/index.js";
import { HEADERS, STREAMS } from "../streams/index.js";
import { countByHeader, startTestCluster, storedCount } from "../test/nats-cluster.js";
import type { TestCluster } from "../test/nats-cluster.js";
import { firstStoredAfter, startUp } from "../test/flexcore-up.js";
import type { UpProcess } from "../test/flexcore-up.js";
import { uniqueName } from "../test/nats-server.js";

// Two `flexcore up` instances on one 3-node cluster (R3), sharing the gateway's key
// directory: both serve, one runs the processor and the other stands by; kill -9 of the
// owner under load loses nothing and the other takes over.
let cluster: TestCluster;
let dir: string;
beforeAll(async () => {
  cluster = await startTestCluster({ topology: true });
  dir = await mkdtemp(join(tmpdir(), "flexcore-cluster-e2e-"));
}, 90_000);
afterAll(async () => {
  await cluster?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The environment of an `up` child: the cluster's URL list and credentials (one place to adapt). */
function upEnv(extra: Record<string, string>): Record<string, string> {
  return { ...cluster.env, FLEXCORE_REPLICAS: "3", FLEXCORE_GATEWAY_PORT: "0", ...extra };
}

const EVENTS = 3_000;
const BATCH = 100;
const KEYS = 20;
const LEASE_TTL_MS = 3_000;

const stored = (stream: string, filter: string): Promise<number> => storedCount(cluster.nc, stream, filter);
const countBy = (stream: string, filter: string, header: string): Promise<Map<string, number>> => countByHeader(cluster.nc, stream, filter, header);

describe("two flexcore up instances on a 3-node cluster", () => {
  it("share the work by lease, accept each other's tokens, and lose nothing when one is killed -9 under load", async () => {
    const processor = uniqueName("anom");
    const tenant = uniqueName("acme");
    const config = join(dir, "flexcore.yaml");
    await writeFile(config, `
runtime:
  threads: 1
  lease_ttl: ${LEASE_TTL_MS}ms
processors:
  - name: ${processor}
    kind: anomaly
    subjects: ["evt.*.sensor.*"]
    partitions: 2
    batch_size: 64
    options: { window: 20, emit: all }
workflows:
  runner: true
  lease: 2s
`);
    const keysDir = join(dir, "keys");
    const a: UpProcess = await startUp({ config, env: upEnv({ FLEXCORE_DATA: join(dir, "a"), FLEXCORE_GATEWAY_KEYS_DIR: keysDir }) });
    let b: UpProcess | undefined;
    try {
      // A session signed in at A is accepted by B; a refresh token of A rotates at B.
      const users = await openUserStore(cluster.nc);
      await users.add(tenant, "dana", "a long password 1", ["admin", "writer", "reader"]);
      const signIn = await fetch(`${a.gatewayUrl}/v1/auth/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ tenant, username: "dana", password: "a long password 1" }) });
      expect(signIn.status).toBe(200);
      const session = (await signIn.json()) as { access_token: string; refresh_token: string };
      const auth = { authorization: `Bearer ${session.access_token}` };

      // A workflow run started at A before B exists: A's runner claims it, its step runs 12 s.
      const defined = await fetch(`${a.gatewayUrl}/v1/workflows`, { method: "POST", headers: { ...auth, "content-type": "application/json" }, body: JSON.stringify({
        name: "slow", steps: [{ id: "wait", kind: "script", language: "bash", timeout_ms: 60_000, source: "read -r input\nsleep 12\necho '{\"waited\": true}'\n" }],
      }) });
      expect(defined.status, await defined.clone().text()).toBe(201);
      const started = await fetch(`${a.gatewayUrl}/v1/workflows/slow/runs`, { method: "POST", headers: { ...auth, "content-type": "application/json" }, body: "{}" });
      expect(started.status).toBe(201);
      const runId = ((await started.json()) as { runId: string }).runId;
      const runEvents = async (base: string) => ((await (await fetch(`${base}/v1/runs/${runId}/events`, { headers: auth })).json()) as { events: Array<{ type: string; data: { runner?: string } }> }).events;
      for (let i = 0; i < 100 && !(await runEvents(a.gatewayUrl)).some((e) => e.type === "StepStarted"); i++) await sleep(100);
      expect((await runEvents(a.gatewayUrl)).find((e) => e.type === "StepStarted")?.data.runner).toContain(`-${a.child.pid}-`);

      b = await startUp({ config, env: upEnv({ FLEXCORE_DATA: join(dir, "b"), FLEXCORE_GATEWAY_KEYS_DIR: keysDir }) });
      // The first instance took the processor's lease; the second stands by.
      expect(a.stderr()).not.toMatch(new RegExp(`processor ${processor} is run by another instance`));
      await b.lineAt(new RegExp(`processor ${processor} is run by another instance; standing by`), 10_000);
      const me = await fetch(`${b.gatewayUrl}/v1/auth/me`, { headers: { authorization: `Bearer ${session.access_token}` } });
      expect(me.status).toBe(200);
      expect(await me.json()).toMatchObject({ tenant, subject: "dana" });
      const refreshed = await fetch(`${b.gatewayUrl}/v1/auth/refresh`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ refresh_token: session.refresh_token }) });
      expect(refreshed.status).toBe(200);
      // A token signed by a key outside the shared set is refused by both.
      const forged = (await createTokenIssuer(await openKeyStore({ dir: join(dir, "forged-keys") })).issueAccess({ tenant, subject: "dana", roles: ["admin"], ttlSeconds: 600 })).token;
      for (const up of [a, b]) expect((await fetch(`${up.gatewayUrl}/v1/auth/me`, { headers: { authorization: `Bearer ${forged}` } })).status).toBe(401);

      // Load: batches with fixed ids, alternating instances; a failed batch is sent again (same ids) to the other one.
      const gateways = [a.gatewayUrl, b.gatewayUrl];
      const dead = new Set<string>();
      let acked = 0;
      let killedAt = 0;
      // When A had exited: whatever is stored after it was written by B.
      let deadAt = 0;
      const send = async (from: number): Promise<void> => {
        const events = Array.from({ length: BATCH }, (_, k) => ({ id: `${tenant}-${from + k}`, category: "sensor", stream: `s${(from + k) % KEYS}`, type: "ReadingRecorded", data: { value: 10 + ((from + k) % 7) } }));
        for (let attempt = 0; attempt < 40; attempt++) {
          const live = gateways.filter((g) => !dead.has(g));
          const url = live[(from / BATCH + attempt) % live.length]!;
          const ok = await fetch(`${url}/v1/events`, { method: "POST", headers: { ...auth, "content-type": "application/json" }, body: JSON.stringify({ events }), signal: AbortSignal.timeout(10_000) })
            .then(async (r) => r.status === 200 && ((await r.json()) as { rejected: number }).rejected === 0, () => false);
          if (ok) return;
          await sleep(200);
        }
        throw new Error(`batch at ${from} was never acknowledged`);
      };
      for (let from = 0; from < EVENTS; from += BATCH * 2) {
        await Promise.all([send(from), from + BATCH < EVENTS ? send(from + BATCH) : undefined]);
        acked = Math.min(EVENTS, from + 2 * BATCH);
        if (!killedAt && acked >= EVENTS / 3) {
          // Each instance built its own projections, to the same rows.
          const seq = (await (await jetstreamManager(cluster.nc)).streams.info(STREAMS.events)).state.last_seq;
          const [fromA, fromB] = await Promise.all([a, b].map(async (up) => {
            const r = await fetch(`${up.gatewayUrl}/v1/projections/generic?minSeq=${seq}&sort=id&limit=100&filter=${encodeURIComponent(JSON.stringify({ category: "sensor" }))}`, { headers: auth });
            expect(r.status).toBe(200);
            return ((await r.json()) as { rows: unknown[] }).rows;
          }));
          expect(fromA).toHaveLength(KEYS);
          expect(fromB).toEqual(fromA);
          // The processor has produced while A owned it; A dies with its step running.
          expect((await runEvents(a.gatewayUrl)).filter((e) => e.type === "StepSucceeded")).toHaveLength(0);
          expect(await stored(STREAMS.derived, `drv.${tenant}.${processor}.>`)).toBeGreaterThan(0);
          killedAt = Date.now();
          dead.add(a.gatewayUrl);
          await a.kill();
          deadAt = Date.now();
        }
      }
      expect(killedAt).toBeGreaterThan(0);

      // B takes the processor over once A's lease expires.
      const takenAt = await b.lineAt(new RegExp(`processor ${processor}: lease taken over`), 4 * LEASE_TTL_MS + 10_000);
      // From A's exit, not from when this test read B's log line: on a loaded machine the line can
      // arrive after B has already written every remaining output.
      const firstOutput = await firstStoredAfter(cluster.nc, STREAMS.derived, `drv.${tenant}.${processor}.>`, deadAt);
      expect(firstOutput).toBeDefined();
      process.stderr.write(`cluster e2e: lease taken over ${takenAt - killedAt} ms after kill -9 (lease_ttl ${LEASE_TTL_MS} ms); first output by the new owner ${firstOutput! - killedAt} ms after it\n`);
      expect(takenAt - killedAt).toBeGreaterThanOrEqual(0);

      // Nothing lost, nothing twice: every event stored once, one output per event.
      const events = await countBy(STREAMS.events, `evt.${tenant}.sensor.>`, HEADERS.msgId);
      expect(events.size).toBe(EVENTS);
      expect([...events].filter(([, n]) => n !== 1)).toEqual([]);
      const deadline = Date.now() + 90_000;
      while (Date.now() < deadline && (await stored(STREAMS.derived, `drv.${tenant}.${processor}.>`)) < EVENTS) await sleep(500);
      const outputs = await countBy(STREAMS.derived, `drv.${tenant}.${processor}.>`, HEADERS.causationId);
      expect(outputs.size).toBe(EVENTS);
      expect([...outputs].filter(([, n]) => n !== 1)).toEqual([]);
      expect([...events.keys()].filter((id) => !outputs.has(id))).toEqual([]);

      // The run A left behind ends succeeded at B's runner, its step run to the end.
      let run: { status: string; steps: Record<string, { status: string; output: unknown }> } | undefined;
      const runDeadline = Date.now() + 90_000;
      while (Date.now() < runDeadline) {
        run = (await (await fetch(`${b.gatewayUrl}/v1/runs/${runId}`, { headers: auth })).json()) as typeof run;
        if (run?.status !== "running") break;
        await sleep(250);
      }
      expect(run).toMatchObject({ status: "succeeded", steps: { wait: { status: "succeeded", output: { waited: true } } } });
      // Started by A's runner, cut off by the kill, run again and finished by B's: once each.
      const history = await runEvents(b.gatewayUrl);
      const starts = history.filter((e) => e.type === "StepStarted").map((e) => e.data.runner);
      expect(starts.length, JSON.stringify(history)).toBeGreaterThanOrEqual(2);
      expect(starts[0]).toContain(`-${a.child.pid}-`);
      expect(starts.at(-1)).toContain(`-${b.child.pid}-`);
      expect(history.filter((e) => e.type === "StepSucceeded")).toHaveLength(1);

      // B's projections, after A is gone, agree with the streams.
      const seq = (await (await jetstreamManager(cluster.nc)).streams.info(STREAMS.events)).state.last_seq;
      const rows = await fetch(`${b.gatewayUrl}/v1/projections/generic?minSeq=${seq}&limit=100&filter=${encodeURIComponent(JSON.stringify({ category: "sensor" }))}`, { headers: auth });
      expect(rows.status).toBe(200);
      const body = (await rows.json()) as { rows: Array<{ revision: number }> };
      expect(body.rows).toHaveLength(KEYS);
      expect(body.rows.reduce((n, r) => n + r.revision, 0)).toBe(EVENTS);
    } finally {
      await a.kill();
      await b?.stop();
    }
  }, 240_000);
});
