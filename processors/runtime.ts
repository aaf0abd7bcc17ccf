import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { Consumer, ConsumerConfig, ConsumerMessages, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import { nanos } from "@nats-io/transport-node";
import type { MsgHdrs, NatsConnection } from "@nats-io/transport-node";
import { BUCKETS, createPublisher, deadLetterHeaders, decodeData, derivedSubject, dlqSubject, encodeEvent, eventFromJsMsg, EventHeaders, eventSubject, HEADERS, InvalidOptionError, METRICS_CATEGORY, METRICS_EVENT_TYPES, openTtlKv, REDRIVE_HEADERS, snapshotKey, STREAMS, SUBJECT_ROOTS, SYSTEM_TENANT } from "../streams/index.js";
import type { MetricsReported, Publisher, PublisherStats, TtlKv } from "../streams/index.js";
import { DEFAULT_LEASE_TTL_MS } from "./config.js";
import type { ResolvedProcessor } from "./config.js";
import { ProcessorCrashedError, ProcessorFailedError, RuntimeClosedError, UnknownProcessorError } from "./errors.js";
import { Lease, processorLeaseKey } from "./lease.js";
import { LatencyWindow } from "./metrics.js";
import type { ProcessorMetrics } from "./metrics.js";
import { createProcessorPool } from "./pool.js";
import type { InvokeResult, ProcessorPool } from "./pool.js";
import type { BatchResult, BatchTask } from "./task.js";
import type { ProcessorDefinition } from "./types.js";
import { BUILTIN_PROCESSORS } from "./builtin/index.js";

/** Key states kept in memory per processor. */
export const DEFAULT_MAX_KEYS_IN_MEMORY = 100_000;
/** Prefix of the durable consumer of each processor: `proc_<name>`. */
export const CONSUMER_PREFIX = "proc_";
/** Prefix of each processor's durable consumer of its redriven dead letters (`FLEX_REDRIVE`): `redrive_<name>`. */
export const REDRIVE_CONSUMER_PREFIX = "redrive_";
/** How long a partition waits for a full batch before it runs a partial one, in ms. */
const LINGER_MS = 5;
/** Batches of one partition processed ahead of their commit. */
const LOOKAHEAD = 2;
/** How long one pull waits for messages, in ms (idle heartbeats every half of it). */
const FETCH_EXPIRES_MS = 5_000;
/** Wait after a failed pull before the next, in ms. */
const FETCH_RETRY_MS = 250;
/** Batches per partition waiting for the pool before the runtime stops fetching. */
const BATCHES_WAITING = 2;
const MINUTE_MS = 60_000;
/** Wait before a processor that failed to commit starts again, in ms. */
const RESTART_DELAY_MS = 1_000;
/** `flex_state` keys (under the processor's name): the message tried alone after an unclean stop, and the run's reach. */
const HEAD_MARKER = "_head";
const RUN_MARKER = "_run";

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
  /** @default a publisher created and closed by the runtime */
  readonly publisher?: Publisher;
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

interface Entry {
  readonly m: JsMsg;
  /** Committed (or skipped): the low-water mark may pass it. */
  done: boolean;
  readonly seq: number;
  readonly subject: string;
  readonly tenant: string;
  readonly key: string;
  readonly stateKey: string;
  /** The message as received: header block then body (`raw.subarray(hdr)` is the body). */
  readonly raw: Uint8Array;
  readonly hdr: number;
  /** When the stream stored it, in ms since the epoch. */
  readonly storedAt: number;
  readonly partition: number;
  readonly receivedAt: number;
  /** Header fields, decoded on demand (outputs and dead letters need them, scoring does not). */
  meta: EntryMeta | undefined;
  /** Set on a dead letter sent back by `flexcore dlq redrive`: where it came from, why it failed so far. */
  readonly redrive?: { readonly dlqSeq: number; readonly reasons: readonly string[] };
}

interface EntryMeta {
  readonly type: string;
  readonly time: string;
  /** `Nats-Msg-Id` of the source (`seq-<n>` without one) and its correlation id. */
  readonly sourceId: string;
  readonly correlationId: string;
}

// The raw message of nats.js (header block and body in one buffer), when its internals have
// the expected shape; otherwise the public headers are encoded again.
interface CoreMsgInternals {
  readonly _msg?: { readonly hdr?: number };
  readonly _rdata?: Uint8Array;
}

function rawOf(m: JsMsg): { raw: Uint8Array; hdr: number } {
  const core = (m as unknown as { msg?: CoreMsgInternals }).msg;
  const hdr = core?._msg?.hdr;
  const rdata = core?._rdata;
  if (rdata instanceof Uint8Array) {
    if (typeof hdr === "number" && hdr > 0 && hdr <= rdata.length) return { raw: rdata, hdr };
    if (hdr === -1 || hdr === 0) return { raw: rdata, hdr: 0 };
  }
  const block = (m.headers as unknown as { encode?: () => Uint8Array } | undefined)?.encode?.() ?? new Uint8Array(0);
  const raw = new Uint8Array(block.length + m.data.length);
  raw.set(block, 0);
  raw.set(m.data, block.length);
  return { raw, hdr: block.length };
}

function metaOf(e: Entry): EntryMeta {
  if (!e.meta) {
    const ev = eventFromJsMsg(e.m, { lazyData: true });
    e.meta = { type: ev.type || "unknown", time: ev.time, sourceId: ev.id, correlationId: ev.correlationId || ev.id };
  }
  return e.meta;
}

/** What the runtime keeps per key: parsed once from the first subject seen, not per event. */
interface KeyInfo {
  readonly tenant: string;
  readonly key: string;
  readonly stateKey: string;
  readonly partition: number;
  /** Events of the key fetched and not yet acknowledged; a key at 0 may be evicted. */
  pending: number;
}

interface KeyState {
  json: string | null;
  seq: number;
}

interface PendingOutput {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs;
}

interface Outcome {
  readonly entries: readonly Entry[];
  readonly outputs: readonly PendingOutput[];
  readonly dlq: readonly PendingOutput[];
  readonly checkpoints: ReadonlyMap<string, { readonly json: string | null; readonly seq: number }>;
  readonly failedAttempts: number;
}

interface Partition {
  queue: Entry[];
  busy: boolean;
  linger: NodeJS.Timeout | undefined;
  commitTail: Promise<void>;
  uncommitted: number;
}

const encoder = new TextEncoder();

function fnv(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** The `flex_state` key of a processor's state for one key. */
export function stateKvKey(processor: string, tenant: string, key: string): string {
  return snapshotKey(`${tenant}.${key}`, processor);
}

class ProcessorRunner {
  readonly cfg: ResolvedProcessor;
  readonly consumerName: string;
  readonly #nc: NatsConnection;
  readonly #jsm: JetStreamManager;
  readonly #kv: KV;
  readonly #pool: ProcessorPool;
  readonly #publisher: Publisher;
  readonly #log: (line: string, level?: "warn" | "error") => void;
  readonly #partitions: Partition[];
  // Insertion order is recency: a state is re-inserted whenever it changes.
  readonly #states = new Map<string, KeyState>();
  // Per subject and per key (bounded: cleared when they outgrow the key states held).
  #bySubject = new Map<string, KeyInfo>();
  readonly #byKey = new Map<string, KeyInfo>();
  readonly #maxKeys: number;
  readonly #loading = new Map<string, Promise<KeyState>>();
  readonly #waiters: Array<() => void> = [];
  readonly #idleWaiters: Array<() => void> = [];
  readonly #onFailure: (runner: ProcessorRunner, err: unknown) => void;
  readonly #lease: Lease;
  readonly #leasePollMs: number;
  #standby: Promise<void> | undefined;
  #consumer: Consumer | undefined;
  #messages: ConsumerMessages | undefined;
  #fetching: Promise<void> | undefined;
  #redriveMessages: ConsumerMessages | undefined;
  #redriving: Promise<void> | undefined;
  #keepAlive: NodeJS.Timeout | undefined;
  #inFlight = 0;
  #carefulWindow = 0;
  // Every delivery in arrival order from #head on; #ackedTo is the low-water mark acked last.
  #order: Entry[] = [];
  #head = 0;
  #nextDelivery = 1;
  #stopping = false;
  #failed = false;
  readonly latency = new LatencyWindow();
  totals = { processed: 0, outputs: 0, errors: 0, deadLettered: 0, redelivered: 0 };

  constructor(nc: NatsConnection, jsm: JetStreamManager, kv: KV, pool: ProcessorPool, publisher: Publisher, cfg: ResolvedProcessor, log: (line: string, level?: "warn" | "error") => void, onFailure: (runner: ProcessorRunner, err: unknown) => void, maxKeys: number, leases: TtlKv, instanceId: string, leaseTtlMs: number) {
    this.#maxKeys = maxKeys;
    this.#lease = new Lease(leases, processorLeaseKey(cfg.name), instanceId, leaseTtlMs, () => this.#fail(new Error(`instance ${instanceId} lost the lease of processor ${cfg.name}`)));
    this.#leasePollMs = Math.min(1_000, Math.max(50, Math.floor(leaseTtlMs / 4)));
    this.#nc = nc;
    this.#jsm = jsm;
    this.#kv = kv;
    this.#pool = pool;
    this.#publisher = publisher;
    this.cfg = cfg;
    this.consumerName = `${CONSUMER_PREFIX}${cfg.name}`;
    this.#log = log;
    this.#onFailure = onFailure;
    this.#partitions = Array.from({ length: cfg.partitions }, () => ({ queue: [], busy: false, linger: undefined, commitTail: Promise.resolve(), uncommitted: 0 }));
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  get queued(): number {
    let n = 0;
    for (const p of this.#partitions) n += p.queue.length;
    return n;
  }

  /** Whether this instance holds the processor's lease (and runs it). */
  get owner(): boolean {
    return this.#lease.held;
  }

  /** Takes the lease and starts consuming, or stands by until the lease can be taken. */
  async start(): Promise<void> {
    if (await this.#lease.tryAcquire()) return this.#begin();
    this.#log(`flexcore: processor ${this.cfg.name} is run by another instance; standing by`);
    this.#standby = (async () => {
      while (!this.#stopping) {
        await sleep(this.#leasePollMs);
        if (this.#stopping) return;
        if (await this.#lease.tryAcquire().catch(() => false)) {
          if (this.#stopping) return;
          this.#log(`flexcore: processor ${this.cfg.name}: lease taken over`);
          await this.#begin();
          return;
        }
      }
    })().catch((err: unknown) => this.#fail(err));
  }

  async #begin(): Promise<void> {
    const subjects = [...this.cfg.subjects];
    const filter: Partial<ConsumerConfig> = subjects.length === 1 ? { filter_subject: subjects[0]! } : { filter_subjects: subjects };
    // Start where every earlier message is acknowledged. Recreating the consumer there makes
    // the server deliver the unacknowledged messages again now and in stream order, instead
    // of after ack_wait and behind newer ones, so a key never sees its events out of order;
    // messages that were processed but not acknowledged are skipped by their checkpoint.
    let floor = 0;
    let ackedDeliveries = 0;
    try {
      const info = await this.#jsm.consumers.info(STREAMS.events, this.consumerName);
      // Nothing acknowledged yet since it was created at opt_start_seq: the floor is below that.
      floor = Math.max(info.ack_floor.stream_seq, (info.config.opt_start_seq ?? 1) - 1);
      ackedDeliveries = info.ack_floor.consumer_seq;
      await this.#jsm.consumers.delete(STREAMS.events, this.consumerName);
    } catch (err) {
      if (!/consumer not found/i.test(String((err as Error).message)) && (err as { name?: string }).name !== "ConsumerNotFoundError") throw err;
    }
    // A run marker left behind means the last run did not stop cleanly: the deliveries it
    // asked for beyond its ack floor may hold a message that kills the host.
    const run = await this.#readMarker<{ requestedTo: number }>(RUN_MARKER);
    this.#carefulWindow = run ? Math.max(1, run.requestedTo - ackedDeliveries) : 0;
    await this.#writeMarker(RUN_MARKER, { requestedTo: this.#carefulWindow });
    const config: Partial<ConsumerConfig> = {
      durable_name: this.consumerName,
      description: `FlexCore processor ${this.cfg.name} (${this.cfg.kind})`,
      // One ack covers every earlier delivery: the runtime acks its low-water mark (see
      // #advance), not each message, which halves the messages per event.
      ack_policy: AckPolicy.All,
      ack_wait: nanos(this.cfg.ackWaitMs),
      max_ack_pending: this.cfg.maxInFlight,
      // The runtime counts attempts and dead-letters; the server must never drop a message.
      max_deliver: -1,
      ...(floor > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: floor + 1 } : { deliver_policy: DeliverPolicy.All }),
      ...filter,
    };
    await this.#jsm.consumers.add(STREAMS.events, config);
    this.#consumer = await jetstream(this.#nc).consumers.get(STREAMS.events, this.consumerName);
    // Events waiting in a partition behind a slow task would be redelivered after
    // ack_wait; telling the server they are being worked on keeps them ours.
    this.#keepAlive = setInterval(() => {
      for (const p of this.#partitions) for (const e of p.queue) e.m.working();
    }, Math.max(1_000, Math.floor(this.cfg.ackWaitMs / 3)));
    this.#keepAlive.unref();
    this.#fetching = this.#fetchLoop().catch((err: unknown) => this.#fail(err));
    this.#redriving = this.#redriveLoop().catch((err: unknown) => this.#fail(err));
  }

  /**
   * Takes back this processor's redriven dead letters (`redrive.*.<name>` in `FLEX_REDRIVE`,
   * see docs/dlq.md), one at a time: only this processor sees them, never the other
   * consumers of the event. Each runs on the key's current state as a late event, with the
   * partition of its key held, so it never races the key's regular events.
   */
  async #redriveLoop(): Promise<void> {
    const name = `${REDRIVE_CONSUMER_PREFIX}${this.cfg.name}`;
    const editable = { description: `FlexCore processor ${this.cfg.name}: its redriven dead letters`, ack_wait: nanos(this.cfg.ackWaitMs), max_ack_pending: 1, max_deliver: -1 };
    try {
      await this.#jsm.consumers.add(STREAMS.redrive, { ...editable, durable_name: name, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, filter_subject: `${SUBJECT_ROOTS.redrive}.*.${this.cfg.name}` })
        // It exists with other settings (ack_wait changed in flexcore.yaml): keep its position, update those.
        .catch(() => this.#jsm.consumers.update(STREAMS.redrive, name, editable));
    } catch (err) {
      // A deployment whose topology predates FLEX_REDRIVE still processes events.
      this.#log(`flexcore: processor ${this.cfg.name}: no redrive consumer (${(err as Error).message}); run flexcore up to create ${STREAMS.redrive}`, "warn");
      return;
    }
    const consumer = await jetstream(this.#nc).consumers.get(STREAMS.redrive, name);
    while (!this.#stopping && !this.#failed) {
      try {
        const messages = await consumer.fetch({ max_messages: 1, expires: FETCH_EXPIRES_MS });
        this.#redriveMessages = messages;
        if (this.#stopping) await messages.close().catch(() => undefined); // stop() ran while the pull was being set up
        for await (const m of messages) await this.#redriveOne(m);
      } catch (err) {
        if (this.#stopping || this.#failed) break;
        this.#log(`flexcore: processor ${this.cfg.name}: redrive pull failed (${(err as Error).message}); pulling again`, "warn");
        await sleep(FETCH_RETRY_MS);
      } finally {
        this.#redriveMessages = undefined;
      }
    }
  }

  async #redriveOne(m: JsMsg): Promise<void> {
    const h = m.headers;
    const subject = h?.get(REDRIVE_HEADERS.subject) ?? "";
    const seq = Number(h?.get(REDRIVE_HEADERS.seq));
    const dlqSeq = Number(h?.get(REDRIVE_HEADERS.dlqSeq));
    const tenant = m.subject.split(".")[1] ?? "";
    const tokens = subject.split(".");
    // Only FlexCore's service user publishes redrives, but the tenant is still the subject's.
    if (tokens.length !== 4 || tokens[0] !== SUBJECT_ROOTS.events || tokens[1] !== tenant || !Number.isSafeInteger(seq) || seq < 1) {
      this.#log(`flexcore: processor ${this.cfg.name}: dropped a malformed redrive on ${m.subject} (original subject ${JSON.stringify(subject)}, sequence ${String(h?.get(REDRIVE_HEADERS.seq))})`, "warn");
      m.term();
      return;
    }
    let reasons: string[] = [];
    try {
      const r = JSON.parse(h?.get(REDRIVE_HEADERS.reasons) ?? "[]") as unknown;
      if (Array.isArray(r)) reasons = r.filter((x): x is string => typeof x === "string");
    } catch {
      reasons = [];
    }
    const key = tokens[3]!;
    const stateKey = `${tenant}.${key}`;
    const k: KeyInfo = this.#byKey.get(stateKey) ?? { tenant, key, stateKey, partition: fnv(stateKey) % this.#partitions.length, pending: 0 };
    this.#byKey.set(stateKey, k);
    const p = this.#partitions[k.partition]!;
    while (p.busy && !this.#stopping && !this.#failed) await sleep(5);
    if (this.#stopping || this.#failed) return; // not acknowledged: delivered again later
    p.busy = true;
    k.pending += 1; // keeps the key's state in memory while it runs
    try {
      const { raw, hdr } = rawOf(m);
      const entry: Entry = {
        m, done: false, seq, subject, tenant, key, stateKey, raw, hdr,
        storedAt: Math.floor(m.info.timestampNanos / 1e6), partition: k.partition, receivedAt: performance.now(), meta: undefined,
        redrive: { dlqSeq: Number.isSafeInteger(dlqSeq) ? dlqSeq : 0, reasons },
      };
      await this.#ensureStates([entry]);
      const reached = this.#states.get(stateKey)!.seq;
      const outputs: PendingOutput[] = [];
      const dlq: PendingOutput[] = [];
      const checkpoints = new Map<string, { json: string | null; seq: number }>();
      const failedAttempts = await this.#processOneByOne([entry], outputs, dlq, checkpoints);
      // A late event: the key's checkpoint keeps the sequence it had reached, so the
      // events after the original one are not replayed.
      const cp = checkpoints.get(stateKey);
      if (cp) {
        const kept = { json: cp.json, seq: Math.max(reached, cp.seq) };
        this.#remember(stateKey, kept);
        checkpoints.set(stateKey, kept);
      }
      await p.commitTail;
      const publish = (x: PendingOutput): Promise<unknown> => this.#publisher.publish(x.subject, x.data, { headers: x.headers });
      await Promise.all([...outputs.map(publish), ...dlq.map(publish)]);
      await this.#writeCheckpoints(checkpoints);
      await m.ackAck();
      this.totals.processed += 1;
      this.totals.outputs += outputs.length;
      this.totals.errors += failedAttempts;
      this.totals.deadLettered += dlq.length;
    } finally {
      k.pending -= 1;
      p.busy = false;
      this.#schedule(p);
    }
  }

  async #fetchLoop(): Promise<void> {
    const cfg = this.cfg;
    // Work waiting for the pool: each partition has at most one task in the pool's queue
    // and up to two batches waiting behind it. Gating on the pool's queue alone (2 tasks
    // per thread) left partitions without a next batch when their task finished.
    const backlog = cfg.batchSize * cfg.partitions * BATCHES_WAITING;
    if (this.#carefulWindow > 0) await this.#careful(this.#carefulWindow);
    while (!this.#stopping) {
      // Backpressure: pull only while fewer than max_in_flight messages are unacknowledged
      // and less than two batches per partition wait for the pool.
      while (!this.#stopping && (this.#inFlight >= cfg.maxInFlight || this.queued >= backlog)) {
        await new Promise<void>((res) => this.#waiters.push(res));
      }
      if (this.#stopping) break;
      // One pull of up to two batches per partition: a backlog arrives as a burst that
      // fills whole batches, and per-key checkpoints are written once per batch (a
      // consume() loop streamed messages in a few at a time and made tasks small).
      const want = Math.min(cfg.maxInFlight - this.#inFlight, cfg.batchSize * cfg.partitions * 2);
      try {
        // The next start knows how far this run may have got (one write per pull).
        await this.#writeMarker(RUN_MARKER, { requestedTo: this.#nextDelivery - 1 + want });
        const messages = await this.#consumer!.fetch({ max_messages: want, expires: FETCH_EXPIRES_MS });
        this.#messages = messages;
        for await (const m of messages) this.#accept(m);
      } catch (err) {
        // A pull can fail (missed heartbeats while the event loop was busy, a reconnect):
        // what it delivered is in the partitions, the rest comes with the next pull.
        if (this.#stopping) break;
        this.#log(`flexcore: processor ${cfg.name}: pull failed (${(err as Error).message}); pulling again`, "warn");
        await sleep(FETCH_RETRY_MS);
      } finally {
        this.#messages = undefined;
      }
    }
  }

  /**
   * After a run that did not stop cleanly (crash, process out of memory, kill -9), the
   * `window` deliveries it may have fetched beyond its ack floor are processed one at a
   * time, each under a marker in `flex_state` (`<processor>._head`: its sequence and how
   * many runs tried it). A message that kills the host leaves its marker behind, so the next
   * start counts one more attempt, and at `max_deliver` attempts dead-letters it without
   * processing it again. Then the runner goes back to batches.
   */
  async #careful(window: number): Promise<void> {
    const prior = await this.#readMarker<{ seq: number; attempts: number }>(HEAD_MARKER);
    this.#log(`flexcore: processor ${this.cfg.name}: the last run did not stop cleanly; processing up to ${window} messages one at a time`, "warn");
    let left = window;
    while (left > 0 && !this.#stopping && !this.#failed) {
      let m: JsMsg | undefined;
      try {
        const messages = await this.#consumer!.fetch({ max_messages: 1, expires: FETCH_EXPIRES_MS });
        this.#messages = messages;
        for await (const x of messages) m = x;
      } catch (err) {
        if (this.#stopping) return;
        this.#log(`flexcore: processor ${this.cfg.name}: pull failed (${(err as Error).message}); pulling again`, "warn");
        await sleep(FETCH_RETRY_MS);
        continue;
      } finally {
        this.#messages = undefined;
      }
      if (!m) break; // nothing left to deliver: the window was shorter
      left -= 1;
      const entry = this.#entryOf(m);
      if (!entry) continue;
      const partition = this.#partitions[entry.partition]!;
      await this.#ensureStates([entry]);
      if (entry.seq <= this.#states.get(entry.stateKey)!.seq) {
        // Processed before the stop, not acknowledged: skipped without running anything.
        this.#enqueue(entry);
        this.#start(partition);
        continue;
      }
      const attempts = prior?.seq === entry.seq ? prior.attempts : 0;
      if (attempts >= this.cfg.maxDeliver) {
        const error = new ProcessorCrashedError(this.cfg.name, entry.seq, attempts);
        await this.#publisher.publish(...this.#asPublish(this.#deadLetter(entry, attempts, { name: error.name, code: error.code, message: error.message }, error.message)));
        this.totals.deadLettered += 1;
        entry.done = true;
        this.#order.push(entry);
        this.#advance();
        continue;
      }
      await this.#writeMarker(HEAD_MARKER, { seq: entry.seq, attempts: attempts + 1 });
      this.#enqueue(entry);
      this.#start(partition);
      await this.idle();
    }
    if (!this.#failed && !this.#stopping) await this.#kv.delete(snapshotKey(HEAD_MARKER, this.cfg.name)).catch(() => undefined);
  }

  async #readMarker<T>(name: string): Promise<T | undefined> {
    const e = await this.#kv.get(snapshotKey(name, this.cfg.name));
    return e && e.operation === "PUT" && e.length > 0 ? (JSON.parse(new TextDecoder().decode(e.value)) as T) : undefined;
  }

  async #writeMarker(name: string, value: unknown): Promise<void> {
    await this.#kv.put(snapshotKey(name, this.cfg.name), encoder.encode(JSON.stringify(value)));
  }

  #asPublish(x: PendingOutput): [string, Uint8Array, { headers: MsgHdrs }] {
    return [x.subject, x.data, { headers: x.headers }];
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  #accept(m: JsMsg): void {
    const entry = this.#entryOf(m);
    if (entry) this.#enqueue(entry);
  }

  // Checks the delivery sequence and decodes the message; undefined when it is not for
  // this processor (it is then counted as done).
  #entryOf(m: JsMsg): Entry | undefined {
    // An ack covers every earlier delivery, so a delivery that never reached us (a pull cut
    // short) must not be passed by the low-water mark: start again from the ack floor.
    const delivery = m.info.deliverySequence;
    if (delivery !== this.#nextDelivery) {
      this.#fail(new Error(`delivery ${this.#nextDelivery} was lost (got ${delivery})`));
      return undefined;
    }
    this.#nextDelivery = delivery + 1;
    const subject = m.subject;
    let k = this.#bySubject.get(subject);
    if (k === undefined) {
      const tokens = subject.split(".");
      if (tokens.length < 3) {
        this.#order.push({ m, done: true } as Entry);
        this.#advance();
        return undefined;
      }
      const tenant = tokens[1]!;
      const key = tokens[tokens.length - 1]!;
      const stateKey = `${tenant}.${key}`;
      k = this.#byKey.get(stateKey);
      if (k === undefined) {
        k = { tenant, key, stateKey, partition: fnv(stateKey) % this.#partitions.length, pending: 0 };
        this.#byKey.set(stateKey, k);
      }
      if (this.#bySubject.size >= this.#maxKeys) this.#bySubject = new Map();
      this.#bySubject.set(subject, k);
    }
    const { raw, hdr } = rawOf(m);
    const info = m.info;
    if (info.deliveryCount > 1) this.totals.redelivered += 1;
    k.pending += 1;
    const entry: Entry = {
      m,
      done: false,
      seq: info.streamSequence,
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
    return entry;
  }

  #enqueue(entry: Entry): void {
    this.#inFlight += 1;
    this.#order.push(entry);
    const p = this.#partitions[entry.partition]!;
    p.queue.push(entry);
    this.#schedule(p);
  }

  // A partition starts a task when it has a full batch, or LINGER_MS after its first
  // waiting event: messages stream in a few at a time, and tasks of a handful of events
  // would pay the per-task and per-key checkpoint costs for almost nothing.
  #schedule(p: Partition): void {
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

  #start(p: Partition): void {
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

  async #drain(p: Partition): Promise<void> {
    // Full batches back to back; a partial one goes back to #schedule to linger.
    while (p.queue.length > 0 && !this.#failed) {
      const batch = p.queue.splice(0, this.cfg.batchSize);
      this.#wake();
      let outcome: Outcome;
      try {
        await this.#ensureStates(batch);
        outcome = await this.#process(batch);
      } catch (err) {
        this.#fail(err);
        return;
      }
      p.uncommitted += 1;
      p.commitTail = p.commitTail.then(async () => {
        if (this.#failed) return;
        try {
          await this.#commit(outcome);
        } catch (err) {
          this.#fail(err);
        } finally {
          p.uncommitted -= 1;
        }
      });
      if (p.uncommitted >= LOOKAHEAD) await p.commitTail;
      if (p.queue.length < this.cfg.batchSize && !this.#stopping) return;
    }
  }

  async #ensureStates(batch: readonly Entry[]): Promise<void> {
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

  async #loadState(tenant: string, key: string): Promise<KeyState> {
    const entry = await this.#kv.get(stateKvKey(this.cfg.name, tenant, key));
    if (!entry || entry.operation !== "PUT" || entry.length === 0) return { json: null, seq: 0 };
    const saved = JSON.parse(new TextDecoder().decode(entry.value)) as { seq: number; state: unknown };
    return { json: saved.state === null || saved.state === undefined ? null : JSON.stringify(saved.state), seq: saved.seq };
  }

  #buildTask(entries: readonly Entry[]): BatchTask {
    const keyIdx = new Map<string, number>();
    const tenants: string[] = [];
    const keys: string[] = [];
    const states: Array<string | null> = [];
    const n = entries.length;
    const keyIndex = new Uint32Array(n);
    const seqs = new Float64Array(n);
    const storedAt = new Float64Array(n);
    const subjects = new Array<string>(n);
    let bytes = 0;
    for (let i = 0; i < n; i++) bytes += entries[i]!.raw.length;
    const body = new Uint8Array(bytes);
    const offsets = new Uint32Array(n + 1);
    const headerEnds = new Uint32Array(n);
    let pos = 0;
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      let k = keyIdx.get(e.stateKey);
      if (k === undefined) {
        k = keys.length;
        keyIdx.set(e.stateKey, k);
        tenants.push(e.tenant);
        keys.push(e.key);
        states.push(this.#states.get(e.stateKey)!.json);
      }
      keyIndex[i] = k;
      seqs[i] = e.seq;
      storedAt[i] = e.storedAt;
      subjects[i] = e.subject;
      body.set(e.raw, pos);
      headerEnds[i] = pos + e.hdr;
      pos += e.raw.length;
      offsets[i + 1] = pos;
    }
    return { op: "batch", kind: this.cfg.kind, options: this.cfg.validatedOptions, tenants, keys, states, keyIndex, seqs, storedAt, subjects: subjects.join("\n"), body, offsets, headerEnds };
  }

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
    const checkpoints = new Map<string, { json: string | null; seq: number }>();
    let failedAttempts = 0;
    if (todo.length === 0) return { entries: batch, outputs, dlq, checkpoints, failedAttempts };

    let retry: Entry[] = [];
    let result: BatchResult | undefined;
    try {
      result = await this.#pool.runBatch(this.#buildTask(todo));
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
        this.#remember(sk, st);
        checkpoints.set(sk, st);
      });
      this.#collectOutputs(todo, result, outputs, (i) => !failedKeys.has(order.indexOf(todo[i]!.stateKey)));
      if (failedKeys.size > 0) retry = todo.filter((e) => failedKeys.has(order.indexOf(e.stateKey)));
    }
    if (retry.length > 0) {
      const single = await this.#processOneByOne(retry, outputs, dlq, checkpoints);
      failedAttempts += single;
    }
    return { entries: batch, outputs, dlq, checkpoints, failedAttempts };
  }

  #collectOutputs(entries: readonly Entry[], result: BatchResult, out: PendingOutput[], include: (eventIndex: number) => boolean): void {
    for (let j = 0; j < result.outEvent.length; j++) {
      const i = result.outEvent[j]!;
      if (!include(i)) continue;
      const e = entries[i]!;
      // append on fresh headers (set would scan and delete first); values are still checked.
      const h = new EventHeaders();
      h.append(HEADERS.msgId, `${this.cfg.name}:${e.seq}:${result.outIndex[j]}`);
      const meta = metaOf(e);
      h.append(HEADERS.type, result.outTypes[j]!);
      h.append(HEADERS.time, meta.time);
      h.append(HEADERS.correlationId, meta.correlationId);
      h.append(HEADERS.causationId, meta.sourceId);
      h.append(HEADERS.schema, "1");
      h.append(HEADERS.contentType, "application/json");
      h.append("Flex-Source-Seq", String(e.seq));
      const outKey = result.outKeys[j] ?? e.key;
      out.push({ subject: derivedSubject(e.tenant, this.cfg.name, outKey), data: result.outBody.slice(result.outOffsets[j]!, result.outOffsets[j + 1]!), headers: h });
    }
  }

  async #processOneByOne(entries: readonly Entry[], outputs: PendingOutput[], dlq: PendingOutput[], checkpoints: Map<string, { json: string | null; seq: number }>): Promise<number> {
    let failedAttempts = 0;
    for (const e of entries) {
      const allowed = Math.max(1, this.cfg.maxDeliver - (e.m.info.deliveryCount - 1));
      let lastError: { name: string; code: string | undefined; message: string } = { name: "Error", code: undefined, message: "unknown" };
      let done = false;
      for (let attempt = 1; attempt <= allowed && !done; attempt++) {
        if (attempt > 1) {
          e.m.working();
          const wait = this.cfg.backoffMs[Math.min(attempt - 2, this.cfg.backoffMs.length - 1)]!;
          await sleep(wait);
          e.m.working();
        }
        try {
          const result = await this.#pool.runBatch(this.#buildTask([e]));
          if (result.failures.length > 0) {
            lastError = result.failures[0]!;
            failedAttempts += 1;
            continue;
          }
          const st = { json: result.states[0] ?? null, seq: e.seq };
          this.#remember(e.stateKey, st);
          checkpoints.set(e.stateKey, st);
          this.#collectOutputs([e], result, outputs, () => true);
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
      this.#remember(e.stateKey, next);
      checkpoints.set(e.stateKey, next);
      const reason = new ProcessorFailedError(this.cfg.name, e.seq, `${lastError.name}${lastError.code ? ` [${lastError.code}]` : ""}: ${lastError.message}`);
      dlq.push(this.#deadLetter(e, allowed + (e.m.info.deliveryCount - 1), lastError, reason.message));
    }
    return failedAttempts;
  }

  /** The `ProcessingFailed` dead letter of `e` (its `Nats-Msg-Id` is fixed, so a repeat is stored once). */
  #deadLetter(e: Entry, attempts: number, error: { name: string; code: string | undefined; message: string }, reason: string): PendingOutput {
    const meta = metaOf(e);
    const h = deadLetterHeaders({
      // A redrive that failed again is a new dead letter (its own id), carrying the earlier reasons.
      id: e.redrive ? `${this.cfg.name}:${e.seq}:dlq:r${e.redrive.dlqSeq}` : `${this.cfg.name}:${e.seq}:dlq`,
      type: "ProcessingFailed",
      causationId: meta.sourceId,
      sourceSeq: e.seq,
      sourceSubject: e.subject,
      reason,
    });
    const body = {
      processor: this.cfg.name,
      kind: this.cfg.kind,
      seq: e.seq,
      subject: e.subject,
      tenant: e.tenant,
      key: e.key,
      type: meta.type,
      time: meta.time,
      attempts,
      error: { name: error.name, code: error.code ?? null, message: error.message },
      reason,
      ...(e.redrive ? { previousReasons: e.redrive.reasons, redrivenFrom: e.redrive.dlqSeq } : {}),
      data: decodeData(e.m.data),
    };
    this.#log(`flexcore: ${reason}; dead-lettered to ${dlqSubject(e.tenant, this.cfg.name)}`, "warn");
    return { subject: dlqSubject(e.tenant, this.cfg.name), data: encoder.encode(JSON.stringify(body)), headers: h };
  }

  // Outputs first, then the state checkpoints, then the acks: a crash anywhere in between
  // replays the batch, whose outputs carry the same Nats-Msg-Id and are stored once.
  async #commit(o: Outcome): Promise<void> {
    const publish = (x: PendingOutput): Promise<unknown> => this.#publisher.publish(x.subject, x.data, { headers: x.headers });
    if (o.outputs.length > 0 || o.dlq.length > 0) await Promise.all([...o.outputs.map(publish), ...o.dlq.map(publish)]);
    await this.#writeCheckpoints(o.checkpoints);
    const now = performance.now();
    for (const e of o.entries) {
      e.done = true;
      this.latency.add(now - e.receivedAt);
      const k = this.#byKey.get(e.stateKey);
      if (k && k.pending > 0) k.pending -= 1;
    }
    if (this.#states.size > this.#maxKeys) this.#evict();
    this.totals.processed += o.entries.length;
    this.totals.outputs += o.outputs.length;
    this.totals.errors += o.failedAttempts;
    this.totals.deadLettered += o.dlq.length;
    this.#inFlight -= o.entries.length;
    this.#advance();
    this.#wake();
    this.#checkIdle();
  }

  async #writeCheckpoints(checkpoints: ReadonlyMap<string, { readonly json: string | null; readonly seq: number }>): Promise<void> {
    if (checkpoints.size === 0) return;
    await Promise.all(
      [...checkpoints].map(([sk, st]) => {
        const dot = sk.indexOf(".");
        const subject = `$KV.${BUCKETS.state}.${stateKvKey(this.cfg.name, sk.slice(0, dot), sk.slice(dot + 1))}`;
        return this.#publisher.publish(subject, encoder.encode(`{"seq":${st.seq},"state":${st.json ?? "null"}}`));
      }),
    );
  }

  // Acks the last delivery before which every delivery is committed (partitions commit out
  // of order); on an AckPolicy.All consumer that acks all of them.
  #advance(): void {
    const order = this.#order;
    let head = this.#head;
    while (head < order.length && order[head]!.done) head += 1;
    if (head === this.#head) return;
    order[head - 1]!.m.ack();
    if (head === order.length) {
      this.#order = [];
      head = 0;
    } else if (head >= 4_096) {
      this.#order = order.slice(head);
      head = 0;
    }
    this.#head = head;
  }

  #remember(stateKey: string, st: KeyState): void {
    this.#states.delete(stateKey);
    this.#states.set(stateKey, st);
  }

  // Drops the least recently changed states with nothing in flight: their last commit
  // wrote exactly this state to flex_state, where #ensureStates finds it again.
  #evict(): void {
    const target = Math.floor(this.#maxKeys * 0.9);
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
  #fail(err: unknown): void {
    if (this.#failed || this.#stopping) return;
    this.#failed = true;
    this.#log(`flexcore: processor ${this.cfg.name} failed: ${(err as Error)?.message ?? String(err)}; restarting from its checkpoints`, "error");
    // What is in flight will not be acknowledged by this runner: nobody waits for it.
    for (const w of this.#idleWaiters.splice(0)) w();
    this.#onFailure(this, err);
  }

  /** Stops fetching and waits for what was fetched to be processed, committed and acknowledged. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#wake();
    await this.#standby;
    await this.#messages?.close().catch(() => undefined);
    await this.#fetching;
    await this.#redriveMessages?.close().catch(() => undefined);
    await this.#redriving;
    for (const p of this.#partitions) this.#schedule(p);
    if (!this.#failed) {
      // Drain what is queued: partitions keep running until their queues are empty.
      while (this.#partitions.some((p) => p.busy || p.queue.length > 0) && !this.#failed) await sleep(5);
    }
    await Promise.all(this.#partitions.map((p) => p.commitTail));
    // A clean stop: everything fetched is acknowledged, the next start needs no care.
    if (!this.#failed && this.#inFlight === 0 && this.#consumer) await this.#kv.delete(snapshotKey(RUN_MARKER, this.cfg.name)).catch(() => undefined);
    if (this.#keepAlive) clearInterval(this.#keepAlive);
    for (const p of this.#partitions) if (p.linger) clearTimeout(p.linger);
    for (const w of this.#idleWaiters.splice(0)) w();
    await this.#lease.release();
  }
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
  const publisher = options.publisher ?? createPublisher(nc);
  const jsm = await jetstreamManager(nc);
  const kvm = new Kvm(nc);
  const kv = await kvm.open(BUCKETS.state);
  const leases = await openTtlKv(nc, BUCKETS.leases);
  const instanceId = options.instanceId ?? `${hostname()}-${process.pid}-${randomBytes(4).toString("hex")}`;
  const leaseTtlMs = options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
  if (!Number.isInteger(leaseTtlMs) || leaseTtlMs < 200) throw new InvalidOptionError("leaseTtlMs", leaseTtlMs, "an integer number of ms from 200 and up");
  const runners = new Map<string, ProcessorRunner>();
  let closing = false;
  const restarts = new Set<Promise<void>>();

  const create = (cfg: ResolvedProcessor): ProcessorRunner => new ProcessorRunner(nc, jsm, kv, pool, publisher, cfg, log, onFailure, maxKeys, leases, instanceId, leaseTtlMs);
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
      if (!definitions.has(cfg.kind)) throw new UnknownProcessorError(cfg.kind, [...definitions.keys()]);
    }
    // Workers load their code while the consumers are set up.
    const warm = pool.warmUp();
    warm.catch(() => undefined);
    for (const cfg of options.processors) {
      const runner = create(cfg);
      runners.set(cfg.name, runner);
      await runner.start();
    }
    const known = await warm;
    for (const cfg of options.processors) {
      if (!known.includes(cfg.kind)) throw new UnknownProcessorError(cfg.kind, known);
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
      return Promise.all(
        [...runners.values()].map(async (r) => {
          const info = await jsm.consumers.info(STREAMS.events, r.consumerName).catch(() => undefined);
          return { name: r.consumerName, lag: info ? info.num_pending + info.num_ack_pending : 0 };
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
