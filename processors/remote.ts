/**
 * Remote processor kinds: kinds served outside the runtime's pool (plugins), named
 * `<plugin>/<kind>`. The runtime knows them only through {@link RemoteKinds}, which
 * `flexcore up` fills from plugins/ (plugins import processors, never the reverse).
 * State stays here: each call carries the keys' states and gets them back, so the remote
 * side keeps nothing a crash could lose.
 */
import { ConfigError } from "./errors.js";
import type { ProcessorDefinition } from "./types.js";

/** `<plugin>/<kind>`: a plugin name (`^[a-z][a-z0-9-]{1,39}$`), `/`, the plugin's processor kind. */
export const REMOTE_KIND_PATTERN = /^([a-z][a-z0-9-]{1,39})\/([A-Za-z0-9][A-Za-z0-9_-]{0,63})$/u;

/** Whether `kind` names a remote kind (`<plugin>/<kind>`), not a built-in one. */
export function isRemoteKind(kind: string): boolean {
  return kind.includes("/");
}

/** The plugin and the plugin's own kind of a remote kind, or undefined when it is not one. */
export function parseRemoteKind(kind: string): { readonly plugin: string; readonly kind: string } | undefined {
  const m = REMOTE_KIND_PATTERN.exec(kind);
  return m ? { plugin: m[1]!, kind: m[2]! } : undefined;
}

/** One input of a remote call (protocol 1's processor input). */
export interface RemoteInput {
  /** Source stream sequence. */
  readonly seq: number;
  readonly subject: string;
  readonly key: string;
  /** The source event's id. */
  readonly id: string;
  readonly type: string;
  readonly time: string;
  readonly data: unknown;
}

/** One tenant's batch for a remote kind. */
export interface RemoteBatch {
  /** The processor's name in flexcore.yaml. */
  readonly processor: string;
  /** The remote kind, `<plugin>/<kind>`. */
  readonly kind: string;
  readonly options: unknown;
  /** Every input is this tenant's (a call never mixes tenants). */
  readonly tenant: string;
  /** State per key of the inputs (`null`: a key never seen). */
  readonly states: Readonly<Record<string, unknown>>;
  /** In stream order; per key in order. */
  readonly inputs: readonly RemoteInput[];
}

/** What a remote call answered. */
export interface RemoteBatchResult {
  /** New state per key; a key left out keeps its state. */
  readonly states: Readonly<Record<string, unknown>>;
  /** Outputs in order; `input` indexes the batch's inputs. */
  readonly outputs: ReadonlyArray<{ readonly input: number; readonly type: string; readonly data: unknown; readonly key?: string | undefined }>;
  /** Inputs refused one by one (dead-lettered; the rest of the batch is kept). */
  readonly rejected?: ReadonlyArray<{ readonly input: number; readonly reason: string }> | undefined;
}

/** The remote kinds the runtime may run, injected by whoever knows them (`flexcore up`). */
export interface RemoteKinds {
  /** Whether `kind` (`<plugin>/<kind>`) is served. */
  has(kind: string): boolean;
  /**
   * Runs one tenant's batch. A rejection for which {@link isPermanent} holds dead-letters the
   * batch's inputs; any other is retried (the messages are never dropped).
   */
  process(batch: RemoteBatch, signal?: AbortSignal): Promise<RemoteBatchResult>;
  /** Whether an error of {@link process} is the input's fault (a 4xx, a malformed reply): no retry helps. */
  isPermanent(err: unknown): boolean;
}

/**
 * The definition standing for a remote kind in the configuration: its options must be an
 * object (the plugin's options schema is checked by whoever fills {@link RemoteKinds},
 * where the manifest is known); it cannot run on the pool.
 */
export function remoteDefinition(kind: string): ProcessorDefinition {
  return {
    kind,
    description: `processor kind ${kind} of a plugin`,
    validateOptions(raw: unknown, path: string): unknown {
      if (raw === undefined) return {};
      if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new ConfigError([{ path, message: `expected an object (the plugin's options), got ${JSON.stringify(raw)}` }]);
      return raw;
    },
    initialState: () => null,
    process() {
      throw new Error(`processor kind ${kind} runs in its plugin, not on the pool`);
    },
  };
}
