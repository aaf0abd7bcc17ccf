// A redriven dead letter is taken once by the key's state, even when the host dies between
// the state's checkpoint and the redrive's ack (a fault switch kills it at that point).
import { unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Kvm } from "@nats-io/kv";
import { BUCKETS, createDeadLetters, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { stateKvKey } from "./index.js";
import { countMessages, openProcessorTestEnv, publishSeries, readStream, startHost, waitFor } from "./testing.js";
import type { ProcessorTestEnv } from "./testing.js";

let env: ProcessorTestEnv | undefined;
let nats: TestNats;
let publisher: Publisher;
let dir: string;

beforeAll(async () => {
  env = await openProcessorTestEnv({ tempDirPrefix: "flexcore-redrive-" });
  ({ nats, publisher, dir } = env);
});
afterAll(async () => {
  await env?.close();
});

async function stateOf(name: string, tenant: string, key: string): Promise<{ seq: number; state: { n: number; sum: number }; redriven?: number[] }> {
  const kv = await new Kvm(nats.nc).open(BUCKETS.state);
  const e = await kv.get(stateKvKey(name, tenant, key));
  return JSON.parse(new TextDecoder().decode(e!.value)) as { seq: number; state: { n: number; sum: number }; redriven?: number[] };
}

describe("processor redrive", () => {
  it("kill -9 between the key's checkpoint and the redrive's ack: after a restart the state took the late event once, its output is stored once", async () => {
    const tenant = uniqueName("rk");
    const name = uniqueName("rk");
    const marker = join(dir, `${name}.broken`);
    await writeFile(marker, "");
    const configFile = join(dir, `${name}.yaml`);
    await writeFile(configFile, `runtime: { threads: 1 }\nprocessors:\n  - name: ${name}\n    kind: flaky\n    subjects: ["evt.${tenant}.m.*"]\n    partitions: 1\n    max_deliver: 1\n    backoff: [10]\n    ack_wait: 2s\n`);
    const hostEnv = { ...nats.env, FLEXCORE_CONFIG: configFile, FLEXCORE_INSTANCE: `host-${name}` };
    const first = startHost({ ...hostEnv, FLEXCORE_TEST_FAULT: "processor-redrive-before-ack" });
    await first.ready;
    // 10 events of key a; the 4th fails while the marker file exists (sum of values 0..9 = 45).
    await publishSeries(publisher, tenant, "m", ["a"], (i) => (i === 3 ? { value: i, failWhile: marker } : { value: i }), 10, `${tenant}-e`);
    const dl = createDeadLetters(nats.nc);
    await waitFor(async () => (await dl.find(tenant, { source: name })).deadLetters.length === 1, 20_000, "the dead letter");
    await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) === 9, 20_000, "9 outputs");
    await waitFor(async () => (await stateOf(name, tenant, "a")).state.n === 9, 10_000, "the state of 9 events");
    const letter = (await dl.find(tenant, { source: name })).deadLetters[0]!;
    expect(letter.originalSeq).not.toBeNull();

    await unlink(marker); // the cause is fixed
    const report = await dl.redrive(tenant, { seq: letter.seq });
    expect(report.redriven).toEqual([letter.seq]);
    // The host applies it, stores the checkpoint, and dies before the ack.
    expect(await first.exited).toBeNull();
    expect(first.child.signalCode).toBe("SIGKILL");
    const after = await stateOf(name, tenant, "a");
    expect(after.state).toEqual({ n: 10, sum: 45 });
    expect(after.redriven).toEqual([letter.seq]);
    expect(await countMessages(nats.nc, STREAMS.redrive, `redrive.${tenant}.>`)).toBe(1); // not acked

    const second = startHost(hostEnv);
    try {
      await second.ready;
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.redrive, `redrive.${tenant}.>`)) === 0, 20_000, "the redrive acknowledged");
      const final = await stateOf(name, tenant, "a");
      expect(final.state).toEqual({ n: 10, sum: 45 }); // not 11 / 48
      const derived = await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`);
      expect(derived).toHaveLength(10);
      expect(derived.filter((d) => d.headers["Flex-Source-Seq"] === String(letter.originalSeq))).toHaveLength(1);
      expect(await countMessages(nats.nc, STREAMS.dlq, `dlq.${tenant}.>`)).toBe(0);
      expect(second.output()).toContain(`redrive of dead letter ${letter.seq} was already applied`);
    } finally {
      second.child.kill("SIGTERM");
      await second.exited;
    }
  }, 90_000);
});
