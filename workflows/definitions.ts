import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUCKETS, checkToken } from "../streams/index.js";
import { parseDefinitionText, validateDefinition } from "./definition.js";
import type { WorkflowDefinition } from "./definition.js";
import { WorkflowNotFoundError } from "./errors.js";

/** Key prefix of definitions in `flex_workflows`: `def.<tenant>.<name>`. */
export const DEFINITION_PREFIX = "def";
/** Key prefix of the index of unfinished runs in `flex_workflows`: `run.<tenant>.<runId>`. */
export const RUN_INDEX_PREFIX = "run";

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
  /** The bucket revision of this version. */
  readonly revision: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const MAX_CAS_RETRIES = 16;

export function definitionKey(tenant: string, name: string): string {
  return `${DEFINITION_PREFIX}.${checkToken("tenant", tenant)}.${checkToken("workflow", name)}`;
}

export function runIndexKey(tenant: string, runId: string): string {
  return `${RUN_INDEX_PREFIX}.${checkToken("tenant", tenant)}.${checkToken("runId", runId)}`;
}

function decode(tenant: string, value: Uint8Array, revision: number): StoredWorkflow {
  const v = JSON.parse(decoder.decode(value)) as Omit<StoredWorkflow, "revision" | "tenant">;
  return { ...v, tenant, revision };
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
   * @throws WorkflowDefinitionError, StepKindUnavailableError before anything is stored
   */
  async put(tenant: string, source: string | object): Promise<StoredWorkflow> {
    checkToken("tenant", tenant);
    const text = typeof source === "string" ? source : JSON.stringify(source, null, 2);
    const raw = typeof source === "string" ? parseDefinitionText(source) : source;
    const definition = validateDefinition(raw, tenant);
    const key = definitionKey(tenant, definition.name);
    for (let i = 0; ; i++) {
      const current = await this.#kv.get(key);
      const live = current && current.operation === "PUT" ? decode(tenant, current.value, current.revision) : undefined;
      if (live && JSON.stringify(live.definition) === JSON.stringify(definition)) return live;
      const version = (live?.version ?? 0) + 1;
      const body = { name: definition.name, version, definition, source: text, storedAt: new Date().toISOString() };
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
    const key = definitionKey(tenant, name);
    if (version === undefined) {
      const e = await this.#kv.get(key);
      if (!e || e.operation !== "PUT") throw new WorkflowNotFoundError(tenant, name);
      return decode(tenant, e.value, e.revision);
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
    const filter = `${DEFINITION_PREFIX}.${tenant === "*" ? "*" : checkToken("tenant", tenant)}.*`;
    const keys: string[] = [];
    for await (const k of await this.#kv.keys(filter)) keys.push(k);
    const out: StoredWorkflow[] = [];
    for (const k of keys.sort()) {
      const e = await this.#kv.get(k);
      if (e && e.operation === "PUT") out.push(decode(k.split(".")[1]!, e.value, e.revision));
    }
    return out;
  }
}
