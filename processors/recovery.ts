/**
 * Recovery: the run and head markers in `flex_state`, the careful mode after a run that did
 * not stop cleanly, and the redrive of dead letters sent back through `FLEX_REDRIVE`.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { AckPolicy, DeliverPolicy, jetstream } from "@nats-io/jetstream";
import type { Consumer, ConsumerMessages, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { nanos } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { readRedriveHeaders, REDRIVE_HEADERS, snapshotKey, STREAMS, SUBJECT_ROOTS } from "../streams/index.js";
import { FETCH_EXPIRES_MS, FETCH_RETRY_MS } from "./delivery.js";
import type { FetchHost } from "./delivery.js";
import type { FailureInfo } from "./outputs.js";
import { MAX_REDRIVEN_IDS, rawOf } from "./entry.js";
import type { Checkpoints, Entry, KeyInfo, KeyState, PendingOutput, RunnerTotals } from "./entry.js";
import { ProcessorCrashedError } from "./errors.js";


/** Prefix of each processor's durable consumer of its redriven dead letters (`FLEX_REDRIVE`): `redrive_<name>`. */
export const REDRIVE_CONSUMER_PREFIX = "redrive_";
/** `flex_state` keys (under the processor's name): the message tried alone after an unclean stop, and the run's reach. */
const HEAD_MARKER = "_head";
const RUN_MARKER = "_run";

const encoder = new TextEncoder();

/** A runner's markers in `flex_state`: how far its run may have fetched, and the message tried alone. */
export class Markers {
  readonly #kv: KV;
  readonly #run: string;
  readonly #head: string;

  /** `scope` is the processor's name; `suffix` sets apart the markers of one of several consumers of it. */
  constructor(kv: KV, scope: string, suffix = "") {
    this.#kv = kv;
    this.#run = snapshotKey(RUN_MARKER + suffix, scope);
    this.#head = snapshotKey(HEAD_MARKER + suffix, scope);
  }

  async #read<T>(key: string): Promise<T | undefined> {
    const e = await this.#kv.get(key);
    return e && e.operation === "PUT" && e.length > 0 ? (JSON.parse(new TextDecoder().decode(e.value)) as T) : undefined;
  }

  /** The deliveries the last run asked for, if it left its marker behind (it did not stop cleanly). */
  async readRun(): Promise<{ requestedTo: number } | undefined> {
    return this.#read(this.#run);
  }

  async writeRun(requestedTo: number): Promise<void> {
    await this.#kv.put(this.#run, encoder.encode(JSON.stringify({ requestedTo })));
  }

  /** A clean stop: the next start needs no care. */
  async clearRun(): Promise<void> {
    await this.#kv.delete(this.#run).catch(() => undefined);
  }

  async readHead(): Promise<{ seq: number; attempts: number } | undefined> {
    return this.#read(this.#head);
  }

  async writeHead(seq: number, attempts: number): Promise<void> {
    await this.#kv.put(this.#head, encoder.encode(JSON.stringify({ seq, attempts })));
  }

  async clearHead(): Promise<void> {
    await this.#kv.delete(this.#head).catch(() => undefined);
  }
}

/** What recovery (careful mode, redrive) needs of a processor's runner (runner.ts implements it). */
export interface RecoveryHost extends FetchHost {
  readonly markers: Markers;
  readonly failed: boolean;
  readonly totals: RunnerTotals;
  redriveMessages: ConsumerMessages | undefined;
  entryOf(m: JsMsg): Entry | undefined;
  enqueue(entry: Entry): void;
  startLaneOf(entry: Entry): void;
  holdLane(i: number): Promise<{ readonly commitTail: Promise<void> } | undefined>;
  releaseLane(i: number): void;
  keyInfo(tenant: string, key: string): KeyInfo;
  ensureStates(batch: readonly Entry[]): Promise<void>;
  reflected(stateKey: string): number;
  redrivenInto(stateKey: string): readonly number[];
  remember(stateKey: string, st: KeyState): void;
  processOneByOne(entries: readonly Entry[], outputs: PendingOutput[], dlq: PendingOutput[], checkpoints: Checkpoints): Promise<number>;
  publish(x: PendingOutput): Promise<unknown>;
  writeCheckpoints(checkpoints: ReadonlyMap<string, Readonly<KeyState>>): Promise<void>;
  takesRedrive(m: JsMsg, subject: string): boolean;
  deadLetter(e: Entry, attempts: number, error: FailureInfo, reason: string): PendingOutput;
  idle(): Promise<void>;
}

/**
 * After a run that did not stop cleanly (crash, process out of memory, kill -9), the
 * `window` deliveries it may have fetched beyond its ack floor are processed one at a
 * time, each under a marker in `flex_state` (`<processor>._head`: its sequence and how
 * many runs tried it). A message that kills the host leaves its marker behind, so the next
 * start counts one more attempt, and at `max_deliver` attempts dead-letters it without
 * processing it again. Then the runner goes back to batches.
 */
export async function careful(runner: RecoveryHost, consumer: Consumer, window: number): Promise<void> {
  const cfg = runner.cfg;
  const prior = await runner.markers.readHead();
  runner.log(`flexcore: processor ${cfg.name}: the last run did not stop cleanly; processing up to ${window} messages one at a time`, "warn");
  let left = window;
  while (left > 0 && !runner.stopping && !runner.failed) {
    let m: JsMsg | undefined;
    try {
      const messages = await consumer.fetch({ max_messages: 1, expires: FETCH_EXPIRES_MS });
      runner.messages = messages;
      if (runner.stopping) messages.stop();
      for await (const x of messages) m = x;
    } catch (err) {
      if (runner.stopping) return;
      runner.log(`flexcore: processor ${cfg.name}: pull failed (${(err as Error).message}); pulling again`, "warn");
      await sleep(FETCH_RETRY_MS);
      continue;
    } finally {
      runner.messages = undefined;
    }
    if (!m) break; // nothing left to deliver: the window was shorter
    left -= 1;
    const entry = runner.entryOf(m);
    if (!entry) continue;
    await runner.ensureStates([entry]);
    if (entry.seq <= runner.reflected(entry.stateKey)) {
      // Processed before the stop, not acknowledged: skipped without running anything.
      runner.enqueue(entry);
      runner.startLaneOf(entry);
      continue;
    }
    const attempts = prior?.seq === entry.seq ? prior.attempts : 0;
    if (attempts >= cfg.maxDeliver) {
      const error = new ProcessorCrashedError(cfg.name, entry.seq, attempts);
      await runner.publish(runner.deadLetter(entry, attempts, { name: error.name, code: error.code, message: error.message }, error.message));
      runner.totals.deadLettered += 1;
      entry.done = true;
      runner.deliveries.push(entry);
      runner.deliveries.advance();
      continue;
    }
    await runner.markers.writeHead(entry.seq, attempts + 1);
    runner.enqueue(entry);
    runner.startLaneOf(entry);
    await runner.idle();
  }
  if (!runner.failed && !runner.stopping) await runner.markers.clearHead();
}

/**
 * Takes back this processor's redriven dead letters (`redrive.*.<name>` in `FLEX_REDRIVE`,
 * see docs/dlq.md), one at a time: only this processor sees them, never the other
 * consumers of the event. Each runs on the key's current state as a late event, with the
 * partition of its key held, so it never races the key's regular events.
 */
export async function redriveLoop(runner: RecoveryHost, nc: NatsConnection, jsm: JetStreamManager): Promise<void> {
  const cfg = runner.cfg;
  const name = `${REDRIVE_CONSUMER_PREFIX}${cfg.name}`;
  const editable = { description: `FlexCore processor ${cfg.name}: its redriven dead letters`, ack_wait: nanos(cfg.ackWaitMs), max_ack_pending: 1, max_deliver: -1 };
  try {
    await jsm.consumers.add(STREAMS.redrive, { ...editable, durable_name: name, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, filter_subject: `${SUBJECT_ROOTS.redrive}.*.${cfg.name}` })
      // It exists with other settings (ack_wait changed in flexcore.yaml): keep its position, update those.
      .catch(() => jsm.consumers.update(STREAMS.redrive, name, editable));
  } catch (err) {
    // A deployment whose topology predates FLEX_REDRIVE still processes events.
    runner.log(`flexcore: processor ${cfg.name}: no redrive consumer (${(err as Error).message}); run flexcore up to create ${STREAMS.redrive}`, "warn");
    return;
  }
  const consumer = await jetstream(nc).consumers.get(STREAMS.redrive, name);
  while (!runner.stopping && !runner.failed) {
    try {
      const messages = await consumer.fetch({ max_messages: 1, expires: FETCH_EXPIRES_MS });
      runner.redriveMessages = messages;
      // stop() ran while the pull was being set up. Not `await messages.close()`: close()
      // resolves only once the iterator below has consumed the stop it queues, so awaiting
      // it before iterating waited for ever (the scale-out test's hang in CI).
      if (runner.stopping) messages.stop();
      for await (const m of messages) await redriveOne(runner, m);
    } catch (err) {
      if (runner.stopping || runner.failed) break;
      runner.log(`flexcore: processor ${cfg.name}: redrive pull failed (${(err as Error).message}); pulling again`, "warn");
      await sleep(FETCH_RETRY_MS);
    } finally {
      runner.redriveMessages = undefined;
    }
  }
}

async function redriveOne(runner: RecoveryHost, m: JsMsg): Promise<void> {
  const cfg = runner.cfg;
  const h = m.headers;
  const { subject, seq, dlqSeq, reasons } = readRedriveHeaders(h);
  const tenant = m.subject.split(".")[1] ?? "";
  const tokens = subject.split(".");
  // Only FlexCore's service user publishes redrives, but the tenant is still the subject's.
  if (tokens.length !== 4 || tokens[0] !== SUBJECT_ROOTS.events || tokens[1] !== tenant || !Number.isSafeInteger(seq) || seq < 1) {
    runner.log(`flexcore: processor ${cfg.name}: dropped a malformed redrive on ${m.subject} (original subject ${JSON.stringify(subject)}, sequence ${String(h?.get(REDRIVE_HEADERS.seq))})`, "warn");
    m.term();
    return;
  }
  if (!runner.takesRedrive(m, subject)) return;
  const key = tokens[3]!;
  const k = runner.keyInfo(tenant, key);
  const held = await runner.holdLane(k.partition);
  if (!held) return; // stopping: not acknowledged, delivered again later
  k.pending += 1; // keeps the key's state in memory while it runs
  try {
    const { raw, hdr } = rawOf(m);
    const entry: Entry = {
      m, done: false, seq, subject, tenant, key, stateKey: k.stateKey, raw, hdr,
      storedAt: Math.floor(m.info.timestampNanos / 1e6), partition: k.partition, receivedAt: performance.now(), meta: undefined,
      redrive: { dlqSeq: Number.isSafeInteger(dlqSeq) ? dlqSeq : 0, reasons },
    };
    await runner.ensureStates([entry]);
    const taken = runner.redrivenInto(k.stateKey);
    if (entry.redrive!.dlqSeq > 0 && taken.includes(entry.redrive!.dlqSeq)) {
      // Delivered again after its checkpoint was written but before the ack (a crash in
      // between): the state already took it and its outputs are stored.
      runner.log(`flexcore: processor ${cfg.name}: redrive of dead letter ${entry.redrive!.dlqSeq} was already applied to ${k.stateKey}; acknowledged without running it again`, "warn");
      await m.ackAck();
      return;
    }
    const reached = runner.reflected(k.stateKey);
    const outputs: PendingOutput[] = [];
    const dlq: PendingOutput[] = [];
    const checkpoints: Checkpoints = new Map();
    const failedAttempts = await runner.processOneByOne([entry], outputs, dlq, checkpoints);
    // A late event: the key's checkpoint keeps the sequence it had reached, so the
    // events after the original one are not replayed.
    // The checkpoint also records this dead letter's id (even when it failed again: its new
    // dead letter is stored with the outputs), so a redelivery after a crash before the ack
    // is recognised above.
    const cp = checkpoints.get(k.stateKey);
    const redriven = entry.redrive!.dlqSeq > 0 ? [...taken, entry.redrive!.dlqSeq].slice(-MAX_REDRIVEN_IDS) : taken;
    if (cp) {
      const kept: KeyState = { json: cp.json, seq: Math.max(reached, cp.seq), redriven };
      runner.remember(k.stateKey, kept);
      checkpoints.set(k.stateKey, kept);
    }
    await held.commitTail;
    await Promise.all([...outputs.map((x) => runner.publish(x)), ...dlq.map((x) => runner.publish(x))]);
    await runner.writeCheckpoints(checkpoints);
    // Test-only fault switch: dies between the stored checkpoint and the ack (crash tests).
    if (process.env.FLEXCORE_TEST_FAULT === "processor-redrive-before-ack") process.kill(process.pid, "SIGKILL");
    await m.ackAck();
    runner.totals.processed += 1;
    runner.totals.outputs += outputs.length;
    runner.totals.errors += failedAttempts;
    runner.totals.deadLettered += dlq.length;
  } finally {
    k.pending -= 1;
    runner.releaseLane(k.partition);
  }
}
