import { createHash } from "node:crypto";
import { setMaxListeners } from "node:events";
import { hostname } from "node:os";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import { nuid } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUILTIN_PROCESSORS, createProcessorPool, createScriptRunner, UnknownProcessorError } from "../processors/index.js";
import type { ProcessorPool, ScriptRunner, ScriptRunnerOptions } from "../processors/index.js";
import { BUCKETS, ConcurrencyError, createEventStore, deadLetterHeaders, decodeData, decodeEvent, dlqSubject, eventSubject, FlexError, HEADERS, InvalidOptionError, openTtlKv, parseSubject, STREAMS } from "../streams/index.js";
import type { EventInput, EventStore, TtlKv } from "../streams/index.js";
import { latestFireTime, parseCron } from "./cron.js";
import type { CronSchedule } from "./cron.js";
import { backoffDelay, parseDefinitionText, validateDefinition } from "./definition.js";
import type { StepDefinition, WorkflowDefinition } from "./definition.js";
import { DEFINITION_PREFIX, DefinitionStore, orderKey, parseTwoPartKey, RUN_INDEX_PREFIX, runIndexKey, runLeaseKey } from "./definitions.js";
import type { StoredWorkflow } from "./definitions.js";
import { DefinitionUnavailableError, UntrustedDefinitionError, WorkflowNotFoundError } from "./errors.js";
import { createOperatorTrust } from "./trust.js";
import type { OperatorTrust } from "./trust.js";
import { clipLog, RUN_EVENTS, summarize, WORKFLOW_CATEGORY } from "./events.js";
import type { TriggerInfo } from "./events.js";
import { applyRunEvent, attachDefinition, initialRunState, isTerminal, templateContext } from "./state.js";
import type { RunState, StepState } from "./state.js";
import { StepExecutor } from "./steps.js";
import type { ProcessorInvoker, StepOutcome } from "./steps.js";
import { condition } from "./template.js";
import { startRunWith } from "./start.js";
import type { StartOptions, StartResult } from "./start.js";

/** How long a runner owns a run without renewing its lease. */
export const DEFAULT_RUN_LEASE_MS = 15_000;
/** Runs one runner drives at once. */
export const DEFAULT_MAX_RUNS = 256;
/** While steps run, how often the owner looks for events others appended (a cancel). */
export const DEFAULT_POLL_MS = 500;
/** A run index entry without a RunStarted event after this long is dropped. */
const ORPHAN_INDEX_MS = 10_000;
const MAX_FINISHED_REMEMBERED = 10_000;
// Cron schedules have minute resolution; checking every second fires within a second of it.
const CRON_TICK_MS = 1_000;
/** How late a missed cron fire may still run (after a stall or restart). */
export const CRON_CATCH_UP_MS = 60 * 60_000;
// Validated definitions kept per (tenant, name, version, bucket revision).
const MAX_CACHED_DEFINITIONS = 1_000;
// Start errors a redelivery cannot cure.
const PERMANENT_START_ERRORS = new Set(["FLEX_WORKFLOW_NOT_FOUND", "FLEX_WORKFLOW_INVALID", "FLEX_SUBJECT_TOKEN", "FLEX_INVALID_OPTION", "FLEX_INVALID_EVENT", "FLEX_PAYLOAD_TOO_LARGE"]);
/** Deliveries of a trigger event before it is dead-lettered to `dlq.<tenant>.workflow-<name>`. */
export const TRIGGER_MAX_DELIVER = 5;
// Pause before a failed trigger event comes again, doubled per delivery up to the max.
const TRIGGER_NAK_MS = 1_000;
const TRIGGER_MAX_NAK_MS = 30_000;
const TRIGGER_ACK_WAIT_NS = 30_000_000_000;
// Event data up to this size is copied into a trigger's dead letter.
const DLQ_MAX_DATA_BYTES = 256 * 1024;
// Tries of recording a run's failure before the runner leaves the run to a later rescan.
const MAX_FAIL_RETRIES = 8;

/** `flexwf_<tenant>_<name>_<digest>`: the name of a workflow's trigger consumers before `_v<version>_<trigger index>`. */
function triggerConsumerPrefix(tenant: string, name: string): string {
  // Readable where the names are plain; the digest keeps names that read alike apart (`café`, `caf_`).
  const digest = createHash("sha256").update(`${tenant}\u0000${name}`).digest("hex").slice(0, 12);
  return `flexwf_${tenant}_${name}`.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 80) + `_${digest}`;
}

/** The version and trigger index of a trigger consumer named `<prefix>_v<version>_<index>`, or undefined. */
function parseTriggerConsumer(consumer: string, prefix: string): { version: number; index: number } | undefined {
  if (!consumer.startsWith(`${prefix}_v`)) return undefined;
  const m = /^(\d+)_(\d+)$/u.exec(consumer.slice(prefix.length + 2));
  return m ? { version: Number(m[1]), index: Number(m[2]) } : undefined;
}

/** The code and message of an error for a log line or an event: `FLEX_...: message`. */
function describeError(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const message = typeof e?.message === "string" ? e.message : String(err);
  return err instanceof FlexError || typeof e?.code === "string" ? `${String(e.code)}: ${message}` : message;
}

/** Options of {@link startWorkflowRunner}. */
export interface WorkflowRunnerOptions {
  /** This instance's id, written in StepStarted. @default host-pid-nuid */
  readonly id?: string;
  /** Script runner to use (not closed by the runner). @default one created with `scriptRunnerOptions` */
  readonly scripts?: ScriptRunner;
  readonly scriptRunnerOptions?: ScriptRunnerOptions;
  /**
   * What runs processor steps, off the event loop: `flexcore up` passes its processor runtime
   * (`ProcessorRuntime` has this `invoke`), so steps share its Piscina pool (not closed by the runner).
   * @default a one-thread pool of the built-in processors, started at the first processor step and closed with the runner
   */
  readonly processors?: ProcessorInvoker;
  /** @default 15000 */
  readonly leaseMs?: number;
  /** @default 256 */
  readonly maxRuns?: number;
  /** @default 500 */
  readonly pollMs?: number;
  /** How often unowned runs are looked for (besides the watch). @default leaseMs */
  readonly rescanMs?: number;
  /** Start runs from event and cron triggers. @default true */
  readonly triggers?: boolean;
  /** The clock cron schedules are checked against (tests, simulations). @default () => new Date() */
  readonly now?: () => Date;
  readonly log?: (line: string, level?: "warn" | "error") => void;
  /**
   * The definitions the operator installed (`startWorkflows` fills it from `flexcore.yaml`):
   * only their `trusted: true` steps run trusted. A stored definition with trusted steps that
   * is not in it is never run (its runs fail with `FLEX_WORKFLOW_UNTRUSTED`).
   * @default an empty trust: no step runs trusted
   */
  readonly trust?: OperatorTrust;
}

/**
 * What one runner recorded since it started (for `/metrics`): the outcomes it wrote to run
 * logs, so instances add up without double counting.
 */
export interface WorkflowRunnerStats {
  /** Runs this runner ended, by outcome (`cancelled`: a cancel it saw while driving the run). */
  readonly runs: { readonly succeeded: number; readonly failed: number; readonly cancelled: number };
  /** Step attempts this runner started and ended, by outcome (`retried`: failed with attempts left; `interrupted`: left running by a lost runner). */
  readonly steps: { readonly started: number; readonly succeeded: number; readonly failed: number; readonly retried: number; readonly interrupted: number; readonly skipped: number };
}

/** A workflow runner: drives runs (its own and those whose runner died), fires triggers. */
export interface WorkflowRunner extends AsyncDisposable {
  readonly id: string;
  /** Runs this instance drives now. */
  readonly active: number;
  /** Outcomes recorded since start; a fresh copy on each read. */
  readonly stats: WorkflowRunnerStats;
  /** False once `close()` was called. */
  readonly running: boolean;
  /** Starts a run and drives it here at once (no wait for the watch). */
  start(tenant: string, workflow: string, options?: StartOptions): Promise<StartResult>;
  /** Stops driving (runs stay unfinished and are resumed by a runner later), closes consumers. */
  close(): Promise<void>;
}

interface Lease {
  revision: number;
  lost: boolean;
}

const encoder = new TextEncoder();

/** Starts a runner on `nc`; the topology must exist (`ensureTopology`). */
export async function startWorkflowRunner(nc: NatsConnection, options: WorkflowRunnerOptions = {}): Promise<WorkflowRunner> {
  const int = (field: string, v: number | undefined, d: number, min: number): number => {
    if (v === undefined) return d;
    if (!Number.isInteger(v) || v < min) throw new InvalidOptionError(field, v, `an integer from ${min} and up`);
    return v;
  };
  const leaseMs = int("leaseMs", options.leaseMs, DEFAULT_RUN_LEASE_MS, 200);
  const cfg = {
    id: options.id ?? `${hostname()}-${process.pid}-${nuid.next().slice(-6)}`,
    leaseMs,
    maxRuns: int("maxRuns", options.maxRuns, DEFAULT_MAX_RUNS, 1),
    pollMs: int("pollMs", options.pollMs, DEFAULT_POLL_MS, 10),
    rescanMs: int("rescanMs", options.rescanMs, leaseMs, 50),
    triggers: options.triggers ?? true,
    log: options.log ?? (() => undefined),
    now: options.now ?? (() => new Date()),
    trust: options.trust ?? createOperatorTrust(),
  };
  const ownsScripts = !options.scripts;
  const scripts = options.scripts ?? (await createScriptRunner(options.scriptRunnerOptions));
  // Fail closed, loudly: the operator learns at start, not from the first failed run.
  if (scripts.isolation === "none") cfg.log("workflows: bubblewrap cannot run here, so untrusted script steps will fail with FLEX_SANDBOX_UNAVAILABLE; `flexcore doctor` says why and how to fix it (or set workflows.sandbox: plain to run them unsandboxed)", "warn");
  const processors = options.processors ?? ownProcessorPool();
  const store = await createEventStore(nc);
  const defs = await DefinitionStore.open(nc);
  const leases = await openTtlKv(nc, BUCKETS.leases);
  const runner = new DurableWorkflowRunner(nc, cfg, scripts, ownsScripts, processors, options.processors ? undefined : (processors as OwnProcessorPool), store, defs, leases, await jetstreamManager(nc));
  await runner.begin();
  return runner;
}

interface OwnProcessorPool extends ProcessorInvoker {
  close(): Promise<void>;
}

/** The built-in processors on a one-thread Piscina pool, started at the first call. */
function ownProcessorPool(): OwnProcessorPool {
  let pool: ProcessorPool | undefined;
  return {
    async invoke(kind, raw, inputs, state, signal) {
      const def = BUILTIN_PROCESSORS.get(kind);
      if (!def) throw new UnknownProcessorError(kind, [...BUILTIN_PROCESSORS.keys()]);
      const options = def.validateOptions(raw ?? {}, "options");
      pool ??= createProcessorPool({ threads: 1 });
      return pool.invoke(kind, options, inputs, state, signal);
    },
    close: async () => pool?.close(),
  };
}

interface Config {
  readonly id: string;
  readonly leaseMs: number;
  readonly maxRuns: number;
  readonly pollMs: number;
  readonly rescanMs: number;
  readonly triggers: boolean;
  readonly log: (line: string, level?: "warn" | "error") => void;
  readonly now: () => Date;
  readonly trust: OperatorTrust;
}

class DurableWorkflowRunner implements WorkflowRunner {
  readonly id: string;
  readonly #cfg: Config;
  readonly #scripts: ScriptRunner;
  readonly #ownsScripts: boolean;
  readonly #ownPool: OwnProcessorPool | undefined;
  readonly #store: EventStore;
  readonly #defs: DefinitionStore;
  readonly #leases: TtlKv;
  readonly #jsm: JetStreamManager;
  readonly #js: JetStreamClient;
  readonly #executor: StepExecutor;
  readonly #drivers = new Map<string, Promise<void>>();
  // Runs this instance finished lately: their index watch events come after the end.
  readonly #finished = new Set<string>();
  readonly #starting = new Set<string>();
  // A run was passed over for lack of capacity: look again as soon as a slot frees up.
  #passedOver = false;
  #rescanning: Promise<void> | undefined;
  #rescanStarted = 0;
  readonly #stop = new AbortController();
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #consumers = new Map<string, { name: string; messages: ConsumerMessages | undefined; done: Promise<void> }>();
  /** `since`: when the version was stored; nothing before it is owed. */
  readonly #crons = new Map<string, { tenant: string; name: string; schedules: CronSchedule[]; since: number }>();
  readonly #definitions = new Map<string, WorkflowDefinition>();
  #watch: { stop(): void } | undefined;
  #defWatch: { stop(): void } | undefined;
  /** Fire times up to here have been started; a new runner looks back CRON_CATCH_UP_MS. */
  #cronCheckedUpTo: number | undefined;
  #closed = false;

  constructor(nc: NatsConnection, cfg: Config, scripts: ScriptRunner, ownsScripts: boolean, processors: ProcessorInvoker, ownPool: OwnProcessorPool | undefined, store: EventStore, defs: DefinitionStore, leases: TtlKv, jsm: JetStreamManager) {
    this.id = cfg.id;
    this.#cfg = cfg;
    this.#scripts = scripts;
    this.#ownsScripts = ownsScripts;
    this.#ownPool = ownPool;
    this.#store = store;
    this.#defs = defs;
    this.#leases = leases;
    this.#jsm = jsm;
    this.#js = jetstream(nc);
    this.#executor = new StepExecutor(nc, scripts, processors);
    // Every waiting run listens for the runner's stop.
    setMaxListeners(0, this.#stop.signal);
  }

  get active(): number {
    return this.#drivers.size;
  }

  readonly counts = { runs: { succeeded: 0, failed: 0, cancelled: 0 }, steps: { started: 0, succeeded: 0, failed: 0, retried: 0, interrupted: 0, skipped: 0 } };

  get stats(): WorkflowRunnerStats {
    return { runs: { ...this.counts.runs }, steps: { ...this.counts.steps } };
  }

  get running(): boolean {
    return !this.#closed;
  }

  /** Counts the events this runner wrote to a run log. */
  recorded(events: readonly EventInput[]): void {
    const { runs, steps } = this.counts;
    for (const e of events) {
      const data = e.data as { willRetry?: boolean; interrupted?: boolean } | undefined;
      switch (e.type) {
        case RUN_EVENTS.runSucceeded: runs.succeeded += 1; break;
        case RUN_EVENTS.runFailed: runs.failed += 1; break;
        case RUN_EVENTS.stepStarted: steps.started += 1; break;
        case RUN_EVENTS.stepSucceeded: steps.succeeded += 1; break;
        case RUN_EVENTS.stepSkipped: steps.skipped += 1; break;
        case RUN_EVENTS.stepFailed:
          if (data?.interrupted) steps.interrupted += 1;
          else if (data?.willRetry) steps.retried += 1;
          else steps.failed += 1;
          break;
        default: break;
      }
    }
  }

  async begin(): Promise<void> {
    const w = await this.#defs.kv.watch({ key: `${RUN_INDEX_PREFIX}.>` });
    this.#watch = w;
    void (async () => {
      for await (const e of w) if (e.operation === "PUT") this.#offer(e.key);
    })().catch((err: unknown) => this.#cfg.log(`workflows: run watch ended: ${(err as Error).message}`, "warn"));
    const rescan = setInterval(() => void this.#rescan(), this.#cfg.rescanMs);
    rescan.unref();
    this.#timers.push(rescan);
    if (this.#cfg.triggers) {
      const dw = await this.#defs.kv.watch({ key: "def.>" });
      this.#defWatch = dw;
      void (async () => {
        for await (const e of dw) {
          if (e.operation !== "PUT") continue;
          try {
            const parsed = parseTwoPartKey(e.key, DEFINITION_PREFIX);
            if (!parsed) continue;
            const w = JSON.parse(new TextDecoder().decode(e.value)) as StoredWorkflow;
            // Triggers come from the definition as validated here for the key's tenant, not
            // from the stored object: a filter outside the tenant's events never gets installed.
            const definition = this.#validate(parsed.tenant, parsed.name, w);
            await this.#installTriggers({ ...w, tenant: parsed.tenant, name: parsed.name, definition });
          } catch (err) {
            this.#cfg.log(`workflows: triggers of ${e.key}: ${describeError(err)}`, "warn");
          }
        }
      })().catch((err: unknown) => {
        if (!this.#closed) this.#cfg.log(`workflows: definition watch ended: ${describeError(err)}`, "warn");
      });
      const tick = setInterval(() => void this.#cronTick().catch((err: unknown) => this.#cfg.log(`workflows: cron tick: ${describeError(err)}`, "warn")), CRON_TICK_MS);
      tick.unref();
      this.#timers.push(tick);
    }
  }

  async start(tenant: string, workflow: string, options: StartOptions = {}): Promise<StartResult> {
    const runId = options.runId ?? nuid.next();
    const key = runIndexKey(tenant, runId);
    // The index watch reports the run before RunStarted is stored: this instance drives it
    // from here, from the event it stores, without reading it back.
    this.#starting.add(key);
    const leaseKey = runLeaseKey(tenant, runId);
    // The lease is taken while the run is stored: one round trip less per run.
    const leaseP = this.#closed || this.#drivers.size >= this.#cfg.maxRuns ? Promise.resolve(undefined) : this.#acquire(leaseKey).catch(() => undefined);
    try {
      const [{ result: r, stored }, lease] = await Promise.all([startRunWith(this.#store, this.#defs, tenant, workflow, { ...options, runId }), leaseP]);
      // The definition just read: validated here once, so the run need not read it again.
      if (r.started) await this.definition(tenant, stored.name, stored.version, stored).catch(() => undefined);
      const initial = r.started ? applyRunEvent(initialRunState(r.runId, tenant), { type: RUN_EVENTS.runStarted, data: r.started.data, time: r.started.time, revision: r.started.revision }) : undefined;
      this.#starting.delete(key);
      this.#offer(key, initial, lease);
      return r;
    } catch (err) {
      const lease = await leaseP;
      if (lease) await this.#leases.kv.delete(leaseKey, { previousSeq: lease.revision }).catch(() => undefined);
      throw err;
    } finally {
      this.#starting.delete(key);
    }
  }

  #rescan(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    // Single flight, but a listing that hangs (a slow or reconnecting server) must not stop
    // every later rescan: after a while another one may start.
    if (this.#rescanning && Date.now() - this.#rescanStarted > Math.max(5_000, 4 * this.#cfg.rescanMs)) this.#rescanning = undefined;
    if (this.#rescanning) return this.#rescanning;
    this.#rescanStarted = Date.now();
    const scan: Promise<void> = Promise.resolve()
      .then(async () => {
        for await (const k of await this.#defs.kv.keys(`${RUN_INDEX_PREFIX}.>`)) this.#offer(k);
      })
      .catch((err: unknown) => {
        if (!this.#closed) this.#cfg.log(`workflows: rescan failed: ${(err as Error).message}`, "warn");
      })
      // A scan given up on as hung must not clear the one that replaced it.
      .finally(() => {
        if (this.#rescanning === scan) this.#rescanning = undefined;
      });
    this.#rescanning = scan;
    return scan;
  }

  // A slot freed up while runs were passed over. A rescan already under way may have offered
  // them before the slot freed, so one more starts after it rather than joining it.
  #rescanForSlot(): void {
    const running = this.#rescanning;
    if (!running) void this.#rescan();
    else void running.then(() => this.#rescan());
  }

  #offer(indexKey: string, initial?: RunState, lease?: Lease): void {
    const parsed = parseTwoPartKey(indexKey, RUN_INDEX_PREFIX);
    if (!parsed) return;
    const { tenant, name: runId } = parsed;
    if (!this.#closed && this.#drivers.size >= this.#cfg.maxRuns && !this.#drivers.has(indexKey)) this.#passedOver = true;
    if (this.#closed || this.#drivers.has(indexKey) || this.#finished.has(indexKey) || this.#starting.has(indexKey) || this.#drivers.size >= this.#cfg.maxRuns) {
      // A lease taken for a run this instance will not drive goes back at once.
      if (lease) void this.#leases.kv.delete(runLeaseKey(tenant, runId), { previousSeq: lease.revision }).catch(() => undefined);
      // An entry written again for a run that ended here (a start retried) goes too.
      if (this.#finished.has(indexKey) && !this.#closed) void this.#defs.kv.delete(indexKey).catch(() => undefined);
      return;
    }
    const p = this.#own(tenant, runId, indexKey, initial, lease)
      .catch((err: unknown) => {
        if (!this.#closed) this.#cfg.log(`workflows: run ${tenant}/${runId}: ${describeError(err)}`, "warn");
      })
      .finally(() => {
        this.#drivers.delete(indexKey);
        if (this.#passedOver && !this.#closed) {
          this.#passedOver = false;
          this.#rescanForSlot();
        }
      });
    this.#drivers.set(indexKey, p);
  }

  // Lease `wf.<tenant>.<runId>` in flex_leases: { owner, expiresAt }; taken over only once expired.
  async #acquire(key: string): Promise<Lease | undefined> {
    const body = (): Uint8Array => encoder.encode(JSON.stringify({ owner: this.id, expiresAt: Date.now() + this.#cfg.leaseMs }));
    try {
      return { revision: await this.#leases.create(key, body(), this.#cfg.leaseMs), lost: false };
    } catch {
      const e = await this.#leases.kv.get(key);
      if (!e) return undefined;
      if (e.operation === "PUT") {
        const v = e.json<{ owner: string; expiresAt: number }>();
        if (v.owner !== this.id && v.expiresAt > Date.now()) return undefined;
      }
      try {
        return { revision: await this.#leases.update(key, body(), e.revision, this.#cfg.leaseMs), lost: false };
      } catch {
        return undefined;
      }
    }
  }

  async #own(tenant: string, runId: string, indexKey: string, initial: RunState | undefined, taken: Lease | undefined): Promise<void> {
    const leaseKey = runLeaseKey(tenant, runId);
    const lease = taken ?? (await this.#acquire(leaseKey));
    if (!lease) return;
    const renew = setInterval(() => {
      this.#leases
        .update(leaseKey, encoder.encode(JSON.stringify({ owner: this.id, expiresAt: Date.now() + this.#cfg.leaseMs })), lease.revision, this.#cfg.leaseMs)
        .then((rev) => (lease.revision = rev), () => (lease.lost = true));
    }, Math.max(50, Math.floor(this.#cfg.leaseMs / 3)));
    renew.unref();
    try {
      const done = await new Drive(this, tenant, runId, lease, initial).run();
      if (done) {
        this.#finished.add(indexKey);
        if (this.#finished.size > MAX_FINISHED_REMEMBERED) this.#finished.delete(this.#finished.values().next().value!);
      }
      clearInterval(renew);
      await Promise.all([
        done ? this.#defs.kv.delete(indexKey).catch(() => undefined) : undefined,
        // A finished run's lease is left to expire (the bucket's max age): nobody wants the
        // run any more, and that is one write less per run. An unfinished one is handed over now.
        lease.lost || done ? undefined : this.#leases.kv.delete(leaseKey, { previousSeq: lease.revision }).catch(() => undefined),
      ]);
    } finally {
      clearInterval(renew);
    }
  }

  // Used by Drive.
  get store(): EventStore {
    return this.#store;
  }
  get executor(): StepExecutor {
    return this.#executor;
  }
  get cfg(): Config {
    return this.#cfg;
  }
  get stopSignal(): AbortSignal {
    return this.#stop.signal;
  }

  /**
   * The definition a run of `tenant` names, as this runner will run it: read from the store
   * (`stored` when the caller has just read it), validated again from its source for the
   * tenant, and, when it has trusted steps, found in the operator's trust.
   * @throws DefinitionUnavailableError, UntrustedDefinitionError
   */
  async definition(tenant: string, name: string, version: number, stored?: StoredWorkflow): Promise<WorkflowDefinition> {
    if (!name || !Number.isInteger(version) || version < 1) throw new DefinitionUnavailableError(tenant, name || "(none)", undefined, "the run's first event is not a RunStarted naming a workflow and a version");
    let w = stored;
    if (!w) {
      try {
        w = await this.#defs.get(tenant, name, version);
      } catch (err) {
        if (err instanceof WorkflowNotFoundError || (err instanceof FlexError && err.code === "FLEX_WORKFLOW_INVALID")) throw new DefinitionUnavailableError(tenant, name, version, err.message, { cause: err });
        throw err;
      }
    }
    const cacheKey = `${tenant}\u0000${name}\u0000${version}\u0000${w.revision}`;
    const cached = this.#definitions.get(cacheKey);
    if (cached) return cached;
    const definition = this.#validate(tenant, name, w);
    this.#definitions.set(cacheKey, definition);
    if (this.#definitions.size > MAX_CACHED_DEFINITIONS) this.#definitions.delete(this.#definitions.keys().next().value!);
    return definition;
  }

  #validate(tenant: string, name: string, w: StoredWorkflow): WorkflowDefinition {
    let definition: WorkflowDefinition;
    try {
      if (typeof w.source !== "string") throw new Error("the stored entry has no source text");
      definition = validateDefinition(parseDefinitionText(w.source), tenant, { allowTrusted: true });
    } catch (err) {
      throw new DefinitionUnavailableError(tenant, name, w.version, `it does not validate: ${(err as Error).message}`, { cause: err });
    }
    if (definition.name !== name) throw new DefinitionUnavailableError(tenant, name, w.version, `the stored source is of workflow \`${definition.name}\``);
    const trusted = definition.steps.flatMap((st) => (st.kind === "script" && st.trusted ? [st.id] : []));
    if (trusted.length > 0 && !this.#cfg.trust.has(tenant, definition)) throw new UntrustedDefinitionError(tenant, name, trusted);
    return definition;
  }

  async #installTriggers(w: StoredWorkflow): Promise<void> {
    const def = w.definition;
    const cronKey = `${w.tenant}\u0000${w.name}`;
    const schedules = def.triggers.flatMap((t) => (t.kind === "cron" ? [parseCron(t.schedule, t.timezone)] : []));
    if (schedules.length > 0) this.#crons.set(cronKey, { tenant: w.tenant, name: w.name, schedules, since: Date.parse(w.storedAt) || 0 });
    else this.#crons.delete(cronKey);
    // One durable consumer per event trigger, shared by all runners. A new version's consumer
    // starts where the old one's acknowledgements end, and the old goes only after it exists:
    // no event falls between two versions (one already started is not started again, its run
    // id is its sequence). Consumers of versions this runner never saw (stored while no runner
    // was up) are found by name on the server, not in memory.
    for (const [k, c] of this.#consumers) {
      if (!k.startsWith(`${cronKey}#`)) continue;
      c.messages?.stop();
      this.#consumers.delete(k);
      await c.done;
    }
    if (this.#closed) return;
    const prefix = triggerConsumerPrefix(w.tenant, w.name);
    const existing = new Map<string, { version: number; index: number; ackFloor: number }>();
    for await (const c of this.#jsm.consumers.list(STREAMS.events)) {
      const v = parseTriggerConsumer(c.name, prefix);
      if (v) existing.set(c.name, { ...v, ackFloor: c.ack_floor.stream_seq });
    }
    // A runner behind the watch installs nothing older than what another already installed.
    if ([...existing.values()].some((c) => c.version > w.version)) return;
    const stale = [...existing].filter(([, c]) => c.version !== w.version);
    const triggers: Array<{ name: string; t: Extract<WorkflowDefinition["triggers"][number], { kind: "event" }> }> = [];
    def.triggers.forEach((t, i) => {
      if (t.kind === "event") triggers.push({ name: `${prefix}_v${w.version}_${i}`, t });
    });
    for (const { name, t } of triggers) {
      if (existing.has(name)) continue;
      const index = Number(name.slice(name.lastIndexOf("_") + 1));
      // The same trigger's old consumer when there is one, else the one furthest behind.
      const same = stale.filter(([, c]) => c.index === index);
      const from = (same.length > 0 ? same : stale).map(([, c]) => c.ackFloor);
      const start = from.length > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: Math.min(...from) + 1 } : { deliver_policy: DeliverPolicy.New };
      try {
        await this.#jsm.consumers.add(STREAMS.events, { durable_name: name, filter_subject: t.subject, ...start, ack_policy: AckPolicy.Explicit, ack_wait: TRIGGER_ACK_WAIT_NS, max_deliver: TRIGGER_MAX_DELIVER });
      } catch (err) {
        // Exists already (another runner made it); if not, the old consumers stay for a later try.
        await this.#jsm.consumers.info(STREAMS.events, name).catch(() => {
          throw err;
        });
      }
    }
    for (const [name] of stale) await this.#jsm.consumers.delete(STREAMS.events, name).catch(() => undefined);
    for (const { name, t } of triggers) {
      if (this.#closed) return;
      const entry = { name, messages: undefined as ConsumerMessages | undefined, done: Promise.resolve() };
      this.#consumers.set(`${cronKey}#${name}`, entry);
      entry.done = this.#consume(entry, name, t.types, t.ordered, w).catch((err: unknown) => {
        if (!this.#closed) this.#cfg.log(`workflows: trigger ${name}: ${describeError(err)}`, "warn");
      });
    }
  }

  // The last run started for a key (`order.<tenant>.<workflow>.<key>` in flex_workflows),
  // swapped by compare-and-set; a redelivered event finds its own run there and keeps its place.
  async #chain(tenant: string, workflow: string, key: string, runId: string): Promise<string | undefined> {
    const k = orderKey(tenant, workflow, key);
    const kv = this.#defs.kv;
    for (let i = 0; ; i++) {
      const e = await kv.get(k);
      const cur = e && e.operation === "PUT" ? e.json<{ runId: string; after?: string }>() : undefined;
      if (cur?.runId === runId) return cur.after;
      const body = encoder.encode(JSON.stringify({ runId, ...(cur ? { after: cur.runId } : {}) }));
      try {
        if (e) await kv.update(k, body, e.revision);
        else await kv.create(k, body);
        return cur?.runId;
      } catch (err) {
        if (i >= 16) throw err;
      }
    }
  }

  async #consume(entry: { messages: ConsumerMessages | undefined }, name: string, types: readonly string[], ordered: boolean, w: StoredWorkflow): Promise<void> {
    const consumer = await this.#js.consumers.get(STREAMS.events, name);
    const messages = await consumer.consume({ max_messages: 64 });
    entry.messages = messages;
    for await (const m of messages) {
      try {
        const e = decodeEvent({ subject: m.subject, seq: m.seq, headers: m.headers, data: m.data, storedAt: m.info.timestampNanos / 1e6 });
        const parsed = parseSubject(m.subject);
        if (parsed.kind !== "event" || parsed.category === WORKFLOW_CATEGORY || (types.length > 0 && !types.includes(e.type))) {
          m.ack();
          continue;
        }
        const trigger: TriggerInfo = { kind: "event", subject: e.subject, type: e.type, id: e.id, seq: e.seq, key: parsed.id, time: e.time, data: e.data };
        const runId = `${w.name}-e${m.seq}`;
        const after = ordered ? await this.#chain(w.tenant, w.name, parsed.id, runId) : undefined;
        await this.start(w.tenant, w.name, { runId, input: e.data, trigger, causationId: e.id, ...(after ? { after } : {}) });
        m.ack();
      } catch (err) {
        if (this.#closed) return;
        this.#cfg.log(`workflows: trigger ${name} at seq ${m.seq} (delivery ${m.info.deliveryCount}): ${describeError(err)}`, "warn");
        // A start that can never succeed (no such workflow any more, a name or input that does
        // not fit) is dead-lettered at once; anything else (the server) is tried again, with
        // growing pauses, until the retry budget is spent.
        const permanent = err instanceof FlexError && PERMANENT_START_ERRORS.has(err.code);
        if (!permanent && m.info.deliveryCount < TRIGGER_MAX_DELIVER) {
          m.nak(Math.min(TRIGGER_NAK_MS * 2 ** (m.info.deliveryCount - 1), TRIGGER_MAX_NAK_MS));
          continue;
        }
        try {
          await this.#deadLetter(m, w, err);
          m.term();
        } catch (dlqErr) {
          // Not stored in FLEX_DLQ: the event stays with the consumer (redelivered after ack_wait).
          this.#cfg.log(`workflows: trigger ${name} at seq ${m.seq}: dead letter not stored: ${describeError(dlqErr)}`, "error");
          m.nak(TRIGGER_MAX_NAK_MS);
        }
      }
    }
  }

  /** Stores the `TriggerFailed` dead letter of a trigger event at `dlq.<tenant>.workflow-<name>` (once per event: fixed `Nats-Msg-Id`). */
  async #deadLetter(m: JsMsg, w: StoredWorkflow, err: unknown): Promise<void> {
    const source = `${WORKFLOW_CATEGORY}-${w.name}`;
    const subject = dlqSubject(w.tenant, source);
    const code = err instanceof FlexError ? err.code : typeof (err as { code?: unknown })?.code === "string" ? String((err as { code: string }).code) : null;
    const reason = `workflow ${w.tenant}/${w.name} v${w.version}: event ${m.seq} started no run after ${m.info.deliveryCount} attempt(s): ${describeError(err)}`;
    const h = deadLetterHeaders({ id: `${source}:${m.seq}:dlq`, type: "TriggerFailed", causationId: m.headers?.get(HEADERS.msgId), sourceSeq: m.seq, sourceSubject: m.subject, reason });
    const body = {
      workflow: w.name,
      version: w.version,
      seq: m.seq,
      subject: m.subject,
      tenant: w.tenant,
      attempts: m.info.deliveryCount,
      error: { code, message: (err as Error)?.message ?? String(err) },
      reason,
      // The event stays in FLEX_EVENTS at `seq`; a large body is not copied (it may be why it failed).
      ...(m.data.length <= DLQ_MAX_DATA_BYTES ? { data: decodeData(m.data) } : { dataOmitted: m.data.length }),
    };
    await this.#js.publish(subject, encoder.encode(JSON.stringify(body)), { headers: h, msgID: `${source}:${m.seq}:dlq` });
    this.#cfg.log(`workflows: ${reason}; dead-lettered to ${subject}`, "warn");
  }

  /**
   * Starts what the cron triggers owe since the last tick. A fire missed during a stall or a
   * restart runs late, once: several missed fires of a schedule collapse into its latest
   * one, and a fire older than CRON_CATCH_UP_MS is skipped (logged), as a Kubernetes CronJob
   * with a starting deadline does. Every runner fires; the run id is the fire time, so
   * exactly one RunStarted is stored, even when a restarted runner owes a fire again.
   */
  async #cronTick(): Promise<void> {
    if (this.#closed) return;
    const now = this.#cfg.now().getTime();
    const checked = this.#cronCheckedUpTo ?? now - CRON_CATCH_UP_MS;
    if (now < checked + 1_000) return;
    this.#cronCheckedUpTo = now;
    const from = new Date(Math.max(checked, now - CRON_CATCH_UP_MS));
    if (checked < from.getTime()) this.#cfg.log(`workflows: cron: ${Math.round((from.getTime() - checked) / 60_000)} min not checked (a stall); fires older than ${CRON_CATCH_UP_MS / 60_000} min are skipped`, "warn");
    for (const c of this.#crons.values()) {
      for (const schedule of c.schedules) {
        const at = latestFireTime(schedule, new Date(Math.max(from.getTime(), c.since - 1)), new Date(now));
        if (!at) continue;
        const time = at.toISOString();
        const stamp = time.slice(0, 16).replace(/[-:T]/g, "");
        await this.start(c.tenant, c.name, { runId: `${c.name}-c${stamp}`, input: { scheduledAt: time }, trigger: { kind: "cron", schedule: schedule.source, time } })
          .catch((err: unknown) => this.#cfg.log(`workflows: cron ${c.tenant}/${c.name}: ${describeError(err)}`, "warn"));
      }
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stop.abort();
    for (const t of this.#timers) clearInterval(t);
    this.#watch?.stop();
    this.#defWatch?.stop();
    for (const c of this.#consumers.values()) c.messages?.stop();
    await Promise.allSettled([...this.#drivers.values(), ...[...this.#consumers.values()].map((c) => c.done)]);
    await this.#store.close();
    if (this.#ownsScripts) await this.#scripts.close();
    await this.#ownPool?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

interface Completion {
  readonly step: string;
  readonly attempt: number;
  readonly outcome: StepOutcome;
}

function clone(s: RunState): RunState {
  return { ...s, steps: Object.fromEntries(Object.entries(s.steps).map(([k, v]) => [k, { ...v }])) };
}

/** Drives one owned run to its end (or until the runner stops or loses the lease). */
class Drive {
  readonly #r: DurableWorkflowRunner;
  readonly #runId: string;
  readonly #tenant: string;
  #definition: WorkflowDefinition | undefined;
  readonly #lease: Lease;
  readonly #subject: string;
  readonly #inflight = new Map<string, AbortController>();
  readonly #completions: Completion[] = [];
  #wake: (() => void) | undefined;
  #state: RunState;

  readonly #initial: RunState | undefined;

  constructor(r: DurableWorkflowRunner, tenant: string, runId: string, lease: Lease, initial: RunState | undefined) {
    this.#initial = initial;
    this.#r = r;
    this.#runId = runId;
    this.#tenant = tenant;
    this.#lease = lease;
    this.#subject = eventSubject(tenant, WORKFLOW_CATEGORY, runId);
    this.#state = initialRunState(runId, tenant);
  }

  async #load(): Promise<void> {
    const s = initialRunState(this.#runId, this.#tenant);
    for (const e of await this.#r.store.read(this.#subject)) applyRunEvent(s, e);
    if (this.#definition) attachDefinition(s, this.#definition);
    this.#state = s;
  }

  // Loads the definition the run names; a run whose definition cannot run fails once, with the
  // reason's code, and is over. Returns false when the run is over.
  async #resolve(): Promise<boolean> {
    let error: FlexError;
    try {
      this.#definition = await this.#r.definition(this.#tenant, this.#state.workflow, this.#state.version);
      attachDefinition(this.#state, this.#definition);
      return true;
    } catch (err) {
      if (!(err instanceof DefinitionUnavailableError || err instanceof UntrustedDefinitionError)) throw err;
      error = err;
    }
    this.#r.cfg.log(`workflows: run ${this.#tenant}/${this.#runId} fails: ${describeError(error)}`, "warn");
    for (let i = 0; i < MAX_FAIL_RETRIES; i++) {
      if (isTerminal(this.#state.status)) return false;
      try {
        const failed: EventInput = { type: RUN_EVENTS.runFailed, data: { runId: this.#runId, error: { message: error.message, code: error.code } }, causationId: this.#runId };
        await this.#r.store.append(this.#subject, [failed], { expectedRevision: this.#state.revision });
        this.#r.recorded([failed]);
        return false;
      } catch (err) {
        if (!(err instanceof ConcurrencyError)) throw err;
        await this.#load();
      }
    }
    return false;
  }

  /** Returns true when the run is over (its index entry can go). */
  async run(): Promise<boolean> {
    if (this.#initial) this.#state = this.#initial;
    else await this.#load();
    const firstSeen = Date.now();
    while (this.#state.revision === 0) {
      // The index is written before RunStarted: give the starter a moment.
      if (Date.now() - firstSeen > ORPHAN_INDEX_MS) return true;
      await new Promise((r) => setTimeout(r, 100));
      if (this.#r.stopSignal.aborted) return false;
      await this.#load();
    }
    if (isTerminal(this.#state.status)) return true;
    if (!(await this.#resolve())) return true;
    if (this.#state.after && !isTerminal(this.#state.status) && Object.values(this.#state.steps).every((st) => st.status === "pending")) {
      const ended = await this.#waitForPrevious(this.#state.after);
      if (ended !== undefined) return ended;
    }
    try {
      for (;;) {
        if (this.#r.stopSignal.aborted || this.#lease.lost) return false;
        if (isTerminal(this.#state.status)) {
          // Ended while driven here, by an event this runner did not write: a cancel.
          if (this.#state.status === "cancelled") this.#r.counts.runs.cancelled += 1;
          return true;
        }
        const planned = this.#plan();
        if (planned.events.length > 0) {
          try {
            const result = await this.#r.store.append(this.#subject, planned.events, { expectedRevision: this.#state.revision });
            this.#r.recorded(planned.events);
            if (result.duplicates > 0 || result.revision !== planned.state.revision) await this.#load();
            else this.#state = planned.state;
            this.#completions.splice(0, planned.consumed);
          } catch (err) {
            if (!(err instanceof ConcurrencyError)) throw err;
            // Someone else appended (a cancel, or a runner that took over): read and plan again.
            await this.#load();
            this.#dropStale();
            continue;
          }
          for (const id of planned.launch) this.#launch(id);
          continue;
        }
        await this.#waitForWork(planned.nextRetryAt);
      }
    } finally {
      for (const c of this.#inflight.values()) c.abort();
    }
  }

  // Ordered runs: wait until the key's previous run has ended (or was never stored, after a
  // while), watching this run for a cancel meanwhile. Returns a result for run() to return, if any.
  async #waitForPrevious(previous: string): Promise<boolean | undefined> {
    const subject = eventSubject(this.#tenant, WORKFLOW_CATEGORY, previous);
    const since = Date.now();
    for (let i = 0; ; i++) {
      if (this.#r.stopSignal.aborted || this.#lease.lost) return false;
      const events = await this.#r.store.read(subject);
      const prev = initialRunState(previous, this.#tenant);
      for (const e of events) applyRunEvent(prev, e);
      if (isTerminal(prev.status)) return undefined;
      if (events.length === 0 && Date.now() - since > ORPHAN_INDEX_MS) return undefined;
      const head = await this.#r.store.head(this.#subject);
      if (head.revision !== this.#state.revision) {
        await this.#load();
        if (isTerminal(this.#state.status)) return true;
      }
      // Short waits first: the previous run of a key is often about to end.
      await new Promise((r) => setTimeout(r, Math.min(this.#r.cfg.pollMs, 10 * 2 ** i)));
    }
  }

  // Completions of attempts the log no longer shows as ours (cancelled run, taken over) are dropped.
  #dropStale(): void {
    for (let i = this.#completions.length - 1; i >= 0; i--) {
      const c = this.#completions[i]!;
      const st = this.#state.steps[c.step];
      if (!st || st.status !== "running" || st.attempt !== c.attempt || st.runner !== this.#r.id) this.#completions.splice(i, 1);
    }
    if (isTerminal(this.#state.status)) for (const c of this.#inflight.values()) c.abort();
  }

  #plan(): { events: EventInput[]; state: RunState; launch: string[]; consumed: number; nextRetryAt: number | undefined } {
    const s = clone(this.#state);
    const events: EventInput[] = [];
    const def = s.definition as WorkflowDefinition;
    const runId = this.#runId;
    // One decision, one instant: the events' times and the retry times they carry agree.
    const now = Date.now();
    const time = new Date(now).toISOString();
    const add = (type: string, data: Record<string, unknown>): void => {
      const e = { type, data: { runId, ...data }, time, causationId: `${runId}` };
      events.push(e);
      applyRunEvent(s, { type, data: e.data, time: e.time, revision: s.revision + 1 });
    };
    const byId = new Map(def.steps.map((st) => [st.id, st]));
    // 1. Results of attempts that ended here.
    const consumed = this.#completions.length;
    for (const c of this.#completions) {
      const st = s.steps[c.step];
      if (!st || st.status !== "running" || st.attempt !== c.attempt) continue;
      const o = c.outcome;
      const logs = { ...(o.stdout ? { stdout: clipLog(o.stdout) } : {}), ...(o.stderr ? { stderr: clipLog(o.stderr) } : {}), ...(o.exitCode === undefined ? {} : { exitCode: o.exitCode }) };
      if (o.ok) {
        add(RUN_EVENTS.stepSucceeded, { step: c.step, attempt: c.attempt, output: summarize(o.output), result: o.output ?? null, durationMs: Math.round(o.durationMs), ...logs });
      } else {
        const policy = byId.get(c.step)!.retry;
        const willRetry = st.failures + 1 < policy.maxAttempts;
        add(RUN_EVENTS.stepFailed, {
          step: c.step, attempt: c.attempt, error: o.error, willRetry, durationMs: Math.round(o.durationMs), ...logs,
          ...(willRetry ? { retryAt: now + backoffDelay(policy, st.failures + 1) } : {}),
        });
      }
    }
    // 2. Attempts a lost runner left running: they end as interrupted and start again (not counted as failures).
    for (const st of Object.values(s.steps)) {
      if (st.status === "running" && byId.has(st.id) && !this.#inflight.has(st.id)) {
        add(RUN_EVENTS.stepFailed, { step: st.id, attempt: st.attempt, error: { message: `runner ${st.runner ?? "?"} stopped during the attempt`, code: "FLEX_STEP_INTERRUPTED" }, willRetry: true, retryAt: now, interrupted: true });
      }
    }
    // 3. The run's end, or the steps that can start now.
    const launch: string[] = [];
    let nextRetryAt: number | undefined;
    const done = (st: StepState): boolean => st.status === "succeeded" || st.status === "skipped" || (st.status === "failed" && byId.get(st.id)!.continueOnError);
    const hardFail = def.steps.find((d) => s.steps[d.id]!.status === "failed" && !d.continueOnError);
    if (hardFail) {
      const st = s.steps[hardFail.id]!;
      add(RUN_EVENTS.runFailed, { error: { message: `step \`${hardFail.id}\` failed after ${st.failures} attempt(s): ${st.error?.message ?? "failed"}`, ...(st.error?.code ? { code: st.error.code } : {}) }, step: hardFail.id });
    } else if (def.steps.every((d) => done(s.steps[d.id]!))) {
      const needed = new Set(def.steps.flatMap((d) => d.needs));
      const sinks = def.steps.filter((d) => !needed.has(d.id));
      const result = sinks.length === 1 ? s.steps[sinks[0]!.id]!.output : Object.fromEntries(sinks.map((d) => [d.id, s.steps[d.id]!.output]));
      add(RUN_EVENTS.runSucceeded, { output: summarize(result), result: result ?? null });
    } else {
      for (const d of def.steps) {
        const st = s.steps[d.id]!;
        const ready = d.needs.every((n) => done(s.steps[n]!));
        if (!ready) continue;
        if (st.status === "retrying") {
          if ((st.retryAt ?? 0) > now) {
            nextRetryAt = Math.min(nextRetryAt ?? Infinity, st.retryAt!);
            continue;
          }
        } else if (st.status !== "pending") continue;
        if (st.status === "pending" && d.when !== undefined) {
          let go: boolean;
          try {
            go = condition(d.when, templateContext(s));
          } catch (err) {
            go = false;
            void err;
          }
          if (!go) {
            add(RUN_EVENTS.stepSkipped, { step: d.id, reason: `when \`${d.when}\` was false` });
            continue;
          }
        }
        add(RUN_EVENTS.stepStarted, { step: d.id, attempt: st.attempt + 1, runner: this.#r.id });
        launch.push(d.id);
      }
    }
    return { events, state: s, launch, consumed, nextRetryAt };
  }

  #launch(id: string): void {
    const def = (this.#state.definition as WorkflowDefinition).steps.find((d) => d.id === id) as StepDefinition;
    const st = this.#state.steps[id]!;
    const attempt = st.attempt;
    const ctrl = new AbortController();
    this.#inflight.set(id, ctrl);
    const base = templateContext(this.#state);
    const ctx = { ...base, run: { ...(base.run as object), attempt } };
    const started = performance.now();
    // The executor turns a step's errors into outcomes; anything it still throws is the step's failure too.
    void this.#r.executor.run(def, this.#state, ctx, ctrl.signal)
      .catch((err: unknown): StepOutcome => ({ ok: false, error: { message: (err as Error)?.message ?? String(err), code: err instanceof FlexError ? err.code : "FLEX_STEP_FAILED" }, durationMs: performance.now() - started }))
      .then((outcome) => {
        this.#inflight.delete(id);
        if (ctrl.signal.aborted) return;
        this.#completions.push({ step: id, attempt, outcome });
        this.#wake?.();
      });
  }

  async #waitForWork(nextRetryAt: number | undefined): Promise<void> {
    if (this.#completions.length > 0) return;
    if (this.#inflight.size === 0 && nextRetryAt === undefined) {
      // Nothing runs and nothing is due: the definition allows no progress (cannot happen for a valid DAG).
      await this.#load();
      await new Promise((r) => setTimeout(r, this.#r.cfg.pollMs));
      return;
    }
    const waitMs = Math.min(this.#r.cfg.pollMs, nextRetryAt === undefined ? Infinity : Math.max(0, nextRetryAt - Date.now()));
    let timer: NodeJS.Timeout | undefined;
    const stop = this.#r.stopSignal;
    let onStop: (() => void) | undefined;
    const woke = await new Promise<boolean>((resolve) => {
      this.#wake = () => resolve(true);
      timer = setTimeout(() => resolve(false), waitMs);
      onStop = () => resolve(true);
      stop.addEventListener("abort", onStop, { once: true });
    });
    this.#wake = undefined;
    clearTimeout(timer);
    if (onStop) stop.removeEventListener("abort", onStop);
    if (!woke && this.#completions.length === 0) {
      // Look for events others appended (a cancel) while our steps run.
      const head = await this.#r.store.head(this.#subject);
      if (head.revision !== this.#state.revision) {
        await this.#load();
        this.#dropStale();
      }
    }
  }
}
