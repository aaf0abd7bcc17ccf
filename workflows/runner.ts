import { setMaxListeners } from "node:events";
import { hostname } from "node:os";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamManager } from "@nats-io/jetstream";
import { nuid } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUILTIN_PROCESSORS, createProcessorPool, createScriptRunner, UnknownProcessorError } from "../processors/index.js";
import type { ProcessorPool, ScriptRunner, ScriptRunnerOptions } from "../processors/index.js";
import { BUCKETS, createEventStore, FlexError, InvalidOptionError, openTtlKv } from "../streams/index.js";
import type { EventInput, EventStore, TtlKv } from "../streams/index.js";
import { parseDefinitionText, validateDefinition } from "./definition.js";
import type { WorkflowDefinition } from "./definition.js";
import { DEFINITION_PREFIX, DefinitionStore, parseTwoPartKey, RUN_INDEX_PREFIX, runIndexKey, runLeaseKey } from "./definitions.js";
import type { StoredWorkflow } from "./definitions.js";
import { Drive } from "./drive.js";
import type { RunHost, RunLease } from "./drive.js";
import { DefinitionUnavailableError, describeError, UntrustedDefinitionError, WorkflowNotFoundError } from "./errors.js";
import { CRON_TICK_MS, WorkflowTriggers } from "./triggers.js";
import type { TriggerHost } from "./triggers.js";
import { createOperatorTrust } from "./trust.js";
import type { OperatorTrust } from "./trust.js";
import { RUN_EVENTS } from "./events.js";
import { applyRunEvent, initialRunState } from "./state.js";
import type { RunState } from "./state.js";
import { StepExecutor } from "./steps.js";
import type { PluginStepCaller, ProcessorInvoker } from "./steps.js";
import { startRunWith } from "./start.js";
import type { StartOptions, StartResult } from "./start.js";

/** How long a runner owns a run without renewing its lease. */
export const DEFAULT_RUN_LEASE_MS = 15_000;
/** Runs one runner drives at once. */
export const DEFAULT_MAX_RUNS = 256;
/** While steps run, how often the owner looks for events others appended (a cancel). */
export const DEFAULT_POLL_MS = 500;
const MAX_FINISHED_REMEMBERED = 10_000;
// Validated definitions kept per (tenant, name, version, bucket revision).
const MAX_CACHED_DEFINITIONS = 1_000;

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
  /**
   * What runs `plugin` steps (`flexcore up` passes its plugin host); definitions are checked
   * against it before a run uses them. @default none: a `plugin` step fails its run
   */
  readonly plugins?: PluginStepCaller;
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
    plugins: options.plugins,
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
  readonly plugins: PluginStepCaller | undefined;
}

class DurableWorkflowRunner implements WorkflowRunner, RunHost, TriggerHost {
  readonly id: string;
  readonly #cfg: Config;
  readonly #scripts: ScriptRunner;
  readonly #ownsScripts: boolean;
  readonly #ownPool: OwnProcessorPool | undefined;
  readonly #store: EventStore;
  readonly #defs: DefinitionStore;
  readonly #leases: TtlKv;
  readonly #triggers: WorkflowTriggers;
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
  readonly #definitions = new Map<string, WorkflowDefinition>();
  #watch: { stop(): void } | undefined;
  #defWatch: { stop(): void } | undefined;
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
    this.#triggers = new WorkflowTriggers(this, { js: jetstream(nc), jsm, kv: defs.kv, log: cfg.log, now: cfg.now });
    this.#executor = new StepExecutor(nc, scripts, processors, cfg.plugins);
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
            await this.#triggers.install({ ...w, tenant: parsed.tenant, name: parsed.name, definition });
          } catch (err) {
            this.#cfg.log(`workflows: triggers of ${e.key}: ${describeError(err)}`, "warn");
          }
        }
      })().catch((err: unknown) => {
        if (!this.#closed) this.#cfg.log(`workflows: definition watch ended: ${describeError(err)}`, "warn");
      });
      const tick = setInterval(() => void this.#triggers.cronTick().catch((err: unknown) => this.#cfg.log(`workflows: cron tick: ${describeError(err)}`, "warn")), CRON_TICK_MS);
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

  #offer(indexKey: string, initial?: RunState, lease?: RunLease): void {
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
  async #acquire(key: string): Promise<RunLease | undefined> {
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

  async #own(tenant: string, runId: string, indexKey: string, initial: RunState | undefined, taken: RunLease | undefined): Promise<void> {
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
      definition = validateDefinition(parseDefinitionText(w.source), tenant, { allowTrusted: true, ...(this.#cfg.plugins ? { plugins: this.#cfg.plugins } : {}) });
    } catch (err) {
      throw new DefinitionUnavailableError(tenant, name, w.version, `it does not validate: ${(err as Error).message}`, { cause: err });
    }
    if (definition.name !== name) throw new DefinitionUnavailableError(tenant, name, w.version, `the stored source is of workflow \`${definition.name}\``);
    const trusted = definition.steps.flatMap((st) => (st.kind === "script" && st.trusted ? [st.id] : []));
    if (trusted.length > 0 && !this.#cfg.trust.has(tenant, definition)) throw new UntrustedDefinitionError(tenant, name, trusted);
    return definition;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stop.abort();
    for (const t of this.#timers) clearInterval(t);
    this.#watch?.stop();
    this.#defWatch?.stop();
    await Promise.allSettled([...this.#drivers.values(), this.#triggers.close()]);
    await this.#store.close();
    if (this.#ownsScripts) await this.#scripts.close();
    await this.#ownPool?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
