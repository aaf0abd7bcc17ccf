import { DiscardPolicy, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import type { JetStreamManager, StreamConfig, StreamInfo } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { nanos } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { InvalidOptionError, TopologyError } from "./errors.js";
import { serverFeatures } from "./server.js";
import type { ServerFeatures } from "./server.js";

/** JetStream streams of DESIGN.md. */
export const STREAMS = { events: "FLEX_EVENTS", derived: "FLEX_DERIVED", dlq: "FLEX_DLQ", redrive: "FLEX_REDRIVE", reapply: "FLEX_REAPPLY" } as const;
/** KV buckets of DESIGN.md. */
export const BUCKETS = {
  snapshots: "flex_snapshots",
  state: "flex_state",
  workflows: "flex_workflows",
  auth: "flex_auth",
  leases: "flex_leases",
} as const;

/**
 * JetStream object stores FlexCore owns (stream `OBJ_<name>`), reachable by FlexCore's own
 * user only. `pluginBundles` holds the verified bundles of plugin upgrades, keyed by digest,
 * so any instance can install the chosen version (docs/plugins.md).
 */
export const OBJECT_STORES = {
  pluginBundles: "flex_plugin_bundles",
} as const;

/** Window within which a repeated `Nats-Msg-Id` is stored once. */
export const DEFAULT_DUPLICATE_WINDOW_MS = 2 * 60_000;
/** How long dead letters are kept. */
export const DEFAULT_DLQ_MAX_AGE_MS = 14 * 24 * 3_600_000;
/** A lease not renewed within this time expires. */
export const DEFAULT_LEASE_TTL_MS = 30_000;
/** Versions of a workflow definition kept per key. */
export const WORKFLOW_HISTORY = 64;

/** Options of {@link ensureTopology}. */
export interface TopologyOptions {
  /** Stream and bucket replicas (3 in a 3-node cluster). @default 1 */
  readonly replicas?: number;
  /** @default "file" */
  readonly storage?: "file" | "memory";
  /** @default 120000 (2 min) */
  readonly duplicateWindowMs?: number;
  /** Age after which events are removed; 0 keeps them forever. @default 0 */
  readonly eventsMaxAgeMs?: number;
  /** Age after which derived outputs are removed (they can be recomputed); 0 keeps them. @default 0 */
  readonly derivedMaxAgeMs?: number;
  /** @default 14 days */
  readonly dlqMaxAgeMs?: number;
  /** @default 30000 */
  readonly leaseTtlMs?: number;
  /**
   * Per-message TTL on `flex_auth` and `flex_leases` (`allow_msg_ttl`, nats-server 2.11+):
   * sessions, revoked token ids and leases are written with their own expiry and the server
   * removes each when it expires. Cannot be turned off on a bucket once on.
   * @default true
   */
  readonly messageTtl?: boolean;
}

/** One setting that differs between the server and what FlexCore would provision. */
export interface Drift {
  readonly resource: string;
  readonly field: string;
  readonly expected: unknown;
  readonly actual: unknown;
}

/** What {@link ensureTopology} did. */
export interface TopologyReport {
  readonly created: readonly string[];
  readonly unchanged: readonly string[];
  /** Existing resources whose settings differ; left as they are. */
  readonly drift: readonly Drift[];
}

interface Resolved {
  readonly replicas: number;
  readonly storage: StorageType;
  readonly duplicateWindowMs: number;
  readonly eventsMaxAgeMs: number;
  readonly derivedMaxAgeMs: number;
  readonly dlqMaxAgeMs: number;
  readonly leaseTtlMs: number;
  readonly messageTtl: boolean;
}

function resolveOptions(o: TopologyOptions): Resolved {
  const int = (field: string, v: number | undefined, d: number, min: number): number => {
    if (v === undefined) return d;
    if (!Number.isInteger(v) || v < min) throw new InvalidOptionError(field, v, `an integer from ${min} and up`);
    return v;
  };
  const bool = (field: string, v: boolean | undefined, d: boolean): boolean => {
    if (v === undefined) return d;
    if (typeof v !== "boolean") throw new InvalidOptionError(field, v, "true or false");
    return v;
  };
  if (o.storage !== undefined && o.storage !== "file" && o.storage !== "memory") {
    throw new InvalidOptionError("storage", o.storage, '"file" or "memory"');
  }
  return {
    replicas: int("replicas", o.replicas, 1, 1),
    storage: o.storage === "memory" ? StorageType.Memory : StorageType.File,
    duplicateWindowMs: int("duplicateWindowMs", o.duplicateWindowMs, DEFAULT_DUPLICATE_WINDOW_MS, 1),
    eventsMaxAgeMs: int("eventsMaxAgeMs", o.eventsMaxAgeMs, 0, 0),
    derivedMaxAgeMs: int("derivedMaxAgeMs", o.derivedMaxAgeMs, 0, 0),
    dlqMaxAgeMs: int("dlqMaxAgeMs", o.dlqMaxAgeMs, DEFAULT_DLQ_MAX_AGE_MS, 0),
    leaseTtlMs: int("leaseTtlMs", o.leaseTtlMs, DEFAULT_LEASE_TTL_MS, 1_000),
    messageTtl: bool("messageTtl", o.messageTtl, true),
  };
}

// The server version assumed when none is given: the pinned one.
const CURRENT_SERVER = "2.15.1";

/**
 * The stream configurations FlexCore provisions for a server of `serverVersion`: events
 * take atomic batches (2.12+) and, like derived outputs, fast-ingest batches (2.14+).
 */
export function streamConfigs(options: TopologyOptions = {}, serverVersion = CURRENT_SERVER): Array<Partial<StreamConfig> & { name: string; subjects: string[] }> {
  const r = resolveOptions(options);
  const f: ServerFeatures = serverFeatures(serverVersion);
  const batched = f.fastIngest ? { allow_batched: true } : {};
  const base = {
    retention: RetentionPolicy.Limits,
    storage: r.storage,
    num_replicas: r.replicas,
    discard: DiscardPolicy.Old,
    duplicate_window: nanos(r.duplicateWindowMs),
    allow_direct: true,
    // Events are an append-only log: no one deletes single messages from it.
    deny_delete: true,
  };
  return [
    { ...base, ...batched, ...(f.atomicBatch ? { allow_atomic: true } : {}), name: STREAMS.events, subjects: ["evt.>"], max_age: nanos(r.eventsMaxAgeMs), description: "FlexCore domain events: evt.<tenant>.<category>.<id>" },
    { ...base, ...batched, name: STREAMS.derived, subjects: ["drv.>"], max_age: nanos(r.derivedMaxAgeMs), description: "FlexCore processor outputs: drv.<tenant>.<processor>.<key>" },
    { ...base, name: STREAMS.dlq, subjects: ["dlq.>"], max_age: nanos(r.dlqMaxAgeMs), deny_delete: false, description: "FlexCore dead letters: dlq.<tenant>.<source>" },
    // A work queue: a redriven dead letter is gone once its source acknowledged it, and the
    // duplicate window makes a repeated redrive of one dead letter a no-op (docs/dlq.md).
    { ...base, retention: RetentionPolicy.Workqueue, name: STREAMS.redrive, subjects: ["redrive.>"], max_age: nanos(r.dlqMaxAgeMs), deny_delete: false, description: "FlexCore redriven dead letters: redrive.<tenant>.<source>, consumed by that source only" },
    // Not a work queue: every instance builds its own copy of a projection, and each copy reads
    // the redriven dead letters of its projection from its own position (docs/dlq.md).
    { ...base, name: STREAMS.reapply, subjects: ["reapply.>"], max_age: nanos(r.dlqMaxAgeMs), deny_delete: false, description: "FlexCore projection dead letters sent back: reapply.<tenant>.projection_<name>, read by every copy of that projection" },
  ];
}

interface BucketSpec {
  readonly name: string;
  readonly history: number;
  readonly ttlMs: number;
  /** Entries carry their own TTL (`allow_msg_ttl`). */
  readonly messageTtl: boolean;
}

function bucketSpecs(r: Resolved, f: ServerFeatures): BucketSpec[] {
  const ttl = r.messageTtl && f.messageTtl;
  return [
    { name: BUCKETS.snapshots, history: 1, ttlMs: 0, messageTtl: false },
    { name: BUCKETS.state, history: 1, ttlMs: 0, messageTtl: false },
    { name: BUCKETS.workflows, history: WORKFLOW_HISTORY, ttlMs: 0, messageTtl: false },
    { name: BUCKETS.auth, history: 1, ttlMs: 0, messageTtl: ttl },
    // max_age stays as the backstop for entries written without a TTL.
    { name: BUCKETS.leases, history: 1, ttlMs: r.leaseTtlMs, messageTtl: ttl },
  ];
}

const COMPARED: ReadonlyArray<keyof StreamConfig> = [
  "subjects", "storage", "num_replicas", "retention", "discard", "duplicate_window", "max_age", "allow_direct", "deny_delete", "max_msgs_per_subject",
  "allow_atomic", "allow_batched", "allow_msg_ttl",
];

function compare(resource: string, expected: Partial<StreamConfig>, actual: StreamConfig): Drift[] {
  const drift: Drift[] = [];
  for (const field of COMPARED) {
    if (!(field in expected)) continue;
    const e = expected[field];
    const a = actual[field];
    if (JSON.stringify(e) !== JSON.stringify(a)) drift.push({ resource, field, expected: e, actual: a });
  }
  return drift;
}

async function streamInfo(jsm: JetStreamManager, name: string): Promise<StreamInfo | undefined> {
  try {
    return await jsm.streams.info(name);
  } catch (err) {
    if ((err as { name?: string }).name === "StreamNotFoundError" || /stream not found/i.test(String((err as Error).message))) return undefined;
    throw new TopologyError(`Could not read stream \`${name}\``, { cause: err });
  }
}

/**
 * Creates the streams, KV buckets and object stores of DESIGN.md where they are missing. Existing ones
 * are left untouched and any difference from FlexCore's settings is reported as drift,
 * so running it again changes nothing.
 */
export async function ensureTopology(nc: NatsConnection, options: TopologyOptions = {}): Promise<TopologyReport> {
  const r = resolveOptions(options);
  const version = nc.info?.version ?? CURRENT_SERVER;
  const features = serverFeatures(version);
  const jsm = await jetstreamManager(nc);
  const created: string[] = [];
  const unchanged: string[] = [];
  const drift: Drift[] = [];

  for (const config of streamConfigs(options, version)) {
    const info = await streamInfo(jsm, config.name);
    if (!info) {
      try {
        await jsm.streams.add(config);
      } catch (err) {
        throw new TopologyError(`Could not create stream \`${config.name}\`: ${(err as Error).message}`, { cause: err });
      }
      created.push(config.name);
      continue;
    }
    const d = compare(config.name, config, info.config);
    drift.push(...d);
    if (d.length === 0) unchanged.push(config.name);
  }

  const kvm = new Kvm(nc);
  for (const spec of bucketSpecs(r, features)) {
    const streamName = `KV_${spec.name}`;
    const info = await streamInfo(jsm, streamName);
    if (!info) {
      try {
        await kvm.create(spec.name, { history: spec.history, replicas: r.replicas, storage: r.storage, ttl: spec.ttlMs });
        // After the create: the KV client's own TTL option also turns on delete markers, which FlexCore does not need.
        if (spec.messageTtl) {
          const created = await jsm.streams.info(streamName);
          await jsm.streams.update(streamName, { ...created.config, allow_msg_ttl: true });
        }
      } catch (err) {
        throw new TopologyError(`Could not create KV bucket \`${spec.name}\`: ${(err as Error).message}`, { cause: err });
      }
      created.push(spec.name);
      continue;
    }
    const d = compare(spec.name, {
      num_replicas: r.replicas,
      storage: r.storage,
      max_msgs_per_subject: spec.history,
      max_age: nanos(spec.ttlMs),
      ...(spec.messageTtl ? { allow_msg_ttl: true } : {}),
    }, info.config);
    drift.push(...d);
    if (d.length === 0) unchanged.push(spec.name);
  }

  const objm = new Objm(nc);
  for (const name of Object.values(OBJECT_STORES)) {
    const streamName = `OBJ_${name}`;
    const info = await streamInfo(jsm, streamName);
    if (!info) {
      try {
        await objm.create(name, { replicas: r.replicas, storage: r.storage, description: "FlexCore: verified plugin bundles by digest" });
      } catch (err) {
        throw new TopologyError(`Could not create object store \`${name}\`: ${(err as Error).message}`, { cause: err });
      }
      created.push(name);
      continue;
    }
    const d = compare(name, { num_replicas: r.replicas, storage: r.storage }, info.config);
    drift.push(...d);
    if (d.length === 0) unchanged.push(name);
  }
  return { created, unchanged, drift };
}
