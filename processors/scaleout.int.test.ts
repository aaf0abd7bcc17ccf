// Scale-out (#18): a processor with `scale: partitioned` spread over several runtime
// instances. Partitions move on join, stop and kill -9; outputs stay exactly once with the
// ids of the single-instance runtime, per-key order and per-key state continue.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUCKETS, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { parseConfig, pipelineSections, startProcessorRuntime } from "./index.js";
import type { ProcessorRuntime } from "./index.js";
import { definitions } from "./fixtures/faulty.js";
import { countMessages, FIXTURE_MODULE, openProcessorTestEnv, publishSeries, readStream, startHost, waitFor } from "./testing.js";
import type { ProcessorTestEnv, ReadMessage } from "./testing.js";
import { Kvm } from "@nats-io/kv";

const TTL_MS = 2_000;
const PARTITIONS = 6;

let env: ProcessorTestEnv | undefined;
let nats: TestNats;
let publisher: Publisher;
let dir: string;

beforeAll(async () => {
  env = await openProcessorTestEnv({ tempDirPrefix: "flexcore-scaleout-" });
  ({ nats, publisher, dir } = env);
});
afterAll(async () => {
  await env?.close();
});

const yaml = (name: string, tenant: string, scale = "partitioned"): string =>
  `runtime: { threads: 1 }\nprocessors:\n  - name: ${name}\n    kind: counter\n    subjects: ["evt.${tenant}.m.>"]\n    partitions: ${PARTITIONS}\n    batch_size: 32\n    scale: ${scale}\n`;

function start(name: string, tenant: string, instanceId: string, scale = "partitioned"): Promise<ProcessorRuntime> {
  return startProcessorRuntime(nats.nc, {
    processors: parseConfig(yaml(name, tenant, scale), pipelineSections({ threads: 1, extra: definitions })).processors,
    threads: 1,
    modules: [FIXTURE_MODULE],
    definitions,
    metricsIntervalMs: 0,
    instanceId,
    leaseTtlMs: TTL_MS,
    log: () => undefined,
  });
}

const held = (r: ProcessorRuntime): readonly number[] => r.metrics()[0]!.partitions ?? [];

/** Every partition held by exactly one of `runtimes`. */
function ownedOnce(runtimes: readonly ProcessorRuntime[]): boolean {
  const all = runtimes.flatMap(held);
  return all.length === PARTITIONS && new Set(all).size === PARTITIONS;
}

const derivedCount = (tenant: string, name: string): Promise<number> => countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`);

/**
 * Every derived event once; per key the counter runs 1..n in source order (its state never
 * reset), stored in that order; and a key's outputs come from one instance at a time (the
 * instance changes at most `maxMoves` times per key, never back and forth within a move).
 */
async function expectExactlyOnce(tenant: string, name: string, keys: readonly string[], total: number, maxMoves = Number.POSITIVE_INFINITY): Promise<ReadMessage[]> {
  const derived = await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`);
  expect(new Set(derived.map((d) => d.msgId)).size).toBe(total);
  expect(derived).toHaveLength(total);
  for (const key of keys) {
    const mine = derived.filter((d) => d.subject.endsWith(`.${key}`));
    expect(mine.map((d) => (JSON.parse(d.data) as { n: number }).n)).toEqual(Array.from({ length: total / keys.length }, (_, i) => i + 1));
    const seqs = mine.map((d) => Number(d.headers["Flex-Source-Seq"]));
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    let switches = 0;
    for (let i = 1; i < mine.length; i++) if (mine[i]!.headers["Flex-Instance"] !== mine[i - 1]!.headers["Flex-Instance"]) switches += 1;
    expect(switches).toBeLessThanOrEqual(maxMoves);
  }
  return derived;
}

describe("scale: partitioned", () => {
  it("outputs carry the same ids and data as the single-instance runtime for the same events", async () => {
    const tenant = uniqueName("sa");
    const single = uniqueName("ss");
    const parted = uniqueName("sp");
    const keys = ["a", "b", "c", "d", "e"];
    await publishSeries(publisher, tenant, "m", keys, (i) => ({ value: i }), 300, `${tenant}-1`);
    const a = await start(single, tenant, "S", "single");
    const b = await start(parted, tenant, "P");
    try {
      await waitFor(async () => (await derivedCount(tenant, single)) === 300 && (await derivedCount(tenant, parted)) === 300, 30_000, "300 outputs of each");
      const one = await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${single}.>`);
      const two = await expectExactlyOnce(tenant, parted, keys, 300);
      const shape = (d: ReadMessage, name: string) => `${d.msgId.replace(`${name}:`, "")} ${d.subject.replace(`.${name}.`, ".")} ${d.data} ${d.headers["Flex-Source-Seq"]}`;
      expect(two.map((d) => shape(d, parted)).sort()).toEqual(one.map((d) => shape(d, single)).sort());
      expect(new Set(two.map((d) => d.headers["Flex-Instance"]))).toEqual(new Set(["P"]));
    } finally {
      await a.close();
      await b.close();
    }
  }, 60_000);

  it("3 instances share the partitions; a 4th joins under load; then they stop one by one down to the last: nothing lost or repeated", async () => {
    const tenant = uniqueName("sj");
    const name = uniqueName("sj");
    const keys = Array.from({ length: 24 }, (_, i) => `k${i}`);
    const runtimes = [await start(name, tenant, "A"), await start(name, tenant, "B"), await start(name, tenant, "C")];
    let total = 0;
    const publish = async (n: number): Promise<void> => {
      await publishSeries(publisher, tenant, "m", keys, (i) => ({ value: i }), n, `${tenant}-${total}`);
      total += n;
    };
    try {
      await waitFor(() => ownedOnce(runtimes) && runtimes.every((r) => held(r).length === 2), 10_000, "6 partitions spread 2/2/2");
      await publish(720);
      // A fourth instance joins while events flow.
      const publishing = (async () => {
        for (let i = 0; i < 6; i++) {
          await publish(240);
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      runtimes.push(await start(name, tenant, "D"));
      await waitFor(() => ownedOnce(runtimes) && held(runtimes[3]!).length > 0 && runtimes.every((r) => held(r).length <= 2), 15_000, "the partitions to spread over 4 instances");
      await publishing;
      await waitFor(async () => (await derivedCount(tenant, name)) === total, 30_000, `${total} outputs`);
      // Down to one, under load: each stop hands its partitions over after draining them.
      while (runtimes.length > 1) {
        const stopping = runtimes.shift()!;
        const publishingMore = publish(240);
        await stopping.close();
        await publishingMore;
        await waitFor(() => ownedOnce(runtimes), 15_000, `the partitions to spread over ${runtimes.length} instances`);
      }
      expect(held(runtimes[0]!)).toEqual([0, 1, 2, 3, 4, 5]);
      await waitFor(async () => (await derivedCount(tenant, name)) === total, 30_000, `${total} outputs`);
      const derived = await expectExactlyOnce(tenant, name, keys, total, 5);
      // Every instance did a share of the work, the late joiner included.
      expect(new Set(derived.map((d) => d.headers["Flex-Instance"]))).toEqual(new Set(["A", "B", "C", "D"]));
    } finally {
      for (const r of runtimes) await r.close();
    }
  }, 120_000);
});
