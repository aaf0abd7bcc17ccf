/**
 * The Piscina worker: runs processor tasks. Built-in definitions come from the registry;
 * `workerData.modules` names extra modules (plugins, tests) whose `definitions` export
 * adds kinds.
 */
import { move as piscinaMove, transferableSymbol, valueSymbol, workerData } from "piscina";
import { BUILTIN_PROCESSORS } from "./builtin/index.js";
import { anomaly, scoreSeries } from "./builtin/anomaly.js";
import type { AnomalyOptions, AnomalyState } from "./builtin/anomaly.js";
import type { BatchResult, BatchTask, InvokeTask, KeyFailure, SeriesResult, SeriesTask, WorkerTask } from "./task.js";
import type { ProcessorDefinition, ProcessorInput, ProcessorOutput } from "./types.js";

const definitions = new Map<string, ProcessorDefinition>(BUILTIN_PROCESSORS);
const modules = ((workerData as { modules?: string[] } | undefined)?.modules ?? []) as string[];
for (const url of modules) {
  const mod = (await import(url)) as { definitions?: readonly ProcessorDefinition[] };
  for (const d of mod.definitions ?? []) definitions.set(d.kind, d);
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function definition(kind: string): ProcessorDefinition {
  const d = definitions.get(kind);
  if (!d) throw new Error(`unknown processor kind ${JSON.stringify(kind)} in the worker`);
  return d;
}

function parseBody(bytes: Uint8Array): unknown {
  if (bytes.length === 0) return null;
  const text = decoder.decode(bytes);
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** `Flex-Type` and `Flex-Time` of a NATS header block (`NATS/1.0\r\nKey: value\r\n...`). */
function typeAndTime(block: Uint8Array): { type: string | undefined; time: string | undefined } {
  let type: string | undefined;
  let time: string | undefined;
  if (block.length === 0) return { type, time };
  const text = decoder.decode(block);
  let start = text.indexOf("\r\n") + 2;
  while (start > 1 && start < text.length && (type === undefined || time === undefined)) {
    let end = text.indexOf("\r\n", start);
    if (end < 0) end = text.length;
    const colon = text.indexOf(":", start);
    if (colon > start && colon < end) {
      const name = text.slice(start, colon).toLowerCase();
      if (name === "flex-type") type ??= text.slice(colon + 1, end).trim() || undefined;
      else if (name === "flex-time") time ??= text.slice(colon + 1, end).trim() || undefined;
    }
    start = end + 2;
  }
  return { type, time };
}

function runBatch(task: BatchTask): { result: BatchResult; transfer: ArrayBuffer[] } {
  const def = definition(task.kind);
  const n = task.seqs.length;
  // Group event indexes by key, keeping their order.
  const groups: number[][] = task.keys.map(() => []);
  for (let i = 0; i < n; i++) groups[task.keyIndex[i]!]!.push(i);
  const inSubjects = task.subjects.split("\n");

  const states: Array<string | null> = new Array<string | null>(task.keys.length).fill(null);
  const failures: KeyFailure[] = [];
  const outEvent: number[] = [];
  const outIndex: number[] = [];
  const outTypes: string[] = [];
  const outKeys: Array<string | null> = [];
  const outChunks: Uint8Array[] = [];
  let outBytes = 0;

  for (let k = 0; k < groups.length; k++) {
    const idx = groups[k]!;
    if (idx.length === 0) {
      states[k] = task.states[k] ?? null;
      continue;
    }
    try {
      const tenant = task.tenants[k]!;
      const key = task.keys[k]!;
      const inputs: ProcessorInput[] = idx.map((i) => {
        const h = typeAndTime(task.body.subarray(task.offsets[i]!, task.headerEnds[i]!));
        return {
          tenant,
          key,
          subject: inSubjects[i]!,
          seq: task.seqs[i]!,
          type: h.type ?? "unknown",
          data: parseBody(task.body.subarray(task.headerEnds[i]!, task.offsets[i + 1]!)),
          time: h.time ?? new Date(task.storedAt[i]!).toISOString(),
        };
      });
      const raw = task.states[k];
      const state = raw === null || raw === undefined ? def.initialState(task.options, key) : JSON.parse(raw);
      const r = def.process(state, inputs, task.options);
      if (r.outputs.length !== inputs.length) throw new Error(`process returned ${r.outputs.length} output lists for ${inputs.length} inputs`);
      // Encode everything of the key before committing any of it, so a failure leaves no trace.
      const chunks: Uint8Array[] = [];
      const ev: number[] = [];
      const ix: number[] = [];
      const types: string[] = [];
      const keys: Array<string | null> = [];
      r.outputs.forEach((outs: readonly ProcessorOutput[], j) => {
        outs.forEach((o, m) => {
          const json = JSON.stringify(o.data);
          if (json === undefined) throw new Error(`output ${m} of sequence ${inputs[j]!.seq} is not JSON-serialisable`);
          chunks.push(encoder.encode(json));
          ev.push(idx[j]!);
          ix.push(m);
          types.push(o.type);
          keys.push(o.key ?? null);
        });
      });
      const stateJson = JSON.stringify(r.state);
      if (stateJson === undefined) throw new Error("the state is not JSON-serialisable");
      states[k] = stateJson;
      for (const c of chunks) {
        outChunks.push(c);
        outBytes += c.length;
      }
      outEvent.push(...ev);
      outIndex.push(...ix);
      outTypes.push(...types);
      outKeys.push(...keys);
    } catch (err) {
      const e = err as { name?: unknown; code?: unknown; message?: unknown };
      failures.push({
        keyIndex: k,
        name: typeof e?.name === "string" ? e.name : "Error",
        code: typeof e?.code === "string" ? e.code : undefined,
        message: typeof e?.message === "string" ? e.message : String(err),
      });
      states[k] = null;
    }
  }

  const outBody = new Uint8Array(outBytes);
  const outOffsets = new Uint32Array(outChunks.length + 1);
  let pos = 0;
  outChunks.forEach((c, i) => {
    outBody.set(c, pos);
    pos += c.length;
    outOffsets[i + 1] = pos;
  });
  const result: BatchResult = {
    states,
    outEvent: Uint32Array.from(outEvent),
    outIndex: Uint32Array.from(outIndex),
    outTypes,
    outKeys,
    outBody,
    outOffsets,
    failures,
  };
  return { result, transfer: [outBody.buffer as ArrayBuffer, outOffsets.buffer as ArrayBuffer, result.outEvent.buffer as ArrayBuffer, result.outIndex.buffer as ArrayBuffer] };
}

function runSeries(task: SeriesTask): { result: SeriesResult; transfer: ArrayBuffer[] } {
  if (task.kind !== anomaly.kind) throw new Error(`processor kind ${JSON.stringify(task.kind)} has no typed-array path`);
  const options = task.options as AnomalyOptions;
  const state: AnomalyState = task.state === null ? anomaly.initialState(options, task.key) : (JSON.parse(task.state) as AnomalyState);
  const scores = new Float64Array(task.values.length);
  const flags = new Uint8Array(task.values.length);
  const flagged = scoreSeries(state, options, task.key, task.values, scores, flags);
  return { result: { state: JSON.stringify(state), scores, flags, flagged }, transfer: [scores.buffer as ArrayBuffer, flags.buffer as ArrayBuffer] };
}

function runInvoke(task: InvokeTask): { state: unknown; outputs: ReadonlyArray<readonly ProcessorOutput[]> } {
  const def = definition(task.kind);
  const state = task.state === undefined || task.state === null ? def.initialState(task.options, String((task.inputs[0] as { key?: unknown } | undefined)?.key ?? "")) : task.state;
  const r = def.process(state, task.inputs as ProcessorInput[], task.options);
  return { state: r.state, outputs: r.outputs };
}

const hoard: unknown[] = [];

/** Piscina entry point. */
export default function run(task: WorkerTask): unknown {
  switch (task.op) {
    case "batch": {
      const { result, transfer } = runBatch(task);
      return move(result, transfer);
    }
    case "series": {
      const { result, transfer } = runSeries(task);
      return move(result, transfer);
    }
    case "invoke":
      return runInvoke(task);
    case "ping":
      return [...definitions.keys()];
    case "fault":
      if (task.fault === "throw") throw new Error("fault injected: throw");
      if (task.fault === "exit") process.exit(3);
      for (;;) hoard.push(new Array(1_000_000).fill(hoard.length));
  }
  return undefined;
}

// Piscina transfers the listed buffers when the result is wrapped as a Transferable.
function move<T extends object>(value: T, buffers: ArrayBuffer[]): unknown {
  return piscinaMove({
    get [transferableSymbol](): ArrayBuffer[] {
      return buffers;
    },
    get [valueSymbol](): T {
      return value;
    },
  } as unknown as ArrayBuffer);
}
