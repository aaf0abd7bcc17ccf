/**
 * Drives one owned run to its end: plans the steps that can start, appends their events to
 * the run's log with optimistic concurrency, runs them, and records what they did. What it
 * needs of the runner is {@link RunHost}.
 */
import { ConcurrencyError, eventSubject, FlexError } from "../streams/index.js";
import type { EventInput, EventStore } from "../streams/index.js";
import { backoffDelay } from "./definition.js";
import type { StepDefinition, WorkflowDefinition } from "./definition.js";
import { DefinitionUnavailableError, describeError, UntrustedDefinitionError } from "./errors.js";
import { clipLog, RUN_EVENTS, summarize, WORKFLOW_CATEGORY } from "./events.js";
import { applyRunEvent, attachDefinition, initialRunState, isTerminal, templateContext } from "./state.js";
import type { RunState, StepState } from "./state.js";
import type { StepExecutor, StepOutcome } from "./steps.js";
import { condition } from "./template.js";
/** A run index entry without a RunStarted event after this long is dropped. */
const ORPHAN_INDEX_MS = 10_000;
// Tries of recording a run's failure before the runner leaves the run to a later rescan.
const MAX_FAIL_RETRIES = 8;

/** A run's lease in `flex_leases`, renewed by the runner; `lost` once another took it. */
export interface RunLease {
  revision: number;
  lost: boolean;
}

/** What a drive needs of the runner that owns the run. */
export interface RunHost {
  readonly id: string;
  readonly store: EventStore;
  readonly executor: StepExecutor;
  readonly cfg: { readonly log: (line: string, level?: "warn" | "error") => void; readonly pollMs: number };
  /** Aborted when the runner stops. */
  readonly stopSignal: AbortSignal;
  readonly counts: { readonly runs: { cancelled: number } };
  /** The definition of a run, validated for its tenant and checked against the operator's trust. */
  definition(tenant: string, name: string, version: number): Promise<WorkflowDefinition>;
  /** Counts events this runner wrote. */
  recorded(events: readonly EventInput[]): void;
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
export class Drive {
  readonly #r: RunHost;
  readonly #runId: string;
  readonly #tenant: string;
  #definition: WorkflowDefinition | undefined;
  readonly #lease: RunLease;
  readonly #subject: string;
  readonly #inflight = new Map<string, AbortController>();
  readonly #completions: Completion[] = [];
  #wake: (() => void) | undefined;
  #state: RunState;

  readonly #initial: RunState | undefined;

  constructor(r: RunHost, tenant: string, runId: string, lease: RunLease, initial: RunState | undefined) {
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
        const willRetry = st.failures + 1 < policy.maxAttempts && o.permanent !== true;
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
