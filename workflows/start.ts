import { ConcurrencyError, eventSubject } from "../streams/index.js";
import type { EventStore } from "../streams/index.js";
import { nuid } from "@nats-io/transport-node";
import { DefinitionStore, runIndexKey } from "./definitions.js";
import { RUN_EVENTS, WORKFLOW_CATEGORY } from "./events.js";
import type { RunStartedData, TriggerInfo } from "./events.js";
import type { StoredWorkflow } from "./definitions.js";

/** Options of starting a run. */
export interface StartOptions {
  /** The run's input (trigger data). @default null */
  readonly input?: unknown;
  /** Run id; a second start with the same id starts nothing. @default a new NUID */
  readonly runId?: string;
  /** @default { kind: "manual" } */
  readonly trigger?: TriggerInfo;
  /** Definition version. @default the latest */
  readonly version?: number;
  readonly causationId?: string;
  /** A run that must end before this one starts its first step. */
  readonly after?: string;
}

export interface StartResult {
  readonly runId: string;
  readonly version: number;
  /** False when a run with this id existed already. */
  readonly created: boolean;
  /** The stored RunStarted (when `created`), so a local runner need not read it back. */
  readonly started?: { readonly data: RunStartedData; readonly time: string; readonly revision: number };
}

function triggerLabel(t: TriggerInfo): string {
  return t.kind === "manual" ? "manual" : t.kind === "cron" ? "schedule" : `event:${t.type}`;
}

/**
 * Starts a run: RunStarted at "no stream" revision (which makes a start with the same id
 * idempotent), naming the definition by name and version only, then the run's index entry,
 * so a runner is told of a run only once its RunStarted is stored. A start that finds the run
 * stored already writes the index entry again: a start retried after a crash between the two
 * writes still gets its run driven (a run that has ended is dropped from the index at once).
 */
export async function startRun(store: EventStore, defs: DefinitionStore, tenant: string, workflow: string, options: StartOptions = {}): Promise<StartResult> {
  return (await startRunWith(store, defs, tenant, workflow, options)).result;
}

/** {@link startRun}, also giving the stored definition it started (for the runner's fast path). */
export async function startRunWith(store: EventStore, defs: DefinitionStore, tenant: string, workflow: string, options: StartOptions = {}): Promise<{ result: StartResult; stored: StoredWorkflow }> {
  const w = await defs.get(tenant, workflow, options.version);
  const runId = options.runId ?? nuid.next();
  const subject = eventSubject(tenant, WORKFLOW_CATEGORY, runId);
  const trigger = options.trigger ?? { kind: "manual" };
  const index = (): Promise<unknown> => defs.kv.put(runIndexKey(tenant, runId), new TextEncoder().encode(JSON.stringify({ workflow, version: w.version, at: new Date().toISOString() })));
  const data: RunStartedData = { runId, workflow, version: w.version, tenant, trigger: triggerLabel(trigger), triggerInfo: trigger, input: options.input ?? null, ...(options.after ? { after: options.after } : {}) };
  let result: StartResult;
  try {
    const time = new Date().toISOString();
    const r = await store.append(subject, [{ id: `${runId}-start`, type: RUN_EVENTS.runStarted, data, time, correlationId: runId, ...(options.causationId ? { causationId: options.causationId } : {}) }], { expectedRevision: "no_stream" });
    result = { runId, version: w.version, created: r.duplicates === 0, ...(r.duplicates === 0 ? { started: { data, time, revision: r.revision } } : {}) };
  } catch (err) {
    if (!(err instanceof ConcurrencyError)) throw err;
    result = { runId, version: w.version, created: false };
  }
  await index();
  return { result, stored: w };
}
