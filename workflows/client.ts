import type { NatsConnection } from "@nats-io/transport-node";
import { AbortedError, ConcurrencyError, createEventStore, eventSubject, InvalidOptionError } from "../streams/index.js";
import type { EventStore, StoredEvent } from "../streams/index.js";
import { DefinitionStore } from "./definitions.js";
import type { PutOptions, StoredWorkflow } from "./definitions.js";
import type { PluginStepCatalog } from "./definition.js";
import { RunFinishedError, RunNotFoundError } from "./errors.js";
import { RUN_EVENTS, WORKFLOW_CATEGORY } from "./events.js";
import { startRun } from "./start.js";
import type { StartOptions, StartResult } from "./start.js";
import { applyRunEvent, attachDefinition, initialRunState, isTerminal } from "./state.js";
import type { RunState } from "./state.js";

const MAX_CANCEL_RETRIES = 16;
/** How often {@link WorkflowClient.wait} reads the run. */
export const DEFAULT_WAIT_POLL_MS = 100;

/** Manage definitions and runs (the API and CLI face). Runs are driven by a {@link WorkflowRunner}. */
export interface WorkflowClient extends AsyncDisposable {
  /**
   * Validates and stores a definition (YAML/JSON text or an object) as its next version.
   * Without `options.operator` (the API, the CLI) `trusted: true` steps are refused.
   */
  put(tenant: string, source: string | object, options?: PutOptions): Promise<StoredWorkflow>;
  get(tenant: string, name: string, version?: number): Promise<StoredWorkflow>;
  list(tenant: string): Promise<StoredWorkflow[]>;
  /** Starts a run (API/CLI trigger); a runner picks it up. */
  start(tenant: string, workflow: string, options?: StartOptions): Promise<StartResult>;
  /** The run folded from its events. @throws RunNotFoundError */
  status(tenant: string, runId: string): Promise<RunState>;
  /** The run's events, in order (with step logs). @throws RunNotFoundError */
  events(tenant: string, runId: string): Promise<StoredEvent[]>;
  /** Records RunCancelled; the owner aborts running steps. @throws RunFinishedError when the run already ended */
  cancel(tenant: string, runId: string, options?: { readonly reason?: string; readonly by?: string }): Promise<RunState>;
  /** Resolves when the run has ended. */
  wait(tenant: string, runId: string, options?: { readonly timeoutMs?: number; readonly pollMs?: number; readonly signal?: AbortSignal }): Promise<RunState>;
  close(): Promise<void>;
}

/** Options of {@link createWorkflowClient}. */
export interface WorkflowClientOptions {
  /** The plugins `plugin` steps are checked against on `put` (`flexcore up`'s gateway). @default shape only */
  readonly plugins?: PluginStepCatalog;
}

export async function createWorkflowClient(nc: NatsConnection, options: WorkflowClientOptions = {}): Promise<WorkflowClient> {
  return new Client(await createEventStore(nc), await DefinitionStore.open(nc), options.plugins);
}

class Client implements WorkflowClient {
  readonly #store: EventStore;
  readonly #defs: DefinitionStore;
  readonly #plugins: PluginStepCatalog | undefined;

  constructor(store: EventStore, defs: DefinitionStore, plugins?: PluginStepCatalog) {
    this.#store = store;
    this.#defs = defs;
    this.#plugins = plugins;
  }

  put(tenant: string, source: string | object, options: PutOptions = {}): Promise<StoredWorkflow> {
    return this.#defs.put(tenant, source, this.#plugins && !options.plugins ? { ...options, plugins: this.#plugins } : options);
  }

  get(tenant: string, name: string, version?: number): Promise<StoredWorkflow> {
    return this.#defs.get(tenant, name, version);
  }

  list(tenant: string): Promise<StoredWorkflow[]> {
    return this.#defs.list(tenant);
  }

  start(tenant: string, workflow: string, options?: StartOptions): Promise<StartResult> {
    return startRun(this.#store, this.#defs, tenant, workflow, options);
  }

  async events(tenant: string, runId: string): Promise<StoredEvent[]> {
    const events = await this.#store.read(eventSubject(tenant, WORKFLOW_CATEGORY, runId));
    if (events.length === 0) throw new RunNotFoundError(tenant, runId);
    return events;
  }

  async status(tenant: string, runId: string): Promise<RunState> {
    const s = initialRunState(runId, tenant);
    for (const e of await this.events(tenant, runId)) applyRunEvent(s, e);
    // Steps not started yet are listed as pending, from the stored definition the run names.
    if (s.workflow && s.version > 0) {
      const w = await this.#defs.get(tenant, s.workflow, s.version).catch(() => undefined);
      if (w) attachDefinition(s, w.definition);
    }
    return s;
  }

  async cancel(tenant: string, runId: string, options: { readonly reason?: string; readonly by?: string } = {}): Promise<RunState> {
    const subject = eventSubject(tenant, WORKFLOW_CATEGORY, runId);
    for (let i = 0; ; i++) {
      const s = await this.status(tenant, runId);
      if (isTerminal(s.status)) throw new RunFinishedError(runId, s.status);
      const data = { runId, reason: options.reason ?? "cancelled", by: options.by ?? "api" };
      try {
        await this.#store.append(subject, [{ type: RUN_EVENTS.runCancelled, data }], { expectedRevision: s.revision });
        return applyRunEvent(s, { type: RUN_EVENTS.runCancelled, data, time: new Date().toISOString(), revision: s.revision + 1 });
      } catch (err) {
        if (!(err instanceof ConcurrencyError) || i >= MAX_CANCEL_RETRIES) throw err;
      }
    }
  }

  async wait(tenant: string, runId: string, options: { readonly timeoutMs?: number; readonly pollMs?: number; readonly signal?: AbortSignal } = {}): Promise<RunState> {
    const poll = options.pollMs ?? DEFAULT_WAIT_POLL_MS;
    if (!Number.isInteger(poll) || poll < 1) throw new InvalidOptionError("pollMs", poll, "an integer from 1 and up");
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    for (;;) {
      if (options.signal?.aborted) throw new AbortedError("wait", { cause: options.signal.reason });
      const s = await this.status(tenant, runId).catch((err: unknown) => {
        if (err instanceof RunNotFoundError) return undefined;
        throw err;
      });
      if (s && isTerminal(s.status)) return s;
      if (Date.now() >= deadline) {
        if (s) return s;
        throw new RunNotFoundError(tenant, runId);
      }
      await new Promise((r) => setTimeout(r, poll));
    }
  }

  async close(): Promise<void> {
    await this.#store.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
