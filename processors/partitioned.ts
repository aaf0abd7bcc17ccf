/**
 * A processor with `scale: partitioned`, spread over the instances that run it.
 *
 * - Membership: each instance heartbeats `member.<processor>.<id>` in `flex_leases` (every
 *   third of the lease TTL, each write with that TTL) with what it holds and its figures; an
 *   instance whose `expiresAt` passed is gone.
 * - Assignment: a deterministic function of the live member ids ({@link assignPartitions}:
 *   rendezvous hashing with a bounded load, so every member gets ⌈n/m⌉ at most and a join or
 *   a leave moves few partitions). Every instance computes the same answer from the same set.
 * - Ownership: partition `p` is consumed only under its lease `proc.<processor>.p<p>`
 *   (compare-and-set, TTL). An instance over its share releases a partition only after
 *   draining it (processing, acknowledging and checkpointing what it fetched); one that stops
 *   hands over all; one that dies loses them when its leases expire. A new owner recreates
 *   the partition's consumer at its ack floor and loads key states from `flex_state`, so a
 *   key's order and state continue across the move.
 */
import type { KV } from "@nats-io/kv";
import type { ResolvedProcessor } from "./config.js";
import { LatencyWindow } from "./metrics.js";
import { partitionFilter, partitionOf, partitionRules, partitionStreamName } from "./partition-stream.js";
import type { PartitionRule } from "./partition-stream.js";
import { CONSUMER_PREFIX, ProcessorRunner } from "./runner.js";
import type { RunnerContext, RunnerPlacement, RunnerTotals } from "./runner.js";

/** Wait before a partition whose runner failed is taken again, in ms. */
const RETAKE_DELAY_MS = 1_000;

const encoder = new TextEncoder();

/** What a member key holds. */
export interface MemberBody {
  readonly instance: string;
  /** ms since the epoch after which the member counts as gone. */
  readonly expiresAt: number;
  /** Partitions this member consumes now. */
  readonly partitions: readonly number[];
  /** Source events acknowledged by this member since it started the processor. */
  readonly processed: number;
  /** Events per second over the last heartbeat interval. */
  readonly throughput: number;
}

/** The `flex_leases` key prefix of a processor's members: `member.<processor>.`. */
export function memberKeyPrefix(processor: string): string {
  return `member.${processor}.`;
}

/** The `flex_leases` key of an instance running a partitioned processor (the id base64url-encoded: ids may hold `:`). */
export function memberKey(processor: string, instance: string): string {
  return `${memberKeyPrefix(processor)}${Buffer.from(instance).toString("base64url")}`;
}

/** The `flex_leases` key of partition `p` of a processor. */
export function partitionLeaseKey(processor: string, p: number): string {
  return `proc.${processor}.p${p}`;
}

/** The durable consumer of partition `p` on the partition stream. */
export function partitionConsumerName(processor: string, p: number): string {
  return `${CONSUMER_PREFIX}${processor}_p${p}`;
}

function score(member: string, p: number): number {
  let h = 0x811c9dc5;
  const s = `${member}\u0000${p}`;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  // A final mix: FNV-1a alone ranks similar ids alike.
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 12;
  return h >>> 0;
}

/**
 * Which partitions each member consumes: each partition goes to the member that ranks it
 * highest (rendezvous hashing) among those below ⌈partitions / members⌉. A function of the
 * member set only, so every instance computes the same assignment.
 */
export function assignPartitions(partitions: number, members: readonly string[]): Map<string, number[]> {
  const ids = [...new Set(members)].sort();
  const out = new Map<string, number[]>(ids.map((m) => [m, []]));
  if (ids.length === 0) return out;
  const cap = Math.ceil(partitions / ids.length);
  for (let p = 0; p < partitions; p++) {
    const ranked = [...ids].sort((a, b) => score(b, p) - score(a, p) || (a < b ? -1 : 1));
    const m = ranked.find((x) => out.get(x)!.length < cap)!;
    out.get(m)!.push(p);
  }
  return out;
}

/** One partitioned processor on this instance: its membership, and a runner per partition it holds. */
export class PartitionedProcessor {
  readonly cfg: ResolvedProcessor;
  readonly latency = new LatencyWindow();
  totals: RunnerTotals = { processed: 0, outputs: 0, errors: 0, deadLettered: 0, redelivered: 0 };
  readonly #ctx: RunnerContext;
  readonly #rules: readonly PartitionRule[];
  readonly #stream: string;
  readonly #runners = new Map<number, ProcessorRunner>();
  readonly #releasing = new Map<number, Promise<void>>();
  readonly #retakeAfter = new Map<number, number>();
  readonly #members = new Map<string, MemberBody>();
  readonly #tickMs: number;
  #watch: Awaited<ReturnType<KV["watch"]>> | undefined;
  #watching: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #ticking: Promise<void> | undefined;
  #again = false;
  #beat = { at: performance.now(), processed: 0, throughput: 0 };
  #stopping = false;

  constructor(ctx: RunnerContext, cfg: ResolvedProcessor) {
    this.#ctx = ctx;
    this.cfg = cfg;
    this.#rules = partitionRules(cfg.name, cfg.subjects, cfg.partitions);
    this.#stream = partitionStreamName(cfg.name);
    this.#tickMs = Math.min(1_000, Math.max(50, Math.floor(ctx.leaseTtlMs / 4)));
  }

  /** Whether this instance consumes at least one partition. */
  get owner(): boolean {
    return this.partitions.length > 0;
  }

  /** The partitions this instance consumes (holds the lease of, draining included), ascending. */
  get partitions(): number[] {
    return [...this.#runners].filter(([, r]) => r.owner).map(([p]) => p).sort((a, b) => a - b);
  }

  get inFlight(): number {
    let n = 0;
    for (const r of this.#runners.values()) n += r.inFlight;
    return n;
  }

  get queued(): number {
    let n = 0;
    for (const r of this.#runners.values()) n += r.queued;
    return n;
  }

  /** The durable consumers of the partitions held here (for lag). */
  consumers(): Array<{ stream: string; name: string; partition: number }> {
    return this.partitions.map((p) => ({ stream: this.#stream, name: partitionConsumerName(this.cfg.name, p), partition: p }));
  }

  /** The live members and what each consumes, as the member keys say. */
  members(): MemberBody[] {
    const now = Date.now();
    return [...this.#members.values()].filter((m) => m.expiresAt > now);
  }

  async start(): Promise<void> {
    const kv = this.#ctx.leases.kv;
    await this.#heartbeat();
    // The members, and the partition leases: a released lease is taken at once, not at the next tick.
    const leasePrefix = `${partitionLeaseKey(this.cfg.name, 0).split(".").slice(0, -1).join(".")}.`;
    this.#watch = await kv.watch({ key: [`${memberKeyPrefix(this.cfg.name)}>`, `${leasePrefix}*`] });
    const watch = this.#watch;
    this.#watching = (async () => {
      for await (const e of watch) {
        if (e.key.startsWith(leasePrefix)) {
          if (e.isUpdate && e.operation !== "PUT") this.#kick();
          continue;
        }
        if (e.operation === "PUT" && e.length > 0) {
          try {
            const body = e.json<MemberBody>();
            this.#members.set(e.key, body);
          } catch {
            this.#members.delete(e.key);
          }
        } else this.#members.delete(e.key);
        // A join or a leave: rebalance now rather than at the next tick.
        if (e.isUpdate) this.#kick();
      }
    })().catch(() => undefined);
    this.#timer = setInterval(() => this.#kick(), this.#tickMs);
    this.#timer.unref();
    this.#kick();
  }

  // One rebalance at a time; a kick during one runs another right after it (a lease released
  // meanwhile is taken then, not at the next tick).
  #kick(): void {
    if (this.#stopping) return;
    if (this.#ticking) {
      this.#again = true;
      return;
    }
    this.#ticking = this.#tick()
      .catch((err: unknown) => this.#ctx.log(`flexcore: processor ${this.cfg.name}: rebalance failed (${(err as Error).message}); trying again`, "warn"))
      .finally(() => {
        this.#ticking = undefined;
        if (this.#again) {
          this.#again = false;
          this.#kick();
        }
      });
  }

  async #tick(): Promise<void> {
    if (performance.now() - this.#beat.at >= this.#ctx.leaseTtlMs / 3) await this.#heartbeat();
    const self = this.#ctx.instanceId;
    const live = [self, ...this.members().map((m) => m.instance)];
    const mine = new Set(assignPartitions(this.cfg.partitions, live).get(self) ?? []);
    for (const [p, r] of this.#runners) {
      if (mine.has(p) || this.#releasing.has(p)) continue;
      // Over our share: drain the partition, then let its lease go for its new owner.
      this.#ctx.log(`flexcore: processor ${this.cfg.name}: handing over partition ${p}`);
      this.#releasing.set(p, this.#retire(p, r));
    }
    for (const p of mine) {
      if (this.#stopping) return;
      if (this.#runners.has(p) || this.#releasing.has(p) || (this.#retakeAfter.get(p) ?? 0) > Date.now()) continue;
      const r = new ProcessorRunner(this.#ctx, this.cfg, (runner) => this.#failed(p, runner), this.#placement(p));
      this.#runners.set(p, r);
      let started = false;
      try {
        started = await r.tryStart();
      } catch (err) {
        this.#ctx.log(`flexcore: processor ${this.cfg.name}: partition ${p} did not start (${(err as Error).message})`, "warn");
        await r.stop().catch(() => undefined);
      }
      if (!started) {
        if (this.#runners.get(p) === r) this.#runners.delete(p);
        continue;
      }
      this.#ctx.log(`flexcore: processor ${this.cfg.name}: took partition ${p}`);
      if (this.#stopping) await this.#retire(p, r);
    }
  }

  async #retire(p: number, r: ProcessorRunner): Promise<void> {
    try {
      await r.stop();
    } finally {
      if (this.#runners.get(p) === r) this.#runners.delete(p);
      this.#releasing.delete(p);
    }
  }

  #failed(p: number, r: ProcessorRunner): void {
    this.#retakeAfter.set(p, Date.now() + RETAKE_DELAY_MS);
    if (!this.#releasing.has(p)) this.#releasing.set(p, this.#retire(p, r));
  }

  #placement(p: number): RunnerPlacement {
    const rules = this.#rules;
    const n = this.cfg.partitions;
    return {
      source: { stream: this.#stream, consumerName: partitionConsumerName(this.cfg.name, p), filters: [partitionFilter(p)] },
      leaseKey: partitionLeaseKey(this.cfg.name, p),
      markerSuffix: `.p${p}`,
      lanes: 1,
      partition: { index: p, holds: (subject) => partitionOf(rules, subject, n) === p },
      totals: this.totals,
      latency: this.latency,
    };
  }

  async #heartbeat(): Promise<void> {
    const now = performance.now();
    const processed = this.totals.processed;
    const seconds = Math.max(0.001, (now - this.#beat.at) / 1000);
    const throughput = this.#beat.processed === 0 && processed === 0 ? 0 : (processed - this.#beat.processed) / seconds;
    this.#beat = { at: now, processed, throughput };
    const body: MemberBody = { instance: this.#ctx.instanceId, expiresAt: Date.now() + this.#ctx.leaseTtlMs, partitions: this.partitions, processed, throughput: Math.round(throughput * 1000) / 1000 };
    await this.#ctx.leases.put(memberKey(this.cfg.name, this.#ctx.instanceId), encoder.encode(JSON.stringify(body)), this.#ctx.leaseTtlMs);
  }

  /** Events per second over the last heartbeat interval. */
  get throughput(): number {
    return this.#beat.throughput;
  }

  /** Resolves when nothing fetched by the partitions held here is unacknowledged. */
  async idle(): Promise<void> {
    await Promise.all([...this.#runners.values()].map((r) => r.idle()));
  }

  /** Leaves the group: stops taking partitions, drains and hands over every partition held, removes the member key. */
  async stop(): Promise<void> {
    this.#stopping = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#ticking;
    // Gone from the member set first: the others compute their new shares and wait for each
    // lease while this instance drains.
    await this.#ctx.leases.kv.delete(memberKey(this.cfg.name, this.#ctx.instanceId)).catch(() => undefined);
    for (const [p, r] of this.#runners) if (!this.#releasing.has(p)) this.#releasing.set(p, this.#retire(p, r));
    await Promise.all([...this.#releasing.values()]);
    this.#watch?.stop();
    await this.#watching;
  }
}
