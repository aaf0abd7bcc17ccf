import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { isAbsolute, join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { array, boolean, duration, integer, object, oneOf, string } from "../processors/index.js";
import type { SectionValidator } from "../processors/index.js";
import { checkTenantName } from "../streams/index.js";
import { createWorkflowClient } from "./client.js";
import { DEFAULT_MAX_RUNS, DEFAULT_RUN_LEASE_MS, startWorkflowRunner } from "./runner.js";
import type { WorkflowRunner } from "./runner.js";
import type { ProcessorInvoker } from "./steps.js";
import { WorkflowDefinitionError } from "./errors.js";
import { createOperatorTrust } from "./trust.js";

/** The `workflows:` section of `flexcore.yaml`. */
export interface WorkflowsConfig {
  /** Run a workflow runner in this instance. @default true */
  readonly runner: boolean;
  /** Tenant the listed definitions are stored for. @default "demo" */
  readonly tenant: string;
  /**
   * YAML/JSON definition files stored (as a new version when changed) at start; relative to
   * the project root. They are the operator's: the only definitions whose `trusted: true`
   * script steps are accepted, and the only ones this instance runs trusted.
   */
  readonly definitions: readonly string[];
  /** How untrusted script steps are isolated. @default "auto" */
  readonly sandbox: "auto" | "bwrap" | "plain";
  /** @default 15000 */
  readonly leaseMs: number;
  /** @default 256 */
  readonly maxRuns: number;
  /**
   * Child-process (untrusted) script steps running at once in this instance: the size of the
   * Piscina pool that supervises them; more wait in its queue. @default the number of CPUs
   */
  readonly scriptConcurrency: number;
}

/** Most child-process steps one instance may run at once. */
const MAX_SCRIPT_CONCURRENCY = 1_024;

// Tenants starting with `_` are FlexCore's own (`_system`), never a workflow's.
const TOKEN = { re: /^[^\s.*>_][^\s.*>]*$/u, describe: "a tenant (no dots, wildcards or spaces, not starting with `_`)" };

/** Validator of the `workflows:` section (no I/O: files are read when the runner starts). */
export const workflowsSection: SectionValidator<WorkflowsConfig> = (raw, path) => {
  const o = object(raw, path, ["runner", "tenant", "definitions", "sandbox", "lease", "max_runs", "script_concurrency"], true);
  return {
    runner: boolean(o.runner, `${path}.runner`, true),
    tenant: string(o.tenant, `${path}.tenant`, "demo", TOKEN),
    definitions: o.definitions === undefined ? [] : array(o.definitions, `${path}.definitions`, (v, p) => string(v, p, "")),
    sandbox: oneOf(o.sandbox, `${path}.sandbox`, ["auto", "bwrap", "plain"] as const, "auto"),
    leaseMs: duration(o.lease, `${path}.lease`, DEFAULT_RUN_LEASE_MS, 200),
    maxRuns: integer(o.max_runs, `${path}.max_runs`, DEFAULT_MAX_RUNS, { min: 1 }),
    scriptConcurrency: integer(o.script_concurrency, `${path}.script_concurrency`, availableParallelism(), { min: 1, max: MAX_SCRIPT_CONCURRENCY }),
  };
};

/**
 * What `flexcore up` starts for workflows: stores the configured definitions for their
 * tenant through the operator's path (a bad one stops the start with its path), then a
 * runner that trusts exactly those definitions.
 */
export async function startWorkflows(nc: NatsConnection, config: WorkflowsConfig, options: { readonly root: string; readonly log?: (line: string, level?: "warn" | "error") => void; readonly processors?: ProcessorInvoker }): Promise<{ readonly runner: WorkflowRunner | undefined; close(): Promise<void> }> {
  const log = options.log ?? (() => undefined);
  checkTenantName(config.tenant, "workflows.tenant");
  const client = await createWorkflowClient(nc);
  const trust = createOperatorTrust();
  try {
    for (const file of config.definitions) {
      const path = isAbsolute(file) ? file : join(options.root, file);
      const text = await readFile(path, "utf8");
      try {
        const w = await client.put(config.tenant, text, { operator: trust });
        log(`flexcore: workflow ${config.tenant}/${w.name} v${w.version} from ${file}`);
      } catch (err) {
        if (err instanceof WorkflowDefinitionError) throw new WorkflowDefinitionError(err.path, `${(err.message.split(": ").slice(1).join(": "))} (in ${file})`, { cause: err });
        throw err;
      }
    }
  } finally {
    await client.close();
  }
  if (!config.runner) return { runner: undefined, close: async () => undefined };
  const runner = await startWorkflowRunner(nc, { trust, leaseMs: config.leaseMs, maxRuns: config.maxRuns, ...(options.processors ? { processors: options.processors } : {}), scriptRunnerOptions: { sandbox: config.sandbox, maxConcurrent: config.scriptConcurrency }, log });
  return { runner, close: () => runner.close() };
}
