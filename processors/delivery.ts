/**
 * Fetching and acknowledging: the processor's durable pull consumer (recreated at its ack
 * floor on each start), the pull loop with its backpressure, and the low-water mark that one
 * `AckPolicy.All` ack covers.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { AckPolicy, DeliverPolicy, jetstream } from "@nats-io/jetstream";
import type { Consumer, ConsumerConfig, ConsumerMessages, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import type { ResolvedProcessor } from "./config.js";
import type { Entry } from "./entry.js";

/** How long one pull waits for messages, in ms (idle heartbeats every half of it). */
export const FETCH_EXPIRES_MS = 5_000;
/** Wait after a failed pull before the next, in ms. */
export const FETCH_RETRY_MS = 250;
/** Batches per partition waiting for the pool before the runtime stops fetching. */
const BATCHES_WAITING = 2;

/** Where a runner reads from: the stream, its durable consumer and that consumer's filters. */
export interface DeliverySource {
  readonly stream: string;
  readonly consumerName: string;
  readonly filters: readonly string[];
}

/**
 * Deletes the durable consumer if it exists and tells where it stood: the stream sequence
 * below which everything is acknowledged, and how many deliveries that took.
 */
export async function resetConsumer(jsm: JetStreamManager, source: DeliverySource): Promise<{ floor: number; ackedDeliveries: number }> {
  // Start where every earlier message is acknowledged. Recreating the consumer there makes
  // the server deliver the unacknowledged messages again now and in stream order, instead
  // of after ack_wait and behind newer ones, so a key never sees its events out of order;
  // messages that were processed but not acknowledged are skipped by their checkpoint.
  try {
    const info = await jsm.consumers.info(source.stream, source.consumerName);
    // Nothing acknowledged yet since it was created at opt_start_seq: the floor is below that.
    const floor = Math.max(info.ack_floor.stream_seq, (info.config.opt_start_seq ?? 1) - 1);
    await jsm.consumers.delete(source.stream, source.consumerName);
    return { floor, ackedDeliveries: info.ack_floor.consumer_seq };
  } catch (err) {
    if (!/consumer not found/i.test(String((err as Error).message)) && (err as { name?: string }).name !== "ConsumerNotFoundError") throw err;
    return { floor: 0, ackedDeliveries: 0 };
  }
}

/** Creates the durable consumer delivering from `floor + 1` on. */
export async function createConsumer(nc: NatsConnection, jsm: JetStreamManager, source: DeliverySource, cfg: ResolvedProcessor, floor: number, workQueue = false): Promise<Consumer> {
  const subjects = [...source.filters];
  const filter: Partial<ConsumerConfig> = subjects.length === 1 ? { filter_subject: subjects[0]! } : { filter_subjects: subjects };
  const config: Partial<ConsumerConfig> = {
    durable_name: source.consumerName,
    description: `FlexCore processor ${cfg.name} (${cfg.kind})`,
    // One ack covers every earlier delivery: the runtime acks its low-water mark (see
    // Deliveries.advance), not each message, which halves the messages per event.
    // A work queue (a partition stream) takes explicit acks only, and its consumers start at
    // its first message, which is the first one not acknowledged.
    ack_policy: workQueue ? AckPolicy.Explicit : AckPolicy.All,
    ack_wait: nanos(cfg.ackWaitMs),
    max_ack_pending: cfg.maxInFlight,
    // The runtime counts attempts and dead-letters; the server must never drop a message.
    max_deliver: -1,
    ...(floor > 0 && !workQueue ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: floor + 1 } : { deliver_policy: DeliverPolicy.All }),
    ...filter,
  };
  await jsm.consumers.add(source.stream, config);
  return jetstream(nc).consumers.get(source.stream, source.consumerName);
}

/** Every delivery in arrival order, and the low-water mark acknowledged last. */
export class Deliveries {
  readonly #ackEach: boolean;
  #order: Entry[] = [];
  #head = 0;
  #next = 1;

  /** `ackEach`: acknowledge every delivery (AckPolicy.Explicit) rather than the last one. */
  constructor(ackEach = false) {
    this.#ackEach = ackEach;
  }

  /** The delivery sequence the next message must have. */
  get next(): number {
    return this.#next;
  }

  /**
   * Checks that `m` is the next delivery: an ack covers every earlier delivery, so one that
   * never reached us (a pull cut short) must not be passed by the low-water mark.
   */
  expect(m: JsMsg): boolean {
    if (m.info.deliverySequence !== this.#next) return false;
    this.#next = m.info.deliverySequence + 1;
    return true;
  }

  push(entry: Entry): void {
    this.#order.push(entry);
  }

  // Acks the last delivery before which every delivery is committed (partitions commit out
  // of order); on an AckPolicy.All consumer that acks all of them.
  advance(): void {
    const order = this.#order;
    let head = this.#head;
    while (head < order.length && order[head]!.done) head += 1;
    if (head === this.#head) return;
    if (this.#ackEach) for (let i = this.#head; i < head; i++) order[i]!.m.ack();
    else order[head - 1]!.m.ack();
    if (head === order.length) {
      this.#order = [];
      head = 0;
    } else if (head >= 4_096) {
      this.#order = order.slice(head);
      head = 0;
    }
    this.#head = head;
  }
}

/** What the pull loop needs of a processor's runner (runner.ts implements it). */
export interface FetchHost {
  readonly cfg: ResolvedProcessor;
  readonly lanes: number;
  readonly stopping: boolean;
  readonly inFlight: number;
  readonly queued: number;
  readonly deliveries: Deliveries;
  readonly markers: { writeRun(requestedTo: number): Promise<void> };
  messages: ConsumerMessages | undefined;
  /** Resolves when there may be room for more messages. */
  room(): Promise<void>;
  accept(m: JsMsg): void;
  log(line: string, level?: "warn" | "error"): void;
}

/** Pulls for `runner` until it stops, with backpressure; after an unclean stop, the careful window first. */
export async function fetchLoop(runner: FetchHost, consumer: Consumer, careful: () => Promise<void>): Promise<void> {
  const cfg = runner.cfg;
  // Work waiting for the pool: each partition has at most one task in the pool's queue
  // and up to two batches waiting behind it. Gating on the pool's queue alone (2 tasks
  // per thread) left partitions without a next batch when their task finished.
  const backlog = cfg.batchSize * runner.lanes * BATCHES_WAITING;
  await careful();
  while (!runner.stopping) {
    // Backpressure: pull only while fewer than max_in_flight messages are unacknowledged
    // and less than two batches per partition wait for the pool.
    while (!runner.stopping && (runner.inFlight >= cfg.maxInFlight || runner.queued >= backlog)) await runner.room();
    if (runner.stopping) break;
    // One pull of up to two batches per partition: a backlog arrives as a burst that
    // fills whole batches, and per-key checkpoints are written once per batch (a
    // consume() loop streamed messages in a few at a time and made tasks small).
    const want = Math.min(cfg.maxInFlight - runner.inFlight, cfg.batchSize * runner.lanes * 2);
    try {
      // The next start knows how far this run may have got (one write per pull).
      await runner.markers.writeRun(runner.deliveries.next - 1 + want);
      const messages = await consumer.fetch({ max_messages: want, expires: FETCH_EXPIRES_MS });
      runner.messages = messages;
      // stop() ran while the pull was being set up: end it now rather than at its expiry.
      if (runner.stopping) messages.stop();
      for await (const m of messages) runner.accept(m);
    } catch (err) {
      // A pull can fail (missed heartbeats while the event loop was busy, a reconnect):
      // what it delivered is in the partitions, the rest comes with the next pull.
      if (runner.stopping) break;
      runner.log(`flexcore: processor ${cfg.name}: pull failed (${(err as Error).message}); pulling again`, "warn");
      await sleep(FETCH_RETRY_MS);
    } finally {
      runner.messages = undefined;
    }
  }
}
