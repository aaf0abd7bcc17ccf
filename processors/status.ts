/**
 * Which instance holds what, read from NATS alone (no running runtime needed): the members
 * and partition leases in `flex_leases`, the processors' leases, and the lag of each
 * processor and partition consumer. What `flexcore processors status` and the operators'
 * HTTP route show.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import type { JetStreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { BUCKETS, STREAMS } from "../streams/index.js";
import { processorLeaseKey } from "./lease.js";
import type { LeaseBody } from "./lease.js";
import { PARTITION_STREAM_PREFIX } from "./partition-stream.js";
import type { MemberBody } from "./partitioned.js";
import { memberKeyPrefix, partitionConsumerName, partitionLeaseKey } from "./partitioned.js";
import { CONSUMER_PREFIX } from "./runner.js";

/** One partition of a partitioned processor. */
export interface PartitionStatus {
  readonly partition: number;
  /** The instance holding its lease (consuming it), or null while it moves. */
  readonly owner: string | null;
  /** Messages of the partition not yet acknowledged (`num_pending + num_ack_pending` of its consumer). */
  readonly lag: number;
}

/** One instance running a partitioned processor, as its member key says. */
export interface InstanceStatus {
  readonly instance: string;
  readonly partitions: readonly number[];
  /** Events per second over its last heartbeat interval. */
  readonly throughput: number;
  readonly processed: number;
}

/** One processor across the instances. */
export interface ProcessorStatus {
  readonly processor: string;
  readonly scale: "single" | "partitioned";
  /** `single`: the instance holding `proc.<name>`, or null when none does. */
  readonly owner: string | null;
  /** Messages not yet acknowledged, all partitions together. */
  readonly lag: number;
  /** `partitioned`: the live members. */
  readonly instances: readonly InstanceStatus[];
  /** `partitioned`: every partition. */
  readonly partitions: readonly PartitionStatus[];
}

async function leaseOwner(kv: KV, key: string): Promise<string | null> {
  const e = await kv.get(key).catch(() => null);
  if (!e || e.operation !== "PUT" || e.length === 0) return null;
  const v = e.json<LeaseBody>();
  return v.expiresAt > Date.now() ? v.owner : null;
}

async function lagOf(jsm: JetStreamManager, stream: string, consumer: string): Promise<number> {
  const info = await jsm.consumers.info(stream, consumer).catch(() => undefined);
  return info ? info.num_pending + info.num_ack_pending : 0;
}

/** The status of every processor that has a durable consumer or a partition stream. */
export async function processorsStatus(nc: NatsConnection): Promise<ProcessorStatus[]> {
  const jsm = await jetstreamManager(nc);
  const kv = await new Kvm(nc).open(BUCKETS.leases);
  const out: ProcessorStatus[] = [];
  const partitioned = new Set<string>();
  for await (const s of jsm.streams.list()) {
    if (!s.config.name.startsWith(PARTITION_STREAM_PREFIX)) continue;
    const processor = s.config.name.slice(PARTITION_STREAM_PREFIX.length);
    partitioned.add(processor);
    const dest = s.config.sources?.[0]?.subject_transforms?.[0]?.dest ?? "";
    const n = Number(/partition\((\d+)/u.exec(dest)?.[1] ?? /^part\.(\d+)\./u.exec(dest)?.[1] ?? 0);
    const partitions = await Promise.all(
      Array.from({ length: n }, async (_, p) => ({ partition: p, owner: await leaseOwner(kv, partitionLeaseKey(processor, p)), lag: await lagOf(jsm, s.config.name, partitionConsumerName(processor, p)) })),
    );
    const instances: InstanceStatus[] = [];
    const keys = await kv.keys(`${memberKeyPrefix(processor)}>`);
    for await (const key of keys) {
      const e = await kv.get(key).catch(() => null);
      if (!e || e.operation !== "PUT" || e.length === 0) continue;
      const m = e.json<MemberBody>();
      if (m.expiresAt <= Date.now()) continue;
      instances.push({ instance: m.instance, partitions: partitions.filter((p) => p.owner === m.instance).map((p) => p.partition), throughput: m.throughput, processed: m.processed });
    }
    instances.sort((a, b) => (a.instance < b.instance ? -1 : 1));
    out.push({ processor, scale: "partitioned", owner: null, lag: partitions.reduce((a, p) => a + p.lag, 0), instances, partitions });
  }
  for await (const c of jsm.consumers.list(STREAMS.events)) {
    if (!c.name.startsWith(CONSUMER_PREFIX)) continue;
    const processor = c.name.slice(CONSUMER_PREFIX.length);
    if (partitioned.has(processor)) continue;
    out.push({ processor, scale: "single", owner: await leaseOwner(kv, processorLeaseKey(processor)), lag: c.num_pending + c.num_ack_pending, instances: [], partitions: [] });
  }
  return out.sort((a, b) => (a.processor < b.processor ? -1 : 1));
}
