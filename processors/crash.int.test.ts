// Crash and replay guarantees of the processor runtime, with the host in a child process
// that is SIGKILLed mid-stream.
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { anomaly, anomalyOptions, parseConfig, pipelineSections, startProcessorRuntime } from "./index.js";
import type { ProcessorInput } from "./index.js";
import { countMessages, openProcessorTestEnv, publishSeries, readStream, startHost, waitFor } from "./testing.js";
import type { HostProcess, ProcessorTestEnv, ReadMessage } from "./testing.js";

const KILLS = 10;

let env: ProcessorTestEnv | undefined;
let nats: TestNats;
let publisher: Publisher;
let dir: string;

beforeAll(async () => {
  env = await openProcessorTestEnv({ tempDirPrefix: "flexcore-crash-" });
  ({ nats, publisher, dir } = env);
});
afterAll(async () => {
  await env?.close();
});

// The same instance id across restarts: a restarted host takes its own lease back at once.
const hostFor = (configFile: string): HostProcess => startHost({ ...nats.env, FLEXCORE_CONFIG: configFile, FLEXCORE_INSTANCE: `host-${configFile}` });

/** What the anomaly processor must produce for the source events, computed in-process. */
function expectedOutputs(name: string, events: readonly ReadMessage[], rawOptions: Record<string, unknown>): Map<string, string> {
  const options = anomalyOptions(rawOptions);
  const byKey = new Map<string, ProcessorInput[]>();
  for (const e of events) {
    const [, tenant, , key] = e.subject.split(".");
    const list = byKey.get(key!) ?? [];
    list.push({ tenant: tenant!, key: key!, subject: e.subject, seq: e.seq, type: e.headers["Flex-Type"]!, data: JSON.parse(e.data), time: e.headers["Flex-Time"]! });
    byKey.set(key!, list);
  }
  const out = new Map<string, string>();
  for (const [key, inputs] of byKey) {
    const r = anomaly.process(anomaly.initialState(options, key), inputs, options);
    r.outputs.forEach((outs, i) => outs.forEach((o, j) => out.set(`${name}:${inputs[i]!.seq}:${j}`, JSON.stringify(o.data))));
  }
  return out;
}

function value(i: number): { value: number } {
  return { value: 50 + 5 * Math.sin(i / 7) + ((i * 7919) % 13) / 13 + (i % 97 === 40 ? 60 : 0) };
}

describe("processor host crashes", () => {
  it(`kill -9 of the host ${KILLS} times mid-stream: every output exactly once, state resumes`, async () => {
    const tenant = uniqueName("kc");
    const name = uniqueName("ka");
    const options = { emit: "all", window: 30, method: "zscore" };
    const configFile = join(dir, `${name}.yaml`);
    await writeFile(
      configFile,
      `runtime: { threads: 1 }\nprocessors:\n  - name: ${name}\n    kind: anomaly\n    subjects: ["evt.${tenant}.sensor.*"]\n    partitions: 4\n    batch_size: 32\n    options: ${JSON.stringify(options)}\n`,
    );
    const keys = Array.from({ length: 8 }, (_, i) => `s${i}`);
    const total = 3_000;
    const chunk = total / KILLS;
    const part = 60;
    // Events keep arriving while the host is killed and restarted. The pace is set by the
    // hosts, not by a clock: chunk k is published, in parts, only once host k is up, so it
    // arrives while host k works and is killed, on a machine of any speed.
    let hostsUp = 0;
    let hostUp: () => void = () => undefined;
    const publishing = (async () => {
      for (let c = 0; c < KILLS; c++) {
        while (hostsUp <= c) await new Promise<void>((r) => (hostUp = r));
        for (let p = 0; p < chunk; p += part) {
          const start = c * chunk + p;
          await publishSeries(publisher, tenant, "sensor", keys, (i) => value(start + i), part, `${tenant}-c${start}`);
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    })();

    const derivedAtKills: number[] = [];
    const eventsAtKills: number[] = [];
    for (let k = 0; k < KILLS; k++) {
      const host = hostFor(configFile);
      await host.ready;
      hostsUp += 1;
      hostUp();
      // Outputs beyond those at the last kill are this host's, from chunk k (published only now).
      const before = derivedAtKills.at(-1) ?? 0;
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) > before, 20_000, "progress");
      // Let it process for a while (the chunk is still arriving), then crash it with whatever it has in flight.
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 200)));
      host.child.kill("SIGKILL");
      await host.exited;
      derivedAtKills.push(await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`));
      eventsAtKills.push(await countMessages(nats.nc, STREAMS.events, `evt.${tenant}.>`));
    }
    await publishing;
    const final = hostFor(configFile);
    await final.ready;
    await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) >= total, 60_000, `${total} derived events`);
    const jsm = await jetstreamManager(nats.nc);
    await waitFor(async () => {
      const info = await jsm.consumers.info(STREAMS.events, `proc_${name}`);
      return info.num_pending === 0 && info.num_ack_pending === 0;
    }, 30_000, "the consumer to settle");
    final.child.kill("SIGTERM");
    expect(await final.exited).toBe(0);
    expect(final.output()).toMatch(/stopped in \d+ ms/);

    // Kills happened while work remained: events stored that had no output yet (a run here:
    // 150-375 outputs for 300-3,000 events at the kills, as a restarted host first waits for
    // the killed one's unacked messages to come back).
    expect(derivedAtKills.filter((n, k) => n < eventsAtKills[k]!).length).toBeGreaterThanOrEqual(KILLS / 2);

    const events = await readStream(nats.nc, STREAMS.events, `evt.${tenant}.>`);
    expect(events).toHaveLength(total);
    const expected = expectedOutputs(name, events, options);
    const derived = await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`);
    const ids = new Map<string, number>();
    for (const d of derived) ids.set(d.msgId, (ids.get(d.msgId) ?? 0) + 1);
    expect([...ids.values()].filter((n) => n > 1)).toEqual([]);
    expect(derived).toHaveLength(expected.size);
    // Byte-identical to an uninterrupted run: the state was restored, not restarted.
    const mismatches = derived.filter((d) => expected.get(d.msgId) !== d.data);
    expect(mismatches.slice(0, 3)).toEqual([]);
  }, 150_000);

  it("an event that kills the host process is dead-lettered after max_deliver crashes; the rest flows exactly once", async () => {
    const tenant = uniqueName("pk");
    const name = uniqueName("pz");
    const configFile = join(dir, `${name}.yaml`);
    await writeFile(configFile, `runtime: { threads: 1 }\nprocessors:\n  - name: ${name}\n    kind: faulty\n    subjects: ["evt.${tenant}.m.*"]\n    partitions: 2\n    batch_size: 16\n    max_deliver: 2\n`);
    const total = 300;
    const killer = 100;
    await publishSeries(publisher, tenant, "m", ["a", "b", "c"], (i) => ({ value: i, ...(i === killer ? { kill: true } : {}) }), total);
    const derivedCount = (): Promise<number> => countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`);
    const deadCount = (): Promise<number> => countMessages(nats.nc, STREAMS.dlq, `dlq.${tenant}.${name}`);
    // A supervisor: restart the host whenever it dies, until everything is handled.
    let crashes = 0;
    let host = hostFor(configFile);
    for (;;) {
      const outcome = await Promise.race([host.exited.then(() => "died" as const), waitFor(async () => (await derivedCount()) === total - 1 && (await deadCount()) === 1, 60_000, "the stream to be handled").then(() => "done" as const)]);
      if (outcome === "done") break;
      crashes += 1;
      expect(crashes).toBeLessThanOrEqual(6);
      host = hostFor(configFile);
    }
    host.child.kill("SIGTERM");
    expect(await host.exited).toBe(0);
    // Once in a batch, then max_deliver (2) times alone; the third start dead-letters it.
    expect(crashes).toBe(3);
    const [dead] = await readStream(nats.nc, STREAMS.dlq, `dlq.${tenant}.${name}`);
    const body = JSON.parse(dead!.data) as { processor: string; seq: number; key: string; attempts: number; reason: string; error: { code: string }; data: unknown };
    const source = (await readStream(nats.nc, STREAMS.events, `evt.${tenant}.>`))[killer]!;
    expect(body).toMatchObject({ processor: name, seq: source.seq, key: "b", attempts: 2, error: { code: "FLEX_PROCESSOR_CRASHED" }, data: { value: killer, kill: true } });
    expect(body.reason).toMatch(/host stopped 2 times/);
    expect(dead!.headers["Flex-Source-Seq"]).toBe(String(source.seq));
    const derived = await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`);
    expect(new Set(derived.map((d) => d.msgId)).size).toBe(total - 1);
    // Key b skipped only the killer: its count runs 1..99 over its 99 other events.
    const b = derived.filter((d) => d.subject.endsWith(".b")).map((d) => (JSON.parse(d.data) as { n: number }).n);
    expect(b).toEqual(Array.from({ length: 99 }, (_, i) => i + 1));
  }, 120_000);

  it("replay from sequence 1 produces byte-identical outputs", async () => {
    const tenant = uniqueName("rp");
    const keys = ["a", "b", "c"];
    await publishSeries(publisher, tenant, "sensor", keys, (i) => value(i), 600);
    const yaml = (name: string): string =>
      `processors:\n  - name: ${name}\n    kind: anomaly\n    subjects: ["evt.${tenant}.sensor.*"]\n    partitions: ${name.endsWith("a") ? 1 : 3}\n    batch_size: ${name.endsWith("a") ? 50 : 200}\n    options: { method: iforest, emit: all, window: 40, trees: 20 }\n`;
    const names = [uniqueName("first") + "a", uniqueName("replay") + "b"];
    const runs: ReadMessage[][] = [];
    for (const name of names) {
      const processors = parseConfig(yaml(name), pipelineSections({ threads: 2 })).processors;
      const runtime = await startProcessorRuntime(nats.nc, { processors, threads: 2, metricsIntervalMs: 0 });
      try {
        await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) === 600, 30_000, "600 outputs");
      } finally {
        await runtime.close();
      }
      runs.push(await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`));
    }
    // Different batch sizes and partition counts, same bytes per source sequence.
    const bySeq = (msgs: ReadMessage[]): Map<string, string> => new Map(msgs.map((m) => [m.headers["Flex-Source-Seq"]!, `${m.headers["Flex-Type"]}|${m.headers["Flex-Time"]}|${m.data}`]));
    const [a, b] = runs.map(bySeq);
    expect(a!.size).toBe(600);
    const sorted = (m: Map<string, string>): Array<[string, string]> => [...m.entries()].sort(([x], [y]) => Number(x) - Number(y));
    expect(sorted(b!)).toEqual(sorted(a!));
  }, 120_000);
});
