// Processor ownership across instances through flex_leases: one instance runs a processor,
// the others stand by; a release hands it over at once, a kill -9 after the lease expires.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { parseConfig, pipelineSections, startProcessorRuntime } from "./index.js";
import type { ProcessorRuntime } from "./index.js";
import { definitions } from "./fixtures/faulty.js";
import { countMessages, FIXTURE_MODULE, openProcessorTestEnv, publishSeries, readStream, startHost, waitFor } from "./testing.js";
import type { ProcessorTestEnv } from "./testing.js";

const TTL_MS = 2_000;

let env: ProcessorTestEnv | undefined;
let nats: TestNats;
let publisher: Publisher;
let dir: string;

beforeAll(async () => {
  env = await openProcessorTestEnv({ tempDirPrefix: "flexcore-lease-" });
  ({ nats, publisher, dir } = env);
});
afterAll(async () => {
  await env?.close();
});

const yaml = (name: string, tenant: string): string => `runtime: { threads: 1 }\nprocessors:\n  - name: ${name}\n    kind: counter\n    subjects: ["evt.${tenant}.m.*"]\n    partitions: 2\n    batch_size: 32\n`;

function start(name: string, tenant: string, instanceId: string): Promise<ProcessorRuntime> {
  return startProcessorRuntime(nats.nc, {
    processors: parseConfig(yaml(name, tenant), pipelineSections({ threads: 1, extra: definitions })).processors,
    threads: 1,
    modules: [FIXTURE_MODULE],
    definitions,
    metricsIntervalMs: 0,
    instanceId,
    leaseTtlMs: TTL_MS,
    log: () => undefined,
  });
}

/** Every derived event once, and per key the counter runs 1..n without a gap or a repeat. */
async function expectExactlyOnce(tenant: string, name: string, keys: readonly string[], total: number): Promise<void> {
  const derived = await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`);
  expect(new Set(derived.map((d) => d.msgId)).size).toBe(total);
  expect(derived).toHaveLength(total);
  for (const key of keys) {
    const n = derived.filter((d) => d.subject.endsWith(`.${key}`)).map((d) => (JSON.parse(d.data) as { n: number }).n);
    expect(n).toEqual(Array.from({ length: total / keys.length }, (_, i) => i + 1));
  }
}

describe("processor leases", () => {
  it("two instances: one runs the processor, the other stands by and takes over on release", async () => {
    const tenant = uniqueName("ls");
    const name = uniqueName("lc");
    const keys = ["a", "b", "c", "d"];
    const a = await start(name, tenant, "A");
    const b = await start(name, tenant, "B");
    try {
      expect(a.metrics()[0]!.owner).toBe(true);
      expect(b.metrics()[0]!.owner).toBe(false);
      await publishSeries(publisher, tenant, "m", keys, (i) => ({ value: i }), 400, `${tenant}-1`);
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) === 400, 30_000, "400 derived events");
      await a.idle();
      expect(a.metrics()[0]!.processed).toBe(400);
      expect(b.metrics()[0]!.processed).toBe(0);
      await a.close();
      await waitFor(() => b.metrics()[0]!.owner, 5_000, "B to take the released lease");
      await publishSeries(publisher, tenant, "m", keys, (i) => ({ value: i }), 200, `${tenant}-2`);
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) === 600, 30_000, "600 derived events");
      await b.idle();
      expect(b.metrics()[0]!.processed).toBe(200);
      await expectExactlyOnce(tenant, name, keys, 600);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("kill -9 of the owner: the standby takes over once the lease expires, outputs stay exactly once", async () => {
    const tenant = uniqueName("lk");
    const name = uniqueName("lk");
    const keys = ["a", "b", "c", "d", "e", "f"];
    const total = 1_800;
    const configFile = join(dir, `${name}.yaml`);
    await writeFile(configFile, yaml(name, tenant));
    const host = startHost({ ...nats.env, FLEXCORE_CONFIG: configFile, FLEXCORE_INSTANCE: "A", FLEXCORE_LEASE_TTL_MS: String(TTL_MS) });
    const { child, exited } = host;
    await waitFor(() => host.output().includes("owner"), 30_000, `the host to own the processor (${host.output()})`);
    const b = await start(name, tenant, "B");
    try {
      expect(b.metrics()[0]!.owner).toBe(false);
      const publishing = (async () => {
        for (let i = 0; i < total; i += 300) {
          await publishSeries(publisher, tenant, "m", keys, (j) => ({ value: i + j }), 300, `${tenant}-c${i}`);
          await new Promise((r) => setTimeout(r, 200));
        }
      })();
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) >= 300, 30_000, "the host to make progress");
      child.kill("SIGKILL");
      const killedAt = Date.now();
      await exited;
      // The standby did nothing while the owner lived, and waits for the lease to expire.
      expect(b.metrics()[0]!.processed).toBe(0);
      await waitFor(() => b.metrics()[0]!.owner, 10_000, "B to take the expired lease");
      const waited = Date.now() - killedAt;
      // Renewed every TTL/3: the lease had at least 2/3 of its TTL left at the kill.
      expect(waited).toBeGreaterThanOrEqual(TTL_MS / 2);
      await publishing;
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) >= total, 30_000, `${total} derived events`);
      await b.idle();
      expect(b.metrics()[0]!.processed).toBeGreaterThan(0);
      await expectExactlyOnce(tenant, name, keys, total);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      await b.close();
    }
  }, 90_000);
});
