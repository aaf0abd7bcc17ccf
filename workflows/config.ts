import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { isAbsolute, join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { ConfigError } from "../processors/index.js";
import type { SectionValidator } from "../processors/index.js";
import { checkTenantName, compileSchema, durationMs, durationSchema, pathAt } from "../streams/index.js";
import type { JsonSchema } from "../streams/index.js";
import { createWorkflowClient } from "./client.js";
import { DEFAULT_MAX_RUNS, DEFAULT_RUN_LEASE_MS, startWorkflowRunner } from "./runner.js";
import type { WorkflowRunner } from "./runner.js";
import type { PluginStepCaller, ProcessorInvoker } from "./steps.js";
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
const LEASE_MIN_MS = 200;

/** Schema of the `workflows:` section (`script_concurrency` defaults to the number of CPUs, which a schema cannot say). */
export const WORKFLOWS_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  default: {},
  properties: {
    runner: { type: "boolean", default: true },
    // Tenants starting with `_` are FlexCore's own (`_system`), never a workflow's.
    tenant: { type: "string", pattern: "^[^\\s.*>_][^\\s.*>]*$", default: "demo", expected: "a tenant (no dots, wildcards or spaces, not starting with `_`)" },
    definitions: { type: "array", items: { type: "string", minLength: 1 }, default: [] },
    sandbox: { type: "string", enum: ["auto", "bwrap", "plain"], default: "auto" },
    lease: durationSchema(LEASE_MIN_MS, DEFAULT_RUN_LEASE_MS),
    max_runs: { type: "integer", minimum: 1, default: DEFAULT_MAX_RUNS },
    script_concurrency: { type: "integer", minimum: 1, maximum: MAX_SCRIPT_CONCURRENCY },
  },
};

interface RawWorkflows {
  runner: boolean;
  tenant: string;
  definitions: string[];
  sandbox: WorkflowsConfig["sandbox"];
  lease: number | string;
  max_runs: number;
  script_concurrency?: number;
}

const validator = compileSchema<RawWorkflows>(WORKFLOWS_SCHEMA);

/** Validator of the `workflows:` section (no I/O: files are read when the runner starts). */
export const workflowsSection: SectionValidator<WorkflowsConfig> = (raw, path) => {
  const checked = validator.check(raw ?? {}, path);
  const issues = [...checked.issues];
  const leaseMs = checked.value === undefined ? 0 : durationMs(checked.value.lease, pathAt(path, "lease"), LEASE_MIN_MS, issues);
  if (checked.value === undefined || issues.length > 0) throw new ConfigError(issues);
  const o = checked.value;
  return { runner: o.runner, tenant: o.tenant, definitions: o.definitions, sandbox: o.sandbox, leaseMs, maxRuns: o.max_runs, scriptConcurrency: o.script_concurrency ?? availableParallelism() };
};

/**
 * What `flexcore up` starts for workflows: stores the configured definitions for their
 * tenant through the operator's path (a bad one stops the start with its path), then a
 * runner that trusts exactly those definitions.
 */
export async function startWorkflows(nc: NatsConnection, config: WorkflowsConfig, options: { readonly root: string; readonly log?: (line: string, level?: "warn" | "error") => void; readonly processors?: ProcessorInvoker; readonly plugins?: PluginStepCaller }): Promise<{ readonly runner: WorkflowRunner | undefined; close(): Promise<void> }> {
  const log = options.log ?? (() => undefined);
  checkTenantName(config.tenant, "workflows.tenant");
  const client = await createWorkflowClient(nc, options.plugins ? { plugins: options.plugins } : {});
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
  const runner = await startWorkflowRunner(nc, { trust, leaseMs: config.leaseMs, maxRuns: config.maxRuns, ...(options.processors ? { processors: options.processors } : {}), ...(options.plugins ? { plugins: options.plugins } : {}), scriptRunnerOptions: { sandbox: config.sandbox, maxConcurrent: config.scriptConcurrency }, log });
  return { runner, close: () => runner.close() };
}
