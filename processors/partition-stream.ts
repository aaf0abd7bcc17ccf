/**
 * The partition stream of a processor with `scale: partitioned`: `FLEX_PART_<name>`, a
 * work-queue stream with no subjects of its own that *sources* `FLEX_EVENTS` under the
 * processor's filters, with a subject transform putting the key's partition in front:
 * `evt.acme.sensor.s1` is stored as `part.<p>.evt.acme.sensor.s1`, where
 * `p = fnv1a(tenant + id) mod partitions` (the server's `{{partition(n, …)}}` over the
 * tenant and id tokens that are wildcards in the filter). Each partition is then one
 * durable consumer filtered on `part.<p>.>`. `FLEX_EVENTS` itself is never changed: its
 * subjects stay what DESIGN.md fixes and the `nats` CLI replays.
 *
 * A sourced message carries `Nats-Stream-Source: FLEX_EVENTS <seq> …`: the runtime uses
 * that original sequence for checkpoints, output ids and dead letters, so outputs are the
 * same as the single-instance runtime's for the same events.
 */
import type { JetStreamManager, JsMsg, StreamConfig } from "@nats-io/jetstream";
import { DiscardPolicy, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { STREAMS, SUBJECT_ROOTS } from "../streams/index.js";
import { PartitionFilterError } from "./errors.js";

/** Prefix of a partitioned processor's stream: `FLEX_PART_<name>`. */
export const PARTITION_STREAM_PREFIX = "FLEX_PART_";
/** First token of the subjects in a partition stream: `part.<partition>.evt.<tenant>.<category>.<id>`. */
export const PARTITION_ROOT = "part";
/** The header a sourced message carries its origin in. */
const SOURCE_HEADER = "Nats-Stream-Source";

/** The partition stream of processor `name`. */
export function partitionStreamName(name: string): string {
  return `${PARTITION_STREAM_PREFIX}${name}`;
}

/** The filter of partition `p`'s consumer. */
export function partitionFilter(p: number): string {
  return `${PARTITION_ROOT}.${p}.>`;
}

/** A processor filter in its four-token form, with what the partition hash covers. */
export interface PartitionRule {
  /** `evt.<tenant>.<category>.<id>`, each token literal or `*`. */
  readonly tokens: readonly string[];
  readonly src: string;
  readonly dest: string;
}

const FOUR = "four tokens evt.<tenant>.<category>.<id> (each a name or *, or a trailing >)";

/** The four-token forms of `filters`; throws {@link PartitionFilterError} for a filter outside FLEX_EVENTS' shape or two that overlap. */
export function partitionRules(processor: string, filters: readonly string[], partitions: number): PartitionRule[] {
  const rules: PartitionRule[] = [];
  for (const f of filters) {
    let tokens = f.split(".");
    if (tokens[tokens.length - 1] === ">") {
      tokens = tokens.slice(0, -1);
      if (tokens.length > 3) throw new PartitionFilterError(processor, f, FOUR);
      while (tokens.length < 4) tokens.push("*");
    }
    if (tokens.length !== 4 || tokens.includes(">") || (tokens[0] !== SUBJECT_ROOTS.events && tokens[0] !== "*")) throw new PartitionFilterError(processor, f, FOUR);
    tokens[0] = SUBJECT_ROOTS.events;
    for (const other of rules) {
      if (other.tokens.every((t, i) => t === tokens[i] || t === "*" || tokens[i] === "*")) {
        throw new PartitionFilterError(processor, f, `filters that do not overlap (it overlaps ${other.src}; an event would be processed twice)`);
      }
    }
    // Wildcards are numbered from 1 in order; the hash covers the tenant's and the id's.
    let n = 0;
    const index = tokens.map((t) => (t === "*" ? ++n : 0));
    const hashed = [index[1]!, index[3]!].filter((i) => i > 0);
    const dest = tokens.map((t, i) => (t === "*" ? `{{wildcard(${index[i]})}}` : t)).join(".");
    // With tenant and id both literal, every event of the filter is one key: its partition is fixed.
    const part = hashed.length > 0 ? `{{partition(${partitions},${hashed.join(",")})}}` : String(hashPartition(`${tokens[1]}${tokens[3]}`, partitions));
    rules.push({ tokens, src: tokens.join("."), dest: `${PARTITION_ROOT}.${part}.${dest}` });
  }
  return rules;
}

/** The server's partition hash: FNV-1a (32-bit) of the UTF-8 bytes, modulo `partitions`. */
export function hashPartition(key: string, partitions: number): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(key)) h = Math.imul(h ^ b, 0x01000193);
  return (h >>> 0) % partitions;
}

/** The partition an event subject `evt.<tenant>.<category>.<id>` goes to, or undefined when no rule takes it. */
export function partitionOf(rules: readonly PartitionRule[], subject: string, partitions: number): number | undefined {
  const t = subject.split(".");
  if (t.length !== 4) return undefined;
  const rule = rules.find((r) => r.tokens.every((x, i) => x === "*" || x === t[i]));
  if (!rule) return undefined;
  const key = (rule.tokens[1] === "*" ? t[1]! : "") + (rule.tokens[3] === "*" ? t[3]! : "");
  return hashPartition(key || `${t[1]}${t[3]}`, partitions);
}

/** The original `FLEX_EVENTS` sequence and subject of a message of a partition stream. */
export function originOf(m: JsMsg): { seq: number; subject: string } | undefined {
  const fields = (m.headers?.get(SOURCE_HEADER) ?? "").split(" ");
  const seq = Number(fields[1]);
  if (fields[0] !== STREAMS.events || !Number.isSafeInteger(seq) || seq < 1) return undefined;
  // part.<p>.evt.<tenant>.<category>.<id>: the original subject is behind the first two tokens.
  const subject = m.subject.split(".").slice(2).join(".");
  return { seq, subject };
}

/**
 * Creates the partition stream of `processor` (or updates its sources when the filters or the
 * partition count changed). Replicas follow `FLEX_EVENTS`.
 */
export async function ensurePartitionStream(jsm: JetStreamManager, processor: string, filters: readonly string[], partitions: number): Promise<string> {
  const name = partitionStreamName(processor);
  const rules = partitionRules(processor, filters, partitions);
  const events = await jsm.streams.info(STREAMS.events);
  const sources = [{ name: STREAMS.events, subject_transforms: rules.map((r) => ({ src: r.src, dest: r.dest })) }];
  const config: Partial<StreamConfig> & { name: string } = {
    name,
    description: `FlexCore: FLEX_EVENTS under processor ${processor}'s filters, by key partition (scale: partitioned)`,
    subjects: [],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    num_replicas: events.config.num_replicas,
    sources,
  };
  try {
    const info = await jsm.streams.info(name);
    if (JSON.stringify(info.config.sources?.map((s) => s.subject_transforms)) !== JSON.stringify(sources.map((s) => s.subject_transforms))) {
      await jsm.streams.update(name, { ...info.config, sources });
    }
  } catch (err) {
    if ((err as { name?: string }).name !== "StreamNotFoundError" && !/stream not found/i.test(String((err as Error).message))) throw err;
    await jsm.streams.add(config).catch(async (e: unknown) => {
      // Another instance created it first.
      if (!/already in use/i.test(String((e as Error).message))) throw e;
    });
  }
  return name;
}
