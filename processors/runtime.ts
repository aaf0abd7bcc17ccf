import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUCKETS, createPublisher, encodeEvent, eventSubject, InvalidOptionError, METRICS_CATEGORY, METRICS_EVENT_TYPES, openTtlKv, STREAMS, SYSTEM_TENANT } from "../streams/index.js";
import type { MetricsReported, Publisher, PublisherStats } from "../streams/index.js";
import { DEFAULT_LEASE_TTL_MS } from "./config.js";
import type { ResolvedProcessor } from "./config.js";
import { RuntimeClosedError, UnknownProcessorError } from "./errors.js";
import type { ProcessorMetrics } from "./metrics.js";
import { createProcessorPool } from "./pool.js";
import type { InvokeResult, ProcessorPool } from "./pool.js";
import { PartitionedProcessor } from "./partitioned.js";
import { ensurePartitionStream } from "./partition-stream.js";
import { ProcessorRunner } from "./runner.js";
import type { RunnerContext } from "./runner.js";
import type { ProcessorDefinition } from "./types.js";
import { isRemoteKind } from "./remote.js";
import type { RemoteKinds } from "./remote.js";
import { BUILTIN_PROCESSORS } from "./builtin/index.js";

export { CONSUMER_PREFIX } from "./runner.js";
export { REDRIVE_CONSUMER_PREFIX } from "./recovery.js";
export { stateKvKey } from "./entry.js";

/** Key states kept in memory per processor. */
export const DEFAULT_MAX_KEYS_IN_MEMORY = 100_000;
const MINUTE_MS = 60_000;
/** Wait before a processor that failed to commit starts again, in ms. */
const RESTART_DELAY_MS = 1_000;

/** Options of {@link startProcessorRuntime}. */
export interface ProcessorRuntimeOptions {
  /** Processors from the `processors:` section (see `processorsSection`). */
  readonly processors: readonly ResolvedProcessor[];
  /** Worker threads. @default availableParallelism() */
  readonly threads?: number;
  /** Per-worker heap limit in MiB. @default 512 */
  readonly workerMemoryMb?: number;
  /** Publish `MetricsReported` events this often, in ms; 0 turns them off. @default 60000 */
  readonly metricsIntervalMs?: number;
  /**
   * Key states kept in memory per processor; beyond it, the least recently used keys with
   * nothing in flight are dropped and reloaded from `flex_state` when they come back.
   * @default 100000
   */
  readonly maxKeysInMemory?: number;
  /** Extra definition modules (URLs exporting `definitions`), loaded by the workers too. */
  readonly modules?: readonly string[];
  /** Definitions of those modules, for `invoke` and option checks on this thread. */
  readonly definitions?: readonly ProcessorDefinition[];
  /**
   * This instance's name in `flex_leases`. Only the instance holding a processor's lease runs
   * it; the others stand by and take over once it is released or has expired. A restarted
   * instance with the same id takes its own lease back at once.
   * @default `<hostname>-<pid>-<random>`
   */
  readonly instanceId?: string;
  /**
   * A lease not renewed (every third of it) for this long may be taken by another instance;
   * keep it at or below the `flex_leases` bucket's max age (`leaseTtlMs` of the topology).
   * @default 30000
   */
  readonly leaseTtlMs?: number;
  /**
   * Where derived events, dead letters and checkpoints are published; give one with
   * `batching: "auto"` to keep one ack per commit's outputs rather than one per output.
   * @default a publisher with `batching: "auto"`, created and closed by the runtime
   */
  readonly publisher?: Publisher;
  /**
   * Kinds served outside the pool (`<plugin>/<kind>`, see processors/remote.ts): their
   * batches go through `remote.process` instead of the workers. @default none (a processor
   * of a remote kind is then refused with `FLEX_PROCESSOR_UNKNOWN`)
   */
  readonly remote?: RemoteKinds;
  readonly log?: (line: string, level?: "warn" | "error") => void;
}

/** The running processors. */
export interface ProcessorRuntime extends AsyncDisposable {
  /** Names of the running processors. */
  readonly processors: readonly string[];
  /** False once `close()` was called (what `/readyz` checks). */
  readonly running: boolean;
  /** A snapshot of each processor's counters, latency percentiles and queue depth (for `/metrics`). */
  metrics(): ProcessorMetrics[];
  /** Messages not yet acknowledged per processor consumer (`{ name, lag }`, the gateway's lag source). */
  lag(): Promise<Array<{ name: string; lag: number }>>;
  /**
   * Runs a processor kind once on the pool, outside any stream: options are validated
   * (errors name `options.<field>`), `state` defaults to the kind's initial state.
   * Workflows call processors through this.
   */
  invoke(kind: string, options: unknown, inputs: readonly InvokeInput[], state?: unknown, signal?: AbortSignal): Promise<InvokeResult>;
  /** Resolves once every message fetched so far is acknowledged (tests, benches). */
  idle(): Promise<void>;
  readonly pool: ProcessorPool;
  /** Acks, failures and retries of the publisher the derived events go through. */
  readonly publisherStats: PublisherStats;
  /** Stops fetching, finishes and acknowledges in-flight work, checkpoints, closes the pool. */
  close(): Promise<void>;
}

/** An input of {@link ProcessorRuntime.invoke}; missing fields get neutral values. */
export interface InvokeInput {
  readonly data: unknown;
  readonly key?: string;
  readonly tenant?: string;
  readonly type?: string;
  readonly time?: string;
  readonly seq?: number;
  readonly subject?: string;
}

/** Starts one durable consumer and partitioned pipeline per processor on a shared pool. */
export async function startProcessorRuntime(nc: NatsConnection, options: ProcessorRuntimeOptions): Promise<ProcessorRuntime> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const definitions = new Map<string, ProcessorDefinition>(BUILTIN_PROCESSORS);
  for (const d of options.definitions ?? []) definitions.set(d.kind, d);
  const maxKeys = options.maxKeysInMemory ?? DEFAULT_MAX_KEYS_IN_MEMORY;
  if (!Number.isInteger(maxKeys) || maxKeys < 1) throw new InvalidOptionError("maxKeysInMemory", maxKeys, "an integer from 1 and up");
  const pool = createProcessorPool({
    ...(options.threads === undefined ? {} : { threads: options.threads }),
    ...(options.workerMemoryMb === undefined ? {} : { workerMemoryMb: options.workerMemoryMb }),
    ...(options.modules ? { modules: options.modules } : {}),
  });
  // Fast-ingest batches: the outputs of a commit go as one batch, acknowledged once instead
  // of one PubAck per derived event (same ids, so a replay is still stored once).
  const publisher = options.publisher ?? createPublisher(nc, { batching: "auto" });
  const jsm = await jetstreamManager(nc);
  const kvm = new Kvm(nc);
  const kv = await kvm.open(BUCKETS.state);
  const leases = await openTtlKv(nc, BUCKETS.leases);
  const instanceId = options.instanceId ?? `${hostname()}-${process.pid}-${randomBytes(4).toString("hex")}`;
  const leaseTtlMs = options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
  if (!Number.isInteger(leaseTtlMs) || leaseTtlMs < 200) throw new InvalidOptionError("leaseTtlMs", leaseTtlMs, "an integer number of ms from 200 and up");
  const runners = new Map<string, ProcessorRunner | PartitionedProcessor>();
  let closing = false;
  const restarts = new Set<Promise<void>>();

  const ctx: RunnerContext = { nc, jsm, kv, pool, publisher, log, maxKeys, leases, instanceId, leaseTtlMs, ...(options.remote ? { remote: options.remote } : {}) };
  const create = (cfg: ResolvedProcessor): ProcessorRunner | PartitionedProcessor => (cfg.scale === "partitioned" ? new PartitionedProcessor(ctx, cfg) : new ProcessorRunner(ctx, cfg, onFailure));
  const onFailure = (runner: ProcessorRunner, _err: unknown): void => {
    const restart = (async () => {
      await runner.stop();
      if (closing) return;
      await sleep(RESTART_DELAY_MS);
      if (closing) return;
      const fresh = create(runner.cfg);
      fresh.totals = runner.totals;
      runners.set(runner.cfg.name, fresh);
      await fresh.start().catch((err: unknown) => log(`flexcore: processor ${runner.cfg.name} could not restart: ${(err as Error).message}`, "error"));
    })();
    restarts.add(restart);
    void restart.finally(() => restarts.delete(restart));
  };

  try {
    for (const cfg of options.processors) {
      if (isRemoteKind(cfg.kind) ? !options.remote?.has(cfg.kind) : !definitions.has(cfg.kind)) throw new UnknownProcessorError(cfg.kind, [...definitions.keys()]);
    }
    // Workers load their code while the consumers are set up.
    const warm = pool.warmUp();
    warm.catch(() => undefined);
    for (const cfg of options.processors) {
      if (cfg.scale === "partitioned") await ensurePartitionStream(jsm, cfg.name, cfg.subjects, cfg.partitions);
      const runner = create(cfg);
      runners.set(cfg.name, runner);
      await runner.start();
    }
    const known = await warm;
    for (const cfg of options.processors) {
      if (!isRemoteKind(cfg.kind) && !known.includes(cfg.kind)) throw new UnknownProcessorError(cfg.kind, known);
    }
  } catch (err) {
    closing = true;
    await Promise.all([...runners.values()].map((r) => r.stop()));
    await pool.close();
    if (!options.publisher) await publisher.close();
    throw err;
  }

  // Metrics: counters since the last report, published as MetricsReported events.
  const intervalMs = options.metricsIntervalMs ?? 60_000;
  let last = { at: performance.now(), processed: new Map<string, number>(), errors: new Map<string, number>() };
  const snapshot = (): ProcessorMetrics[] => {
    const now = performance.now();
    const elapsed = Math.max(1, now - last.at) / 1000;
    return [...runners.values()].map((r) => {
      const p = r.latency.percentiles();
      return {
        processor: r.cfg.name,
        kind: r.cfg.kind,
        owner: r.owner,
        ...(r instanceof PartitionedProcessor ? { partitions: r.partitions } : {}),
        processed: r.totals.processed,
        outputs: r.totals.outputs,
        errors: r.totals.errors,
        deadLettered: r.totals.deadLettered,
        redelivered: r.totals.redelivered,
        inFlight: r.inFlight,
        queueDepth: r.queued + pool.queueSize,
        throughput: (r.totals.processed - (last.processed.get(r.cfg.name) ?? 0)) / elapsed,
        p50: p.p50,
        p95: p.p95,
        p99: p.p99,
      };
    });
  };
  // One MetricsReported per processor and report, in the shape of the performance_metrics
  // read model: `minute` is the UTC minute the report belongs to, and `throughput` is this report's share of that minute's rate (count / 60 s), so
  // reports of several instances, or several reports in one minute, add up.
  const report = async (): Promise<void> => {
    const snap = snapshot();
    const at = new Date();
    const minute = new Date(Math.floor((at.getTime() - 1) / MINUTE_MS) * MINUTE_MS).toISOString().replace(".000Z", "Z");
    for (const s of snap) {
      const component = s.processor;
      const count = s.processed - (last.processed.get(s.processor) ?? 0);
      const data: MetricsReported & { readonly queueDepth: number; readonly inFlight: number } = {
        component,
        kind: "processor",
        minute,
        count,
        errors: s.errors - (last.errors.get(s.processor) ?? 0),
        p50Ms: round(s.p50),
        p95Ms: round(s.p95),
        p99Ms: round(s.p99),
        throughput: round(count / (MINUTE_MS / 1000)),
        queueDepth: s.queueDepth,
        inFlight: s.inFlight,
      };
      const event = encodeEvent({ id: `metrics:processor:${component}:${at.getTime()}`, type: METRICS_EVENT_TYPES.reported, time: at, data });
      await publisher.publish(eventSubject(SYSTEM_TENANT, METRICS_CATEGORY, component), event.data, { headers: event.headers }).catch((err: unknown) => log(`flexcore: metrics of ${component} not published: ${(err as Error).message}`, "warn"));
    }
    last = { at: performance.now(), processed: new Map(snap.map((s) => [s.processor, s.processed])), errors: new Map(snap.map((s) => [s.processor, s.errors])) };
  };
  // Reports on minute boundaries when the interval is a whole number of minutes, so each
  // report covers exactly the minute it names.
  let timer: NodeJS.Timeout | undefined;
  let firstTimer: NodeJS.Timeout | undefined;
  if (intervalMs > 0) {
    const delay = intervalMs % MINUTE_MS === 0 ? MINUTE_MS - (Date.now() % MINUTE_MS) : intervalMs;
    firstTimer = setTimeout(() => {
      void report();
      timer = setInterval(() => void report(), intervalMs);
      timer.unref();
    }, delay);
    firstTimer.unref();
  }

  let closed: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closed ??= (async () => {
      closing = true;
      if (firstTimer) clearTimeout(firstTimer);
      if (timer) clearInterval(timer);
      await Promise.all([...runners.values()].map((r) => r.stop()));
      await Promise.all([...restarts]);
      await Promise.all([...runners.values()].map((r) => r.stop()));
      if (intervalMs > 0) await report().catch(() => undefined);
      await pool.close();
      if (!options.publisher) await publisher.close();
      else await publisher.flush();
    })();
    return closed;
  };

  return {
    processors: options.processors.map((p) => p.name),
    metrics: snapshot,
    get running() {
      return !closing;
    },
    get publisherStats() {
      return publisher.stats;
    },
    async lag() {
      const consumers = [...runners.values()].flatMap((r): Array<{ stream: string; name: string }> => (r instanceof PartitionedProcessor ? r.consumers() : [{ stream: STREAMS.events, name: r.consumerName }]));
      return Promise.all(
        consumers.map(async (c) => {
          const info = await jsm.consumers.info(c.stream, c.name).catch(() => undefined);
          return { name: c.name, lag: info ? info.num_pending + info.num_ack_pending : 0 };
        }),
      );
    },
    async invoke(kind, rawOptions, inputs, state, signal) {
      if (closing) throw new RuntimeClosedError("invoke");
      const def = definitions.get(kind);
      if (!def) throw new UnknownProcessorError(kind, [...definitions.keys()]);
      const validated = def.validateOptions(rawOptions ?? {}, "options");
      const full = inputs.map((x, i) => ({
        tenant: x.tenant ?? SYSTEM_TENANT,
        key: x.key ?? "invoke",
        subject: x.subject ?? `evt.${x.tenant ?? SYSTEM_TENANT}.invoke.${x.key ?? "invoke"}`,
        seq: x.seq ?? i + 1,
        type: x.type ?? "Invoke",
        data: x.data,
        time: x.time ?? new Date(0).toISOString(),
      }));
      return pool.invoke(kind, validated, full, state, signal);
    },
    async idle() {
      await Promise.all([...runners.values()].map((r) => r.idle()));
    },
    pool,
    close,
    [Symbol.asyncDispose]: close,
  };
}

function round(x: number): number {
  return Number.isFinite(x) ? Math.round(x * 1000) / 1000 : 0;
}
