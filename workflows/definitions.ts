import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUCKETS, checkToken, fromKvKeyToken, kvKeyToken } from "../streams/index.js";
import { checkWorkflowName, parseDefinitionText, validateDefinition } from "./definition.js";
import type { PluginStepCatalog } from "./definition.js";
import type { WorkflowDefinition } from "./definition.js";
import { WorkflowNotFoundError } from "./errors.js";
import type { OperatorTrust } from "./trust.js";

/**
 * Key prefix of definitions in `flex_workflows`: `def.<tenant>.<name>`, each name a
 * `kvKeyToken` (base64url), so any tenant or workflow name makes a valid key.
 */
export const DEFINITION_PREFIX = "def";
/** Key prefix of the index of unfinished runs in `flex_workflows`: `run.<tenant>.<runId>` (tokens as above). */
export const RUN_INDEX_PREFIX = "run";
/** Key prefix of the last run per key of ordered triggers: `order.<tenant>.<workflow>.<key>`. */
export const ORDER_PREFIX = "order";
/** Key prefix of run leases in `flex_leases`: `wf.<tenant>.<runId>`. */
export const RUN_LEASE_PREFIX = "wf";

/** Who stored a definition: the operator's path (`flexcore.yaml` files) or a tenant (API, CLI). */
export type DefinitionOrigin = "operator" | "tenant";

/** Options of {@link DefinitionStore.put}. */
export interface PutOptions {
  /**
   * The operator's trust: given only by `startWorkflows` for the definition files of
   * `flexcore.yaml`. Allows `trusted: true` steps, vouches for this content in the trust
   * (the runner runs trusted steps only of definitions it holds) and records `origin: "operator"`.
   * @default none: a tenant definition, `trusted: true` is refused
   */
  readonly operator?: OperatorTrust;
  /** The runner's plugins: `plugin` steps must name one the tenant may use, and one of its steps. @default shape only */
  readonly plugins?: PluginStepCatalog;
}

/** A stored version of a workflow definition. */
export interface StoredWorkflow {
  readonly tenant: string;
  readonly name: string;
  /** 1, 2, ...: bumped by every `put` that changes the definition. */
  readonly version: number;
  readonly definition: WorkflowDefinition;
  /** The YAML or JSON text as given. */
  readonly source: string;
  readonly storedAt: string;
  /**
   * Who stored it. A record, not a permission: the runner decides trust from the operator's
   * trust in memory, never from this field (anyone who can write the bucket can write it).
   */
  readonly origin: DefinitionOrigin;
  /** The bucket revision of this version. */
  readonly revision: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const MAX_CAS_RETRIES = 16;

export function definitionKey(tenant: string, name: string): string {
  return `${DEFINITION_PREFIX}.${kvKeyToken(checkToken("tenant", tenant))}.${kvKeyToken(checkToken("workflow", name))}`;
}

export function runIndexKey(tenant: string, runId: string): string {
  return `${RUN_INDEX_PREFIX}.${kvKeyToken(checkToken("tenant", tenant))}.${kvKeyToken(checkToken("runId", runId))}`;
}

/** `wf.<tenant>.<runId>` in `flex_leases`. */
export function runLeaseKey(tenant: string, runId: string): string {
  return `${RUN_LEASE_PREFIX}.${kvKeyToken(tenant)}.${kvKeyToken(runId)}`;
}

/** `order.<tenant>.<workflow>.<key>` in `flex_workflows`. */
export function orderKey(tenant: string, workflow: string, key: string): string {
  return `${ORDER_PREFIX}.${kvKeyToken(tenant)}.${kvKeyToken(workflow)}.${key === "" ? "_" : kvKeyToken(key)}`;
}

/** The tenant and second name of a `<prefix>.<tenant>.<name>` key, or undefined for a key that is not one. */
export function parseTwoPartKey(key: string, prefix: string): { readonly tenant: string; readonly name: string } | undefined {
  const parts = key.split(".");
  if (parts.length !== 3 || parts[0] !== prefix) return undefined;
  try {
    return { tenant: fromKvKeyToken(parts[1]!), name: fromKvKeyToken(parts[2]!) };
  } catch {
    return undefined;
  }
}

function decode(tenant: string, value: Uint8Array, revision: number): StoredWorkflow {
  const v = JSON.parse(decoder.decode(value)) as Omit<StoredWorkflow, "revision" | "tenant">;
  return { ...v, origin: v.origin === "operator" ? "operator" : "tenant", tenant, revision };
}

/** Definitions of one connection's `flex_workflows` bucket. */
export class DefinitionStore {
  readonly #kv: KV;

  private constructor(kv: KV) {
    this.#kv = kv;
  }

  static async open(nc: NatsConnection): Promise<DefinitionStore> {
    return new DefinitionStore(await new Kvm(nc).open(BUCKETS.workflows));
  }

  get kv(): KV {
    return this.#kv;
  }

  /**
   * Validates and stores a definition as the next version. Storing the same definition
   * again returns the stored version unchanged.
   * @throws WorkflowDefinitionError before anything is stored
   */
  async put(tenant: string, source: string | object, options: PutOptions = {}): Promise<StoredWorkflow> {
    checkToken("tenant", tenant);
    const text = typeof source === "string" ? source : JSON.stringify(source, null, 2);
    const raw = typeof source === "string" ? parseDefinitionText(source) : source;
    const origin: DefinitionOrigin = options.operator ? "operator" : "tenant";
    const definition = options.operator ? options.operator.add(tenant, source, options.plugins) : validateDefinition(raw, tenant, options.plugins ? { plugins: options.plugins } : {});
    const key = definitionKey(tenant, definition.name);
    for (let i = 0; ; i++) {
      const current = await this.#kv.get(key);
      const live = current && current.operation === "PUT" ? decode(tenant, current.value, current.revision) : undefined;
      if (live && live.origin === origin && JSON.stringify(live.definition) === JSON.stringify(definition)) return live;
      const version = (live?.version ?? 0) + 1;
      const body = { name: definition.name, version, definition, source: text, origin, storedAt: new Date().toISOString() };
      try {
        const revision = current ? await this.#kv.update(key, encoder.encode(JSON.stringify(body)), current.revision) : await this.#kv.create(key, encoder.encode(JSON.stringify(body)));
        return { ...body, tenant, revision };
      } catch (err) {
        // Another writer stored a version in between: read it and go again.
        if (i >= MAX_CAS_RETRIES) throw err;
      }
    }
  }

  /** The latest version, or a given one from the bucket's history. @throws WorkflowNotFoundError */
  async get(tenant: string, name: string, version?: number): Promise<StoredWorkflow> {
    checkWorkflowName(name, "workflow");
    const key = definitionKey(tenant, name);
    const e = await this.#kv.get(key);
    if (version === undefined || (e && e.operation === "PUT")) {
      if (!e || e.operation !== "PUT") throw new WorkflowNotFoundError(tenant, name);
      const latest = decode(tenant, e.value, e.revision);
      // The latest version is the one most runs ask for: no history walk for it.
      if (version === undefined || latest.version === version) return latest;
    }
    const history = await this.#kv.history({ key });
    let found: StoredWorkflow | undefined;
    for await (const e of history) {
      if (e.operation !== "PUT") continue;
      const w = decode(tenant, e.value, e.revision);
      if (w.version === version) found = w;
    }
    if (!found) throw new WorkflowNotFoundError(tenant, name, version);
    return found;
  }

  /** Latest versions of a tenant's workflows (or every tenant's with `"*"`). */
  async list(tenant: string): Promise<StoredWorkflow[]> {
    const filter = `${DEFINITION_PREFIX}.${tenant === "*" ? "*" : kvKeyToken(checkToken("tenant", tenant))}.*`;
    const keys: string[] = [];
    for await (const k of await this.#kv.keys(filter)) keys.push(k);
    const out: StoredWorkflow[] = [];
    for (const k of keys.sort()) {
      const e = await this.#kv.get(k);
      const parsed = parseTwoPartKey(k, DEFINITION_PREFIX);
      if (!parsed || !e || e.operation !== "PUT") continue;
      try {
        out.push(decode(parsed.tenant, e.value, e.revision));
      } catch {
        // An entry that is not JSON was not written by a DefinitionStore: not a definition.
      }
    }
    return out.sort((a, b) => (a.tenant === b.tenant ? (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) : a.tenant < b.tenant ? -1 : 1));
  }
}
