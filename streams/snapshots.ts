import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUCKETS } from "./topology.js";

/** A saved aggregate state and the position it reflects. */
export interface Snapshot<S = unknown> {
  readonly state: S;
  /** Aggregate revision of the last folded event. */
  readonly revision: number;
  /** Stream sequence of the last folded event. */
  readonly seq: number;
  /** When the last folded event was stored (ms since the epoch). */
  readonly storedAt: number;
  /** Name and version of the reducer that produced `state`. */
  readonly reducer: string;
  readonly reducerVersion: number;
}

/** Aggregate snapshots in the `flex_snapshots` KV bucket, one key per aggregate and reducer. */
export interface SnapshotStore {
  load<S>(subject: string, reducer: string): Promise<Snapshot<S> | undefined>;
  save<S>(subject: string, snapshot: Snapshot<S>): Promise<void>;
}

// KV keys allow [-/=.\w]; other characters of an aggregate id are written as =XX (UTF-8 hex).
function escapeKeyPart(part: string): string {
  let out = "";
  for (const byte of Buffer.from(part)) {
    const ch = String.fromCharCode(byte);
    out += /[-/\w]/.test(ch) && byte < 0x80 ? ch : `=${byte.toString(16).padStart(2, "0")}`;
  }
  return out;
}

/** The KV key of an aggregate's snapshot: `<reducer>.<subject tokens>`. */
export function snapshotKey(subject: string, reducer: string): string {
  return [reducer, ...subject.split(".")].map(escapeKeyPart).join(".");
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Opens the snapshot bucket (created by `ensureTopology`). */
export async function openSnapshotStore(nc: NatsConnection): Promise<SnapshotStore> {
  const kv: KV = await new Kvm(nc).open(BUCKETS.snapshots);
  return {
    async load<S>(subject: string, reducer: string): Promise<Snapshot<S> | undefined> {
      const entry = await kv.get(snapshotKey(subject, reducer));
      if (!entry || entry.operation !== "PUT" || entry.length === 0) return undefined;
      try {
        return JSON.parse(decoder.decode(entry.value)) as Snapshot<S>;
      } catch {
        return undefined; // an unreadable snapshot is only a missed shortcut
      }
    },
    async save<S>(subject: string, snapshot: Snapshot<S>): Promise<void> {
      await kv.put(snapshotKey(subject, snapshot.reducer), encoder.encode(JSON.stringify(snapshot)));
    },
  };
}
