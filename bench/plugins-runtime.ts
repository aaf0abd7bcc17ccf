/**
 * json-transform as the processor runtime really runs a plugin: a processor of kind
 * `json-transform/json-transform` fed from FLEX_EVENTS by its durable consumer, batches of 256
 * per key lane, states checkpointed in flex_state, outputs published to FLEX_DERIVED with
 * their deterministic ids — beside the same processor with the same transform in-process (a
 * `RemoteKinds` that calls `compileTransform` on the runtime's thread instead of the plugin),
 * over the same events, with the same batch size and lanes. The only difference between the
 * two is the plugin call: JSON encoding, a NATS request/reply, the plugin process's work and
 * the reply's checks.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { compileTransform, createPluginHost } from "../plugins/index.js";
import type { ProcessorOutput } from "../plugins/index.js";
import { parseConfig, pipelineSections, startProcessorRuntime } from "../processors/index.js";
import type { RemoteBatch, RemoteBatchResult, RemoteKinds } from "../processors/index.js";
import { createPublisher, encodeEvent, ensureTopology } from "../streams/index.js";
import { runTasks } from "./harness.js";
import type { BenchResult } from "./harness.js";

const TENANT = "benchrt";
const KEYS = 64;
const BATCH = 256;
/** The runtime's default lanes per processor (`partitions`), and one lane (one batch at a time). */
const LANES = [4, 1] as const;
const IN_PROCESS_KIND = "inproc/json-transform";
const PLUGIN_KIND = "json-transform/json-transform";

/** The same transform on the runtime's thread: what the plugin's handler does, without the call. */
function inProcessKinds(): RemoteKinds {
  const compiled = new Map<string, ReturnType<typeof compileTransform>>();
  return {
    has: (kind) => kind === IN_PROCESS_KIND,
    isPermanent: () => false,
    async process(batch: RemoteBatch): Promise<RemoteBatchResult> {
      const key = JSON.stringify(batch.options);
      let t = compiled.get(key);
      if (!t) compiled.set(key, (t = compileTransform(batch.options as Parameters<typeof compileTransform>[0])));
      const type = (batch.options as { type?: string }).type ?? "Transformed";
      const outputs: ProcessorOutput[] = [];
      for (let i = 0; i < batch.inputs.length; i++) {
        const r = t(batch.inputs[i]!.data);
        if (r.kept) outputs.push({ input: i, type, data: r.data });
      }
      return { states: {}, outputs };
    },
  };
}

async function load(nc: NatsConnection, events: number): Promise<void> {
  const publisher = createPublisher(nc);
  const pending: Promise<unknown>[] = [];
  for (let i = 0; i < events; i++) {
    const key = `c${i % KEYS}`;
    const e = encodeEvent({ id: `${TENANT}-${i}`, type: "OrderPlaced", time: new Date(Date.UTC(2026, 0, 1) + i), data: { order: { id: i, total: String((i % 100) + 0.5), lines: [{ sku: "A", qty: 1 }] }, customer: { email: `u${i}@example.com`, tier: i % 3 ? "gold" : null, address: { city: "Lyon" } } } });
    pending.push(publisher.publish(`evt.${TENANT}.orders.${key}`, e.data, { headers: e.headers }));
    if (pending.length >= 8192) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
  await publisher.close();
}

let run = 0;

/**
 * json-transform through the processor runtime, plugin vs in-process, `events` events.
 * `nc` must be FlexCore's service user on a server where the json-transform plugin runs.
 */
export async function transformThroughRuntime(nc: NatsConnection, events: number, options: unknown, log: (line: string) => void, pluginCpuMs: () => number = () => Number.NaN): Promise<BenchResult[]> {
  await ensureTopology(nc);
  log(`  loading ${events} events into FLEX_EVENTS`);
  await load(nc, events);
  const plugin = createPluginHost({ nc, plugins: { managed: [], external: [{ name: "json-transform", managed: false, service: "json-transform", enabled: true, tenant: undefined }] } });
  const local = inProcessKinds();
  const remote: RemoteKinds = {
    has: (k) => local.has(k) || plugin.has(k),
    isPermanent: (e) => plugin.isPermanent(e),
    process: (b, signal) => (local.has(b.kind) ? local.process(b, signal) : plugin.process(b, signal)),
  };
  const outputsOf: Record<string, number> = {};
  /** CPU time of this process (the runtime, publisher, client) per event, in µs, per task. */
  const cpuOf: Record<string, number[]> = {};
  /** CPU time of the plugin's process per event, in µs, per task. */
  const pluginCpuOf: Record<string, number[]> = {};
  const once = async (kind: string, lanes: number): Promise<void> => {
    run += 1;
    const name = `jt${run}`;
    const yaml = `processors:\n  - name: ${name}\n    kind: ${kind}\n    subjects: ["evt.${TENANT}.orders.*"]\n    partitions: ${lanes}\n    batch_size: ${BATCH}\n    options: ${JSON.stringify(options)}\n`;
    const processors = parseConfig(yaml, pipelineSections({ threads: 1 })).processors;
    const cpu = process.cpuUsage();
    const pluginCpu = pluginCpuMs();
    const runtime = await startProcessorRuntime(nc, { processors, threads: 1, metricsIntervalMs: 0, remote, log: () => undefined });
    try {
      for (;;) {
        const m = runtime.metrics()[0]!;
        if (m.processed >= events) {
          const used = process.cpuUsage(cpu);
          (cpuOf[`${kind}/${lanes}`] ??= []).push((used.user + used.system) / events);
          (pluginCpuOf[`${kind}/${lanes}`] ??= []).push(((pluginCpuMs() - pluginCpu) * 1000) / events);
          outputsOf[`${kind}/${lanes}`] = m.outputs;
          return;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      await runtime.close();
    }
  };
  const tasks = LANES.flatMap((lanes) => [
    { name: `json-transform.runtime.in-process.lanes-${lanes}`, unit: "events/s", ops: events, fn: () => once(IN_PROCESS_KIND, lanes) },
    { name: `json-transform.runtime.plugin.lanes-${lanes}`, unit: "events/s", ops: events, fn: () => once(PLUGIN_KIND, lanes), extra: lanes === 4 ? { goal: "≥ 30000" } : {} },
  ]);
  const measured = await runTasks(tasks, { log, iterations: 3 });
  const med = (xs: readonly number[] = []) => [...xs].sort((a, b) => a - b)[xs.length >> 1] ?? Number.NaN;
  const results: BenchResult[] = measured.map((r) => {
    const key = `${r.name.includes(".plugin.") ? PLUGIN_KIND : IN_PROCESS_KIND}/${r.name.slice(r.name.lastIndexOf("-") + 1)}`;
    return { ...r, extra: { ...r.extra, hostCpuUsPerEvent: med(cpuOf[key]), ...(key.startsWith(PLUGIN_KIND) ? { pluginCpuUsPerEvent: med(pluginCpuOf[key]) } : {}) } };
  });
  for (const lanes of LANES) {
    if (outputsOf[`${IN_PROCESS_KIND}/${lanes}`] !== outputsOf[`${PLUGIN_KIND}/${lanes}`]) throw new Error(`json-transform through the runtime: the plugin made ${outputsOf[`${PLUGIN_KIND}/${lanes}`]} outputs, in-process ${outputsOf[`${IN_PROCESS_KIND}/${lanes}`]}`);
    const base = measured.find((r) => r.name === `json-transform.runtime.in-process.lanes-${lanes}`)!;
    const viaPlugin = measured.find((r) => r.name === `json-transform.runtime.plugin.lanes-${lanes}`)!;
    const ratio = viaPlugin.median / base.median;
    results.push({ name: `json-transform.runtime.plugin/in-process.lanes-${lanes}`, unit: "x", median: ratio, samples: [ratio], extra: lanes === 4 ? { goal: "≥ 0.4", met: ratio >= 0.4, rateGoalMet: viaPlugin.median >= 30_000 } : {} });
  }
  return results;
}
