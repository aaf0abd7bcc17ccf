import { createHash } from "node:crypto";
import { checkToken } from "../streams/index.js";
import { parseDefinitionText, validateDefinition } from "./definition.js";
import type { PluginStepCatalog, WorkflowDefinition } from "./definition.js";

/**
 * The definitions the operator vouches for in this process: those read from the files of
 * `flexcore.yaml` (`startWorkflows`). Only they may have `trusted: true` steps, and only they
 * run those steps trusted. It lives in memory, filled from the operator's files, never from
 * storage: a definition written into `flex_workflows` by anyone else (a forged `origin`
 * included) is not in it, whatever it says.
 */
export interface OperatorTrust {
  /**
   * Validates a definition with trusted steps allowed and vouches for exactly that content
   * for `tenant`. @returns the validated definition
   * @throws WorkflowDefinitionError
   */
  add(tenant: string, source: string | object, plugins?: PluginStepCatalog): WorkflowDefinition;
  /** Whether this exact (validated) definition was vouched for, for this tenant. */
  has(tenant: string, definition: WorkflowDefinition): boolean;
  /** Definitions vouched for. */
  readonly size: number;
}

/** A digest of the validated content: same tenant and same normalised definition, same digest. */
function digest(tenant: string, definition: WorkflowDefinition): string {
  return createHash("sha256").update(tenant).update("\u0000").update(JSON.stringify(definition)).digest("base64url");
}

/** An empty {@link OperatorTrust}: nothing runs trusted until the operator's path adds to it. */
export function createOperatorTrust(): OperatorTrust {
  const digests = new Set<string>();
  return {
    add(tenant, source, plugins) {
      checkToken("tenant", tenant);
      const raw = typeof source === "string" ? parseDefinitionText(source) : source;
      const definition = validateDefinition(raw, tenant, { allowTrusted: true, ...(plugins ? { plugins } : {}) });
      digests.add(digest(tenant, definition));
      return definition;
    },
    has(tenant, definition) {
      return digests.has(digest(tenant, definition));
    },
    get size() {
      return digests.size;
    },
  };
}
