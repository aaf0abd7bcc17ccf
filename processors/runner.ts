/**
 * One processor's pipeline on this instance: the lease, the key lanes (per-key order, lanes
 * in parallel on the pool), the key states and their checkpoints, and the commit order
 * (outputs, then checkpoints, then the ack). Fetching lives in delivery.ts, recovery in
 * recovery.ts, the shapes of tasks and outputs in outputs.ts.
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { Consumer, ConsumerMessages, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { dlqSubject, STREAMS } from "../streams/index.js";
import type { Publisher, TtlKv } from "../streams/index.js";
import type { ResolvedProcessor } from "./config.js";
import { createConsumer, Deliveries, fetchLoop, resetConsumer } from "./delivery.js";
import type { DeliverySource } from "./delivery.js";
import { fnv, metaOf, rawOf, stateKvKey } from "./entry.js";
import { originOf } from "./partition-stream.js";
import type { Checkpoints, Entry, KeyInfo, KeyState, Outcome, PendingOutput, RunnerTotals } from "./entry.js";
import { ProcessorFailedError } from "./errors.js";
import { Lease, processorLeaseKey } from "./lease.js";
import { LatencyWindow } from "./metrics.js";
import { buildTask, checkpointMessage, collectOutputs, deadLetter } from "./outputs.js";
import type { FailureInfo } from "./outputs.js";
import type { ProcessorPool } from "./pool.js";
import { careful, Markers, redriveLoop } from "./recovery.js";
import type { RecoveryHost } from "./recovery.js";
import type { BatchResult } from "./task.js";
import { isRemoteKind } from "./remote.js";
import type { RemoteBatchResult, RemoteInput, RemoteKinds } from "./remote.js";
import { decodeData } from "../streams/index.js";

/** Prefix of the durable consumer of each processor: `proc_<name>`. */
export const CONSUMER_PREFIX = "proc_";
/** Header naming the instance that produced an output of a partitioned processor. */
export const INSTANCE_HEADER = "Flex-Instance";
/** A redriven dead letter of a key held by another partition goes back after this long, in ms. */
const REDRIVE_ELSEWHERE_MS = 100;
/** How long a partition waits for a full batch before it runs a partial one, in ms. */
const LINGER_MS = 5;
/** Batches of one partition processed ahead of their commit. */
const LOOKAHEAD = 2;

/** A lane: keys hashed to it keep their order; lanes run in parallel. */
interface Lane {
  queue: Entry[];
  busy: boolean;
  linger: NodeJS.Timeout | undefined;
  commitTail: Promise<void>;
  uncommitted: number;
}

/** What a runner shares with the runtime around it. */
export interface RunnerContext {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly kv: KV;
  readonly pool: ProcessorPool;
  readonly publisher: Publisher;
  readonly log: (line: string, level?: "warn" | "error") => void;
  readonly maxKeys: number;
  readonly leases: TtlKv;
  readonly instanceId: string;
  readonly leaseTtlMs: number;
  /** Kinds served outside the pool (plugins); see remote.ts. */
  readonly remote?: RemoteKinds;
}

/**
 * Where a runner reads and what it holds: the whole processor (`FLEX_EVENTS`, consumer
 * `proc_<name>`, lease `proc.<name>`, `partitions` lanes), or one partition of a partitioned
 * processor (see partitioned.ts).
 */
export interface RunnerPlacement {
  readonly source: DeliverySource;
  readonly leaseKey: string;
  /** Sets apart this runner's run and head markers from the other partitions' (`""` for the whole processor). */
  readonly markerSuffix: string;
  readonly lanes: number;
  /** Set for a partition: messages come from the partition stream (a work queue, acked one by one). */
  readonly partition?: {
    readonly index: number;
    /** Whether this partition holds the key of an event subject (for redriven dead letters). */
    readonly holds: (subject: string) => boolean;
  };
  /** Shared by the partitions of one processor on this instance, so its figures add up. */
  readonly totals?: RunnerTotals;
  readonly latency?: LatencyWindow;
}

/** The placement of a processor run whole by one instance. */
export function wholePlacement(cfg: ResolvedProcessor): RunnerPlacement {
  return { source: { stream: STREAMS.events, consumerName: `${CONSUMER_PREFIX}${cfg.name}`, filters: cfg.subjects }, leaseKey: processorLeaseKey(cfg.name), markerSuffix: "", lanes: cfg.partitions };
}

export type { RunnerTotals } from "./entry.js";

export class ProcessorRunner implements RecoveryHost {
  readonly cfg: ResolvedProcessor;
  readonly consumerName: string;
  readonly source: DeliverySource;
  readonly markers: Markers;
  readonly deliveries: Deliveries;
  readonly placement: RunnerPlacement;
  readonly #ctx: RunnerContext;
  readonly #lanes: Lane[];
  // Insertion order is recency: a state is re-inserted whenever it changes.
  readonly #states = new Map<string, KeyState>();
  // Per subject and per key (bounded: cleared when they outgrow the key states held).
  #bySubject = new Map<string, KeyInfo>();
  readonly #byKey = new Map<string, KeyInfo>();
  readonly #loading = new Map<string, Promise<KeyState>>();
  readonly #waiters: Array<() => void> = [];
  readonly #idleWaiters: Array<() => void> = [];
  readonly #onFailure: (runner: ProcessorRunner, err: unknown) => void;
  readonly #lease: Lease;
  readonly #leasePollMs: number;
  #standby: Promise<void> | undefined;
  #consumer: Consumer | undefined;
  /** The pull in progress (closed by `stop`). */
  messages: ConsumerMessages | undefined;
  redriveMessages: ConsumerMessages | undefined;
  #fetching: Promise<void> | undefined;
  #redriving: Promise<void> | undefined;
  #keepAlive: NodeJS.Timeout | undefined;
  #inFlight = 0;
  #stopping = false;
  #failed = false;
  readonly latency: LatencyWindow;
  totals: RunnerTotals;
  readonly #outputHeaders: ReadonlyArray<readonly [string, string]>;

  constructor(ctx: RunnerContext, cfg: ResolvedProcessor, onFailure: (runner: ProcessorRunner, err: unknown) => void, placement: RunnerPlacement = wholePlacement(cfg)) {
    this.#ctx = ctx;
    this.placement = placement;
    const what = placement.partition ? `partition ${placement.partition.index} of processor ${cfg.name}` : `processor ${cfg.name}`;
    this.#lease = new Lease(ctx.leases, placement.leaseKey, ctx.instanceId, ctx.leaseTtlMs, () => this.fail(new Error(`instance ${ctx.instanceId} lost the lease of ${what}`)));
    this.#leasePollMs = Math.min(1_000, Math.max(50, Math.floor(ctx.leaseTtlMs / 4)));
    this.cfg = cfg;
    this.source = placement.source;
    this.consumerName = placement.source.consumerName;
    this.markers = new Markers(ctx.kv, cfg.name, placement.markerSuffix);
    this.deliveries = new Deliveries(placement.partition !== undefined);
    this.latency = placement.latency ?? new LatencyWindow();
    this.totals = placement.totals ?? { processed: 0, outputs: 0, errors: 0, deadLettered: 0, redelivered: 0 };
    this.#outputHeaders = placement.partition ? [[INSTANCE_HEADER, ctx.instanceId]] : [];
    this.#onFailure = onFailure;
    this.#lanes = Array.from({ length: placement.lanes }, () => ({ queue: [], busy: false, linger: undefined, commitTail: Promise.resolve(), uncommitted: 0 }));
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  get queued(): number {
    let n = 0;
    for (const p of this.#lanes) n += p.queue.length;
    return n;
  }

  /** Lanes processed in parallel. */
  get lanes(): number {
    return this.#lanes.length;
  }

  get stopping(): boolean {
    return this.#stopping;
  }

  get failed(): boolean {
    return this.#failed;
  }

  /** Whether this instance holds the processor's lease (and runs it). */
  get owner(): boolean {
    return this.#lease.held;
  }

  log(line: string, level?: "warn" | "error"): void {
    this.#ctx.log(line, level);
  }

  /** Takes the lease and starts consuming, or stands by until the lease can be taken. */
  async start(): Promise<void> {
    if (await this.#lease.tryAcquire()) return this.#begin();
    this.log(`flexcore: processor ${this.cfg.name} is run by another instance; standing by`);
    this.#standby = (async () => {
      while (!this.#stopping) {
        await sleep(this.#leasePollMs);
        if (this.#stopping) return;
        if (await this.#lease.tryAcquire().catch(() => false)) {
          if (this.#stopping) return;
          this.log(`flexcore: processor ${this.cfg.name}: lease taken over`);
          await this.#begin();
          return;
        }
      }
    })().catch((err: unknown) => this.fail(err));
  }

  /** Takes the lease if it is free and starts consuming; false (nothing started) when another instance holds it. */
  async tryStart(): Promise<boolean> {
    if (!(await this.#lease.tryAcquire())) return false;
    await this.#begin();
    return true;
  }

  async #begin(): Promise<void> {
    const { floor, ackedDeliveries } = await resetConsumer(this.#ctx.jsm, this.source);
    // A run marker left behind means the last run did not stop cleanly: the deliveries it
    // asked for beyond its ack floor may hold a message that kills the host.
    const run = await this.markers.readRun();
    const carefulWindow = run ? Math.max(1, run.requestedTo - ackedDeliveries) : 0;
    await this.markers.writeRun(carefulWindow);
    const consumer = await createConsumer(this.#ctx.nc, this.#ctx.jsm, this.source, this.cfg, floor, this.placement.partition !== undefined);
    this.#consumer = consumer;
    // Events waiting in a partition behind a slow task would be redelivered after
    // ack_wait; telling the server they are being worked on keeps them ours.
    this.#keepAlive = setInterval(() => {
      for (const p of this.#lanes) for (const e of p.queue) e.m.working();
    }, Math.max(1_000, Math.floor(this.cfg.ackWaitMs / 3)));
    this.#keepAlive.unref();
    this.#fetching = fetchLoop(this, consumer, () => (carefulWindow > 0 ? careful(this, consumer, carefulWindow) : Promise.resolve())).catch((err: unknown) => this.fail(err));
    this.#redriving = redriveLoop(this, this.#ctx.nc, this.#ctx.jsm).catch((err: unknown) => this.fail(err));
  }

  /** Resolves when the fetch loop may pull again (something was committed, or the runner stops). */
  room(): Promise<void> {
    return new Promise<void>((res) => this.#waiters.push(res));
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  publish(x: PendingOutput): Promise<unknown> {
    return this.#ctx.publisher.publish(x.subject, x.data, { headers: x.headers });
  }

  accept(m: JsMsg): void {
    const entry = this.entryOf(m);
    if (entry) this.enqueue(entry);
  }

  /** The key record of `<tenant>.<key>`, created with its lane on first sight. */
  keyInfo(tenant: string, key: string): KeyInfo {
    const stateKey = `${tenant}.${key}`;
    let k = this.#byKey.get(stateKey);
    if (k === undefined) {
      k = { tenant, key, stateKey, partition: fnv(stateKey) % this.#lanes.length, pending: 0 };
      this.#byKey.set(stateKey, k);
    }
    return k;
  }

  // Checks the delivery sequence and decodes the message; undefined when it is not for
  // this processor (it is then counted as done).
  entryOf(m: JsMsg): Entry | undefined {
    if (!this.deliveries.expect(m)) {
      // Start again from the ack floor.
      this.fail(new Error(`delivery ${this.deliveries.next} was lost (got ${m.info.deliverySequence})`));
      return undefined;
    }
    let seq = m.info.streamSequence;
    let subject = m.subject;
    if (this.placement.partition) {
      const origin = originOf(m);
      if (!origin) {
        this.log(`flexcore: partition ${this.placement.partition.index} of processor ${this.cfg.name}: skipped ${m.subject} (sequence ${seq}), which does not come from ${STREAMS.events}`, "warn");
        this.deliveries.push({ m, done: true } as Entry);
        this.deliveries.advance();
        return undefined;
      }
      ({ seq, subject } = origin);
    }
    let k = this.#bySubject.get(subject);
    if (k === undefined) {
      const tokens = subject.split(".");
      if (tokens.length < 3) {
        this.deliveries.push({ m, done: true } as Entry);
        this.deliveries.advance();
        return undefined;
      }
      k = this.keyInfo(tokens[1]!, tokens[tokens.length - 1]!);
      if (this.#bySubject.size >= this.#ctx.maxKeys) this.#bySubject = new Map();
      this.#bySubject.set(subject, k);
    }
    const { raw, hdr } = rawOf(m);
    const info = m.info;
    if (info.deliveryCount > 1) this.totals.redelivered += 1;
    k.pending += 1;
    return {
      m,
      done: false,
      seq,
      subject,
      tenant: k.tenant,
      key: k.key,
      stateKey: k.stateKey,
      raw,
      hdr,
      storedAt: Math.floor(info.timestampNanos / 1e6),
      partition: k.partition,
      receivedAt: performance.now(),
      meta: undefined,
    };
  }

  enqueue(entry: Entry): void {
    this.#inFlight += 1;
    this.deliveries.push(entry);
    const p = this.#lanes[entry.partition]!;
    p.queue.push(entry);
    this.#schedule(p);
  }

  /** Starts the lane of `entry` now, without lingering for a full batch. */
  startLaneOf(entry: Entry): void {
    this.#start(this.#lanes[entry.partition]!);
  }

  /**
   * Whether a redriven dead letter of `subject` is this runner's: always for a whole
   * processor; for a partition, when its key hashes here. Otherwise it is handed back
   * (`nak` after a short delay) for the partition that holds the key.
   */
  takesRedrive(m: JsMsg, subject: string): boolean {
    if (!this.placement.partition || this.placement.partition.holds(subject)) return true;
    m.nak(REDRIVE_ELSEWHERE_MS);
    return false;
  }

  /** Waits until lane `i` is free and holds it; undefined if the runner stops or fails first. */
  async holdLane(i: number): Promise<{ readonly commitTail: Promise<void> } | undefined> {
    const p = this.#lanes[i]!;
    while (p.busy && !this.#stopping && !this.#failed) await sleep(5);
    if (this.#stopping || this.#failed) return undefined;
    p.busy = true;
    return p;
  }

  releaseLane(i: number): void {
    const p = this.#lanes[i]!;
    p.busy = false;
    this.#schedule(p);
  }

  // A partition starts a task when it has a full batch, or LINGER_MS after its first
  // waiting event: messages stream in a few at a time, and tasks of a handful of events
  // would pay the per-task and per-key checkpoint costs for almost nothing.
  #schedule(p: Lane): void {
    if (p.busy || p.queue.length === 0 || this.#failed) return;
    if (p.queue.length < this.cfg.batchSize && !this.#stopping) {
      p.linger ??= setTimeout(() => {
        p.linger = undefined;
        this.#start(p);
      }, LINGER_MS);
      return;
    }
    this.#start(p);
  }

  #start(p: Lane): void {
    if (p.busy || p.queue.length === 0 || this.#failed) return;
    if (p.linger) clearTimeout(p.linger);
    p.linger = undefined;
    p.busy = true;
    void this.#drain(p).finally(() => {
      p.busy = false;
      this.#schedule(p);
      this.#checkIdle();
    });
  }

  async #drain(p: Lane): Promise<void> {
    // Full batches back to back; a partial one goes back to #schedule to linger.
    while (p.queue.length > 0 && !this.#failed) {
      const batch = p.queue.splice(0, this.cfg.batchSize);
      this.#wake();
      let outcome: Outcome;
      try {
        await this.ensureStates(batch);
        outcome = await this.#process(batch);
      } catch (err) {
        this.fail(err);
        return;
      }
      p.uncommitted += 1;
      p.commitTail = p.commitTail.then(async () => {
        if (this.#failed) return;
        try {
          await this.#commit(outcome);
        } catch (err) {
          this.fail(err);
        } finally {
          p.uncommitted -= 1;
        }
      });
      if (p.uncommitted >= LOOKAHEAD) await p.commitTail;
      if (p.queue.length < this.cfg.batchSize && !this.#stopping) return;
    }
  }

  async ensureStates(batch: readonly Entry[]): Promise<void> {
    const missing = new Set<string>();
    for (const e of batch) if (!this.#states.has(e.stateKey)) missing.add(e.stateKey);
    if (missing.size === 0) return;
    await Promise.all(
      [...missing].map(async (sk) => {
        let loading = this.#loading.get(sk);
        if (!loading) {
          const e = batch.find((x) => x.stateKey === sk)!;
          loading = this.#loadState(e.tenant, e.key);
          this.#loading.set(sk, loading);
        }
        const st = await loading.finally(() => this.#loading.delete(sk));
        if (!this.#states.has(sk)) this.#states.set(sk, st);
      }),
    );
  }

  /** The source sequence the key's state reflects (its state must be loaded). */
  reflected(stateKey: string): number {
    return this.#states.get(stateKey)!.seq;
  }

  /** The redriven dead letters (`FLEX_DLQ` sequences) the key's state already took (its state must be loaded). */
  redrivenInto(stateKey: string): readonly number[] {
    return this.#states.get(stateKey)!.redriven ?? [];
  }

  async #loadState(tenant: string, key: string): Promise<KeyState> {
    const entry = await this.#ctx.kv.get(stateKvKey(this.cfg.name, tenant, key));
    if (!entry || entry.operation !== "PUT" || entry.length === 0) return { json: null, seq: 0 };
    const saved = JSON.parse(new TextDecoder().decode(entry.value)) as { seq: number; state: unknown; redriven?: unknown };
    const redriven = Array.isArray(saved.redriven) ? saved.redriven.filter((x): x is number => Number.isSafeInteger(x)) : [];
    return { json: saved.state === null || saved.state === undefined ? null : JSON.stringify(saved.state), seq: saved.seq, ...(redriven.length > 0 ? { redriven } : {}) };
  }

  #stateJson = (stateKey: string): string | null => this.#states.get(stateKey)!.json;

  // Runs a batch: skips what the state already reflects, sends the rest to the pool, and
  // falls back to one event at a time (with retries, then the DLQ) for keys that failed.
  async #process(batch: readonly Entry[]): Promise<Outcome> {
    const todo: Entry[] = [];
    const lastSeq = new Map<string, number>();
    for (const e of batch) {
      const reflected = Math.max(this.#states.get(e.stateKey)!.seq, lastSeq.get(e.stateKey) ?? 0);
      if (e.seq <= reflected) continue; // processed before a restart, or delivered twice
      lastSeq.set(e.stateKey, e.seq);
      todo.push(e);
    }
    const outputs: PendingOutput[] = [];
    const dlq: PendingOutput[] = [];
    const checkpoints: Checkpoints = new Map();
    let failedAttempts = 0;
    if (todo.length === 0) return { entries: batch, outputs, dlq, checkpoints, failedAttempts };
    if (this.#remote) {
      failedAttempts += await this.#processRemote(this.#remote, todo, outputs, dlq, checkpoints);
      return { entries: batch, outputs, dlq, checkpoints, failedAttempts };
    }

    let retry: Entry[] = [];
    let result: BatchResult | undefined;
    try {
      result = await this.#ctx.pool.runBatch(buildTask(this.cfg, todo, this.#stateJson));
    } catch {
      failedAttempts += 1;
      retry = todo; // the worker died (out of memory, exit): isolate the culprit
    }
    if (result) {
      const failedKeys = new Set(result.failures.map((f) => f.keyIndex));
      failedAttempts += failedKeys.size;
      // Key order of the task is first appearance in `todo`.
      const order: string[] = [];
      const seen = new Set<string>();
      for (const e of todo) if (!seen.has(e.stateKey)) (seen.add(e.stateKey), order.push(e.stateKey));
      order.forEach((sk, k) => {
        if (failedKeys.has(k)) return;
        const st = { json: result!.states[k] ?? null, seq: lastSeq.get(sk)! };
        this.remember(sk, st);
        checkpoints.set(sk, st);
      });
      collectOutputs(this.cfg, todo, result, outputs, (i) => !failedKeys.has(order.indexOf(todo[i]!.stateKey)), this.#outputHeaders);
      if (failedKeys.size > 0) retry = todo.filter((e) => failedKeys.has(order.indexOf(e.stateKey)));
    }
    if (retry.length > 0) {
      const single = await this.processOneByOne(retry, outputs, dlq, checkpoints);
      failedAttempts += single;
    }
    return { entries: batch, outputs, dlq, checkpoints, failedAttempts };
  }

  async processOneByOne(entries: readonly Entry[], outputs: PendingOutput[], dlq: PendingOutput[], checkpoints: Checkpoints): Promise<number> {
    if (this.#remote) {
      let failed = 0;
      for (const e of entries) failed += await this.#processRemote(this.#remote, [e], outputs, dlq, checkpoints);
      return failed;
    }
    let failedAttempts = 0;
    for (const e of entries) {
      const allowed = Math.max(1, this.cfg.maxDeliver - (e.m.info.deliveryCount - 1));
      let lastError: FailureInfo = { name: "Error", code: undefined, message: "unknown" };
      let done = false;
      for (let attempt = 1; attempt <= allowed && !done; attempt++) {
        if (attempt > 1) {
          e.m.working();
          const wait = this.cfg.backoffMs[Math.min(attempt - 2, this.cfg.backoffMs.length - 1)]!;
          await sleep(wait);
          e.m.working();
        }
        try {
          const result = await this.#ctx.pool.runBatch(buildTask(this.cfg, [e], this.#stateJson));
          if (result.failures.length > 0) {
            lastError = result.failures[0]!;
            failedAttempts += 1;
            continue;
          }
          const st = { json: result.states[0] ?? null, seq: e.seq };
          this.remember(e.stateKey, st);
          checkpoints.set(e.stateKey, st);
          collectOutputs(this.cfg, [e], result, outputs, () => true, this.#outputHeaders);
          done = true;
        } catch (err) {
          failedAttempts += 1;
          const x = err as { name?: string; code?: string; message?: string };
          lastError = { name: x?.name ?? "Error", code: typeof x?.code === "string" ? x.code : undefined, message: x?.message ?? String(err) };
        }
      }
      if (done) continue;
      // Poison: the state does not change, the sequence counts as handled.
      const st = this.#states.get(e.stateKey)!;
      const next = { json: st.json, seq: e.seq };
      this.remember(e.stateKey, next);
      checkpoints.set(e.stateKey, next);
      const reason = new ProcessorFailedError(this.cfg.name, e.seq, `${lastError.name}${lastError.code ? ` [${lastError.code}]` : ""}: ${lastError.message}`);
      dlq.push(this.deadLetter(e, allowed + (e.m.info.deliveryCount - 1), lastError, reason.message));
    }
    return failedAttempts;
  }

  /** The remote kinds, when this processor's kind is one. */
  get #remote(): RemoteKinds | undefined {
    return isRemoteKind(this.cfg.kind) ? this.#ctx.remote : undefined;
  }

  /**
   * Runs entries (already past their keys' states) through a remote kind: one call per
   * tenant, in parallel (keys never span tenants, so per-key order holds). A permanent
   * error (the input's fault) dead-letters the entries, the states unchanged; any other is
   * retried with the processor's backoff until it succeeds or the runner stops (the
   * messages stay unacknowledged and are redelivered): never dropped. Inputs the reply
   * rejects one by one are dead-lettered, the rest kept. Returns the failed attempts.
   */
  async #processRemote(remote: RemoteKinds, todo: readonly Entry[], outputs: PendingOutput[], dlq: PendingOutput[], checkpoints: Checkpoints): Promise<number> {
    const byTenant = new Map<string, number[]>();
    todo.forEach((e, i) => {
      const list = byTenant.get(e.tenant);
      if (list) list.push(i);
      else byTenant.set(e.tenant, [i]);
    });
    let failedAttempts = 0;
    // Each tenant's call succeeds, fails for good, or is retried on its own: one tenant's bad
    // input never dead-letters another's.
    const settled = await Promise.all(
      [...byTenant].map(async ([tenant, indexes]): Promise<{ readonly indexes: readonly number[]; readonly reply?: RemoteBatchResult; readonly error?: FailureInfo }> => {
        const entries = indexes.map((i) => todo[i]!);
        for (let attempt = 1; ; attempt++) {
          try {
            return { indexes, reply: await remote.process(this.#remoteBatch(tenant, entries)) };
          } catch (err) {
            failedAttempts += 1;
            const x = err as { name?: string; code?: string; message?: string };
            const error: FailureInfo = { name: x?.name ?? "Error", code: typeof x?.code === "string" ? x.code : undefined, message: x?.message ?? String(err) };
            if (remote.isPermanent(err)) return { indexes, error };
            if (this.#stopping || this.#failed) throw err;
            const wait = this.cfg.backoffMs[Math.min(attempt - 1, this.cfg.backoffMs.length - 1)]!;
            // Attempts 1, 2, 4, 8, ...: an unavailable plugin must not flood the log.
            if ((attempt & (attempt - 1)) === 0) this.log(`flexcore: processor ${this.cfg.name}: ${error.code ?? error.name}: ${error.message}; retrying ${entries.length} message(s) of tenant ${tenant} in ${wait} ms (attempt ${attempt})`, "warn");
            for (const e of entries) e.m.working();
            const until = Date.now() + wait;
            while (Date.now() < until && !this.#stopping && !this.#failed) await sleep(Math.min(50, Math.max(1, until - Date.now())));
            if (this.#stopping || this.#failed) throw err;
            for (const e of entries) e.m.working();
          }
        }
      }),
    );
    // The reply as the pool's result columns, so outputs get the same ids as in-process kinds.
    const outEvent: number[] = [];
    const outIndex: number[] = [];
    const outTypes: string[] = [];
    const outKeys: Array<string | null> = [];
    const bodies: string[] = [];
    const perInput = new Uint32Array(todo.length);
    const rejected = new Map<number, string>();
    const lastSeq = new Map<string, number>();
    for (const e of todo) lastSeq.set(e.stateKey, Math.max(lastSeq.get(e.stateKey) ?? 0, e.seq));
    for (const s of settled) {
      if (s.error || !s.reply) {
        const error = s.error ?? { name: "Error", code: undefined, message: "no reply" };
        // Poison: the states do not change, the sequences count as handled.
        for (const i of s.indexes) {
          const e = todo[i]!;
          const st = { json: this.#states.get(e.stateKey)!.json, seq: lastSeq.get(e.stateKey)! };
          this.remember(e.stateKey, st);
          checkpoints.set(e.stateKey, st);
          const reason = new ProcessorFailedError(this.cfg.name, e.seq, `${error.name}${error.code ? ` [${error.code}]` : ""}: ${error.message}`);
          dlq.push(this.deadLetter(e, e.m.info.deliveryCount, error, reason.message));
        }
        continue;
      }
      const { indexes, reply } = s as { indexes: readonly number[]; reply: RemoteBatchResult };
      for (const r of reply.rejected ?? []) rejected.set(indexes[r.input]!, r.reason);
      for (const o of reply.outputs) {
        const i = indexes[o.input]!;
        outEvent.push(i);
        outIndex.push(perInput[i]!);
        perInput[i]! += 1;
        outTypes.push(o.type);
        outKeys.push(o.key ?? null);
        bodies.push(JSON.stringify(o.data ?? null));
      }
      const done = new Set<string>();
      for (const i of indexes) {
        const e = todo[i]!;
        if (done.has(e.stateKey)) continue;
        done.add(e.stateKey);
        const next = reply.states[e.key];
        const json = Object.hasOwn(reply.states, e.key) ? (next === null || next === undefined ? null : JSON.stringify(next)) : this.#states.get(e.stateKey)!.json;
        const st = { json, seq: lastSeq.get(e.stateKey)! };
        this.remember(e.stateKey, st);
        checkpoints.set(e.stateKey, st);
      }
    }
    // One encoding of all the bodies, not an array and a copy per output.
    const offsets = new Uint32Array(bodies.length + 1);
    let size = 0;
    for (let j = 0; j < bodies.length; j++) {
      size += Buffer.byteLength(bodies[j]!);
      offsets[j + 1] = size;
    }
    const outBody = bodies.length === 0 ? new Uint8Array(0) : Buffer.from(bodies.join(""));
    const result: BatchResult = { states: [], outEvent: Uint32Array.from(outEvent), outIndex: Uint32Array.from(outIndex), outTypes, outKeys, outBody, outOffsets: offsets, failures: [] };
    collectOutputs(this.cfg, todo, result, outputs, (i) => !rejected.has(i), this.#outputHeaders);
    for (const [i, why] of rejected) {
      const e = todo[i]!;
      const error: FailureInfo = { name: "PluginRejectedError", code: "FLEX_PLUGIN_REJECTED", message: why };
      const reason = new ProcessorFailedError(this.cfg.name, e.seq, `PluginRejectedError [FLEX_PLUGIN_REJECTED]: ${why}`);
      dlq.push(this.deadLetter(e, e.m.info.deliveryCount, error, reason.message));
      failedAttempts += 1;
    }
    return failedAttempts;
  }

  #remoteBatch(tenant: string, entries: readonly Entry[]): { processor: string; kind: string; options: unknown; tenant: string; states: Record<string, unknown>; inputs: RemoteInput[] } {
    const states: Record<string, unknown> = {};
    const inputs: RemoteInput[] = [];
    for (const e of entries) {
      if (!Object.hasOwn(states, e.key)) {
        const json = this.#states.get(e.stateKey)!.json;
        states[e.key] = json === null ? null : JSON.parse(json);
      }
      const meta = metaOf(e);
      inputs.push({ seq: e.seq, subject: e.subject, key: e.key, id: meta.sourceId, type: meta.type, time: meta.time, data: decodeData(e.raw, e.hdr) });
    }
    return { processor: this.cfg.name, kind: this.cfg.kind, options: this.cfg.validatedOptions, tenant, states, inputs };
  }

  /** The dead letter of `e`, logged. */
  deadLetter(e: Entry, attempts: number, error: FailureInfo, reason: string): PendingOutput {
    this.log(`flexcore: ${reason}; dead-lettered to ${dlqSubject(e.tenant, this.cfg.name)}`, "warn");
    return deadLetter(this.cfg, e, attempts, error, reason);
  }

  // Outputs first, then the state checkpoints, then the acks: a crash anywhere in between
  // replays the batch, whose outputs carry the same Nats-Msg-Id and are stored once.
  async #commit(o: Outcome): Promise<void> {
    if (o.outputs.length > 0 || o.dlq.length > 0) {
      // One promise for the batch's messages, not one per message.
      const acks = await this.#ctx.publisher.publishAll(o.dlq.length === 0 ? o.outputs : [...o.outputs, ...o.dlq]);
      for (const a of acks) if (a instanceof Error) throw a;
    }
    await this.writeCheckpoints(o.checkpoints);
    const now = performance.now();
    for (const e of o.entries) {
      e.done = true;
      this.latency.add(now - e.receivedAt);
      const k = this.#byKey.get(e.stateKey);
      if (k && k.pending > 0) k.pending -= 1;
    }
    if (this.#states.size > this.#ctx.maxKeys) this.#evict();
    this.totals.processed += o.entries.length;
    this.totals.outputs += o.outputs.length;
    this.totals.errors += o.failedAttempts;
    this.totals.deadLettered += o.dlq.length;
    this.#inFlight -= o.entries.length;
    this.deliveries.advance();
    this.#wake();
    this.#checkIdle();
  }

  async writeCheckpoints(checkpoints: ReadonlyMap<string, Readonly<KeyState>>): Promise<void> {
    if (checkpoints.size === 0) return;
    const messages: Array<{ subject: string; data: Uint8Array }> = [];
    for (const [sk, st] of checkpoints) messages.push(checkpointMessage(this.cfg.name, sk, st));
    for (const a of await this.#ctx.publisher.publishAll(messages)) if (a instanceof Error) throw a;
  }

  remember(stateKey: string, st: KeyState): void {
    // A new state of the key keeps the record of the redrives it took, so its checkpoint does too.
    if (st.redriven === undefined) {
      const before = this.#states.get(stateKey)?.redriven;
      if (before !== undefined) st.redriven = before;
    }
    this.#states.delete(stateKey);
    this.#states.set(stateKey, st);
  }

  // Drops the least recently changed states with nothing in flight: their last commit
  // wrote exactly this state to flex_state, where ensureStates finds it again.
  #evict(): void {
    const target = Math.floor(this.#ctx.maxKeys * 0.9);
    // Subjects point at the key records dropped below; they are parsed again when they come back.
    this.#bySubject = new Map();
    for (const sk of this.#states.keys()) {
      if (this.#states.size <= target) break;
      if ((this.#byKey.get(sk)?.pending ?? 0) === 0) {
        this.#states.delete(sk);
        this.#byKey.delete(sk);
      }
    }
  }

  /** Key states held in memory. */
  get keysInMemory(): number {
    return this.#states.size;
  }

  #checkIdle(): void {
    if (this.#inFlight === 0) for (const w of this.#idleWaiters.splice(0)) w();
  }

  /** Resolves when nothing fetched is unacknowledged. */
  async idle(): Promise<void> {
    if (this.#inFlight === 0) return;
    await new Promise<void>((res) => this.#idleWaiters.push(res));
  }

  /** Something failed: the in-memory states are not trustworthy; the runtime restarts this processor. */
  fail(err: unknown): void {
    if (this.#failed || this.#stopping) return;
    this.#failed = true;
    this.log(`flexcore: processor ${this.cfg.name} failed: ${(err as Error)?.message ?? String(err)}; restarting from its checkpoints`, "error");
    // What is in flight will not be acknowledged by this runner: nobody waits for it.
    for (const w of this.#idleWaiters.splice(0)) w();
    this.#onFailure(this, err);
  }

  /** Stops fetching and waits for what was fetched to be processed, committed and acknowledged. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#wake();
    await this.#standby;
    // stop(), not `await close()`: the loops end when their iterators have consumed the stop;
    // close() would wait for an iterator nobody iterates any more.
    this.messages?.stop();
    await this.#fetching;
    this.redriveMessages?.stop();
    await this.#redriving;
    for (const p of this.#lanes) this.#schedule(p);
    if (!this.#failed) {
      // Drain what is queued: partitions keep running until their queues are empty.
      while (this.#lanes.some((p) => p.busy || p.queue.length > 0) && !this.#failed) await sleep(5);
    }
    await Promise.all(this.#lanes.map((p) => p.commitTail));
    // A clean stop: everything fetched is acknowledged, the next start needs no care.
    if (!this.#failed && this.#inFlight === 0 && this.#consumer) await this.markers.clearRun();
    if (this.#keepAlive) clearInterval(this.#keepAlive);
    for (const p of this.#lanes) if (p.linger) clearTimeout(p.linger);
    for (const w of this.#idleWaiters.splice(0)) w();
    await this.#lease.release();
  }
}
