// The runtime's remote path (kinds `<plugin>/<kind>` served outside the pool), with an
// in-process RemoteKinds standing for a plugin (the real plugin path is tested end to end
// in cli/plugins-up.e2e.test.ts): retries never drop, permanent errors and per-input
// rejections dead-letter exactly what they name, states stay in flex_state.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Kvm } from "@nats-io/kv";
import { STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { ConfigError, parseConfig, pipelineSections, startProcessorRuntime, stateKvKey, UnknownProcessorError } from "./index.js";
import type { RemoteBatch, RemoteBatchResult, RemoteKinds, ResolvedProcessor } from "./index.js";
import { countMessages, openProcessorTestEnv, publishSeries, readStream, waitFor } from "./testing.js";
import type { ProcessorTestEnv } from "./testing.js";

let env: ProcessorTestEnv | undefined;
let nats: TestNats;
let publisher: Publisher;

beforeAll(async () => {
  env = await openProcessorTestEnv();
  ({ nats, publisher } = env);
});
afterAll(async () => {
  await env?.close();
});

function processors(yaml: string): readonly ResolvedProcessor[] {
  return parseConfig(yaml, pipelineSections({ threads: 1 })).processors;
}

class Retryable extends Error {}
class Permanent extends Error {
  readonly code = "FLEX_PLUGIN_REJECTED";
}

/** An echo standing for a plugin: counts per key in the state, one `Echoed` per input. */
function echoRemote(hooks: { before?: (b: RemoteBatch) => void; reject?: (data: unknown) => string | undefined } = {}): RemoteKinds & { calls: RemoteBatch[] } {
  const calls: RemoteBatch[] = [];
  return {
    calls,
    has: (kind) => kind === "echo/echo",
    isPermanent: (err) => err instanceof Permanent,
    async process(b): Promise<RemoteBatchResult> {
      calls.push(b);
      hooks.before?.(b);
      const states: Record<string, { count: number }> = {};
      const outputs: Array<{ input: number; type: string; data: unknown }> = [];
      const rejected: Array<{ input: number; reason: string }> = [];
      b.inputs.forEach((x, i) => {
        const why = hooks.reject?.(x.data);
        if (why) {
          rejected.push({ input: i, reason: why });
          return;
        }
        const before = states[x.key]?.count ?? (b.states[x.key] as { count: number } | null)?.count ?? 0;
        states[x.key] = { count: before + 1 };
        outputs.push({ input: i, type: "Echoed", data: x.data });
      });
      return { states, outputs, rejected };
    },
  };
}

describe("remote processor kinds", () => {
  it("accepts <plugin>/<kind> in the configuration and refuses a malformed one naming the path", () => {
    expect(processors(`processors:\n  - name: e\n    kind: echo/echo\n    subjects: ["evt.*.x.*"]\n`)[0]!.kind).toBe("echo/echo");
    let err: unknown;
    try {
      processors(`processors:\n  - name: e\n    kind: Echo/x.y\n    subjects: ["evt.*.x.*"]\n`);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).issues[0]!.path).toBe("processors[0].kind");
    expect(() => processors(`processors:\n  - name: e\n    kind: echo/echo\n    subjects: ["evt.*.x.*"]\n    options: [1]\n`)).toThrow(/processors\[0\]\.options/u);
  });

  it("refuses a remote kind nobody serves", async () => {
    await expect(startProcessorRuntime(nats.nc, { processors: processors(`processors:\n  - name: ${uniqueName("e")}\n    kind: echo/echo\n    subjects: ["evt.*.x.*"]\n`), threads: 1, metricsIntervalMs: 0 })).rejects.toBeInstanceOf(UnknownProcessorError);
  });

  it("retries retryable errors without dropping, dead-letters a permanent error's tenant only and rejected inputs only, keeps states", async () => {
    const good = uniqueName("rg");
    const bad = uniqueName("rb");
    const name = uniqueName("echo");
    let failures = 3;
    const remote = echoRemote({
      before: (b) => {
        if (failures > 0) {
          failures -= 1;
          throw new Retryable("503 try later");
        }
        if (b.tenant === bad) throw new Permanent("400 not for this tenant");
      },
      reject: (data) => ((data as { i: number }).i % 10 === 3 ? "i ends in 3" : undefined),
    });
    const runtime = await startProcessorRuntime(nats.nc, {
      processors: processors(`processors:\n  - name: ${name}\n    kind: echo/echo\n    subjects: ["evt.${good}.x.*", "evt.${bad}.x.*"]\n    partitions: 2\n    batch_size: 16\n    backoff: [10ms, 20ms]\n`),
      threads: 1,
      metricsIntervalMs: 0,
      remote,
    });
    try {
      await publishSeries(publisher, good, "x", ["a", "b"], (i) => ({ i }), 100);
      await publishSeries(publisher, bad, "x", ["c"], (i) => ({ i }), 5);
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${good}.${name}.>`)) === 90, 30_000, "90 derived events");
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.dlq, `dlq.*.${name}`)) === 15, 30_000, "15 dead letters");
      await runtime.idle();
      const derived = await readStream(nats.nc, STREAMS.derived, `drv.${good}.${name}.>`);
      // Ids as in-process kinds have them: <processor>:<source sequence>:<output index>, once each.
      expect(new Set(derived.map((d) => d.msgId)).size).toBe(90);
      for (const d of derived) expect(d.msgId).toBe(`${name}:${d.headers["Flex-Source-Seq"]}:0`);
      expect(derived.every((d) => d.headers["Flex-Type"] === "Echoed")).toBe(true);
      for (const key of ["a", "b"]) {
        const seqs = derived.filter((d) => d.subject.endsWith(`.${key}`)).map((d) => Number(d.headers["Flex-Source-Seq"]));
        expect([...seqs].sort((x, y) => x - y)).toEqual(seqs);
      }
      const dlq = await readStream(nats.nc, STREAMS.dlq, `dlq.*.${name}`);
      expect(dlq.filter((d) => d.subject === `dlq.${bad}.${name}`)).toHaveLength(5);
      expect(dlq.filter((d) => d.subject === `dlq.${good}.${name}`).map((d) => (JSON.parse(d.data) as { data: { i: number } }).data.i % 10)).toEqual(Array(10).fill(3));
      // No call mixed tenants; states went out and came back through flex_state.
      for (const c of remote.calls) expect(new Set(c.inputs.map((x) => x.subject.split(".")[1]))).toEqual(new Set([c.tenant]));
      const kv = await new Kvm(nats.nc).open("flex_state");
      const a = JSON.parse(new TextDecoder().decode((await kv.get(stateKvKey(name, good, "a")))!.value)) as { state: { count: number } };
      expect(a.state.count).toBe(50);
      const b = JSON.parse(new TextDecoder().decode((await kv.get(stateKvKey(name, good, "b")))!.value)) as { state: { count: number } };
      expect(b.state.count).toBe(40);
    } finally {
      await runtime.close();
    }
  });
  it("publishes each output's body as the kind returned it (multi-byte text, several outputs per input, another key)", async () => {
    const tenant = uniqueName("rm");
    const name = uniqueName("multi");
    const remote: RemoteKinds = {
      has: (kind) => kind === "echo/echo",
      isPermanent: () => false,
      async process(b): Promise<RemoteBatchResult> {
        const outputs = b.inputs.flatMap((x, i) => [
          { input: i, type: "Texted", data: { s: `é${(x.data as { i: number }).i}🎉`, n: null } },
          { input: i, type: "Keyed", data: [(x.data as { i: number }).i], key: `u${(x.data as { i: number }).i % 2}` },
        ]);
        return { states: {}, outputs };
      },
    };
    const runtime = await startProcessorRuntime(nats.nc, { processors: processors(`processors:\n  - name: ${name}\n    kind: echo/echo\n    subjects: ["evt.${tenant}.x.*"]\n    batch_size: 8\n`), threads: 1, metricsIntervalMs: 0, remote });
    try {
      await publishSeries(publisher, tenant, "x", ["a"], (i) => ({ i }), 20);
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`)) === 40, 30_000, "40 derived events");
      await runtime.idle();
      const derived = await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${name}.>`);
      const texted = derived.filter((d) => d.headers["Flex-Type"] === "Texted");
      expect(texted.map((d) => d.data)).toEqual(Array.from({ length: 20 }, (_, i) => JSON.stringify({ s: `é${i}🎉`, n: null })));
      expect(texted.every((d) => d.subject === `drv.${tenant}.${name}.a`)).toBe(true);
      const keyed = derived.filter((d) => d.headers["Flex-Type"] === "Keyed");
      expect(keyed.map((d) => [d.subject, d.data, d.msgId])).toEqual(Array.from({ length: 20 }, (_, i) => [`drv.${tenant}.${name}.u${i % 2}`, `[${i}]`, `${name}:${keyed[i]!.headers["Flex-Source-Seq"]}:1`]));
      expect(runtime.metrics()[0]!.outputs).toBe(40);
    } finally {
      await runtime.close();
    }
  });
});
