/**
 * A workflow's triggers: one durable consumer per event trigger on `FLEX_EVENTS`, shared by
 * all runners and handed over between versions at the old consumer's ack floor, and the cron
 * schedules ticked every second. Both start runs through the runner ({@link TriggerHost}).
 */
import { createHash } from "node:crypto";
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { deadLetterHeaders, decodeData, decodeEvent, dlqSubject, FlexError, HEADERS, parseSubject, readRedriveHeaders, REDRIVE_HEADERS, redriveSubject, STREAMS } from "../streams/index.js";
import { latestFireTime, parseCron } from "./cron.js";
import type { CronSchedule } from "./cron.js";
import type { WorkflowDefinition } from "./definition.js";
import { orderKey } from "./definitions.js";
import type { StoredWorkflow } from "./definitions.js";
import { describeError, TriggerEventGoneError } from "./errors.js";
import { WORKFLOW_CATEGORY } from "./events.js";
import type { TriggerInfo } from "./events.js";
import type { StartOptions, StartResult } from "./start.js";

// Cron schedules have minute resolution; checking every second fires within a second of it.
export const CRON_TICK_MS = 1_000;
/** How late a missed cron fire may still run (after a stall or restart). */
export const CRON_CATCH_UP_MS = 60 * 60_000;
// Start errors a redelivery cannot cure.
const PERMANENT_START_ERRORS = new Set(["FLEX_WORKFLOW_TRIGGER_EVENT_GONE", "FLEX_WORKFLOW_NOT_FOUND", "FLEX_WORKFLOW_INVALID", "FLEX_SUBJECT_TOKEN", "FLEX_INVALID_OPTION", "FLEX_INVALID_EVENT", "FLEX_PAYLOAD_TOO_LARGE"]);
/** Deliveries of a trigger event before it is dead-lettered to `dlq.<tenant>.workflow-<name>`. */
export const TRIGGER_MAX_DELIVER = 5;
// Pause before a failed trigger event comes again, doubled per delivery up to the max.
const TRIGGER_NAK_MS = 1_000;
const TRIGGER_MAX_NAK_MS = 30_000;
const TRIGGER_ACK_WAIT_NS = 30_000_000_000;
// Event data up to this size is copied into a trigger's dead letter.
const DLQ_MAX_DATA_BYTES = 256 * 1024;

/** What the triggers need of the runner: starting a run. */
export interface TriggerHost {
  start(tenant: string, workflow: string, options: StartOptions): Promise<StartResult>;
}

/** Where the triggers read and write, and how they log. */
export interface TriggerContext {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /** The `flex_workflows` bucket (ordered runs chain there). */
  readonly kv: KV;
  readonly log: (line: string, level?: "warn" | "error") => void;
  readonly now: () => Date;
}

const encoder = new TextEncoder();

/** `flexwf_<tenant>_<name>_<digest>`: the name of a workflow's trigger consumers before `_v<version>_<trigger index>`. */
function triggerConsumerPrefix(tenant: string, name: string): string {
  // Readable where the names are plain; the digest keeps names that read alike apart (`café`, `caf_`).
  const digest = createHash("sha256").update(`${tenant}\u0000${name}`).digest("hex").slice(0, 12);
  return `flexwf_${tenant}_${name}`.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 80) + `_${digest}`;
}

/** The version and trigger index of a trigger consumer named `<prefix>_v<version>_<index>`, or undefined. */
function parseTriggerConsumer(consumer: string, prefix: string): { version: number; index: number } | undefined {
  if (!consumer.startsWith(`${prefix}_v`)) return undefined;
  const m = /^(\d+)_(\d+)$/u.exec(consumer.slice(prefix.length + 2));
  return m ? { version: Number(m[1]), index: Number(m[2]) } : undefined;
}

/** Whether a concrete subject matches a subject filter (`*` one token, `>` the rest). */
function matchesFilter(filter: string, subject: string): boolean {
  const f = filter.split(".");
  const s = subject.split(".");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === ">") return s.length > i;
    if (i >= s.length || (f[i] !== "*" && f[i] !== s[i])) return false;
  }
  return f.length === s.length;
}

/** Where a redriven trigger event came from (`FLEX_REDRIVE` headers). */
interface RedriveOrigin {
  readonly dlqSeq: number;
  readonly reasons: readonly string[];
}

/** A trigger event as the start logic needs it: from the trigger's consumer, or read back for a redrive. */
interface TriggerEvent {
  readonly subject: string;
  readonly seq: number;
  readonly headers: JsMsg["headers"];
  readonly data: Uint8Array;
  readonly storedAt: number;
  readonly attempts: number;
}

/** The triggers of every workflow this runner has seen installed. */
/** One event trigger's durable consumer and the loop that reads it. */
interface TriggerConsumer {
  readonly name: string;
  messages: ConsumerMessages | undefined;
  /** Set before `messages.stop()`: a loop still setting up its consumer stops it itself. */
  stopped: boolean;
  done: Promise<void>;
}

export class WorkflowTriggers {
  readonly #host: TriggerHost;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #kv: KV;
  readonly #log: TriggerContext["log"];
  readonly #now: () => Date;
  readonly #consumers = new Map<string, TriggerConsumer>();
  /** The version installed last per `<tenant>\u0000<name>` (what a redrive starts), and its redrive reader. */
  readonly #installed = new Map<string, StoredWorkflow>();
  readonly #redrives = new Map<string, { messages: ConsumerMessages | undefined; done: Promise<void> }>();
  /** `since`: when the version was stored; nothing before it is owed. */
  readonly #crons = new Map<string, { tenant: string; name: string; schedules: CronSchedule[]; since: number }>();
  /** Fire times up to here have been started; a new runner looks back CRON_CATCH_UP_MS. */
  #cronCheckedUpTo: number | undefined;
  #closed = false;

  constructor(host: TriggerHost, context: TriggerContext) {
    this.#host = host;
    this.#js = context.js;
    this.#jsm = context.jsm;
    this.#kv = context.kv;
    this.#log = context.log;
    this.#now = context.now;
  }

  /** Installs the triggers of a version (validated for its tenant), replacing the older version's. */
  async install(w: StoredWorkflow): Promise<void> {
    const def = w.definition;
    const cronKey = `${w.tenant}\u0000${w.name}`;
    const schedules = def.triggers.flatMap((t) => (t.kind === "cron" ? [parseCron(t.schedule, t.timezone)] : []));
    if (schedules.length > 0) this.#crons.set(cronKey, { tenant: w.tenant, name: w.name, schedules, since: Date.parse(w.storedAt) || 0 });
    else this.#crons.delete(cronKey);
    // One durable consumer per event trigger, shared by all runners. A new version's consumer
    // starts where the old one's acknowledgements end, and the old goes only after it exists:
    // no event falls between two versions (one already started is not started again, its run
    // id is its sequence). Consumers of versions this runner never saw (stored while no runner
    // was up) are found by name on the server, not in memory.
    for (const [k, c] of this.#consumers) {
      if (!k.startsWith(`${cronKey}#`)) continue;
      c.stopped = true;
      c.messages?.stop();
      this.#consumers.delete(k);
      await c.done;
    }
    if (this.#closed) return;
    const prefix = triggerConsumerPrefix(w.tenant, w.name);
    const installed = this.#installed.get(cronKey);
    if (!installed || installed.version <= w.version) this.#installed.set(cronKey, w);
    if (!this.#redrives.has(cronKey) && def.triggers.some((t) => t.kind === "event")) await this.#readRedrives(cronKey, prefix, w);
    const existing = new Map<string, { version: number; index: number; ackFloor: number }>();
    for await (const c of this.#jsm.consumers.list(STREAMS.events)) {
      const v = parseTriggerConsumer(c.name, prefix);
      if (v) existing.set(c.name, { ...v, ackFloor: c.ack_floor.stream_seq });
    }
    // A runner behind the watch installs nothing older than what another already installed.
    if ([...existing.values()].some((c) => c.version > w.version)) return;
    const stale = [...existing].filter(([, c]) => c.version !== w.version);
    const triggers: Array<{ name: string; t: Extract<WorkflowDefinition["triggers"][number], { kind: "event" }> }> = [];
    def.triggers.forEach((t, i) => {
      if (t.kind === "event") triggers.push({ name: `${prefix}_v${w.version}_${i}`, t });
    });
    for (const { name, t } of triggers) {
      if (existing.has(name)) continue;
      const index = Number(name.slice(name.lastIndexOf("_") + 1));
      // The same trigger's old consumer when there is one, else the one furthest behind.
      const same = stale.filter(([, c]) => c.index === index);
      const from = (same.length > 0 ? same : stale).map(([, c]) => c.ackFloor);
      const start = from.length > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: Math.min(...from) + 1 } : { deliver_policy: DeliverPolicy.New };
      try {
        await this.#jsm.consumers.add(STREAMS.events, { durable_name: name, filter_subject: t.subject, ...start, ack_policy: AckPolicy.Explicit, ack_wait: TRIGGER_ACK_WAIT_NS, max_deliver: TRIGGER_MAX_DELIVER });
      } catch (err) {
        // Exists already (another runner made it); if not, the old consumers stay for a later try.
        await this.#jsm.consumers.info(STREAMS.events, name).catch(() => {
          throw err;
        });
      }
    }
    for (const [name] of stale) await this.#jsm.consumers.delete(STREAMS.events, name).catch(() => undefined);
    for (const { name, t } of triggers) {
      if (this.#closed) return;
      const entry: TriggerConsumer = { name, messages: undefined, stopped: false, done: Promise.resolve() };
      this.#consumers.set(`${cronKey}#${name}`, entry);
      entry.done = this.#consume(entry, name, t.types, t.ordered, w).catch((err: unknown) => {
        if (!this.#closed) this.#log(`workflows: trigger ${name}: ${describeError(err)}`, "warn");
      });
    }
  }

  // The last run started for a key (`order.<tenant>.<workflow>.<key>` in flex_workflows),
  // swapped by compare-and-set; a redelivered event finds its own run there and keeps its place.
  async #chain(tenant: string, workflow: string, key: string, runId: string): Promise<string | undefined> {
    const k = orderKey(tenant, workflow, key);
    const kv = this.#kv;
    for (let i = 0; ; i++) {
      const e = await kv.get(k);
      const cur = e && e.operation === "PUT" ? e.json<{ runId: string; after?: string }>() : undefined;
      if (cur?.runId === runId) return cur.after;
      const body = encoder.encode(JSON.stringify({ runId, ...(cur ? { after: cur.runId } : {}) }));
      try {
        if (e) await kv.update(k, body, e.revision);
        else await kv.create(k, body);
        return cur?.runId;
      } catch (err) {
        if (i >= 16) throw err;
      }
    }
  }

  async #consume(entry: TriggerConsumer, name: string, types: readonly string[], ordered: boolean, w: StoredWorkflow): Promise<void> {
    const consumer = await this.#js.consumers.get(STREAMS.events, name);
    const messages = await consumer.consume({ max_messages: 64 });
    entry.messages = messages;
    // Stopped (close, or a new version) while the consumer was being set up: nobody else
    // will stop it, and close() waits for this loop to end.
    if (entry.stopped || this.#closed) messages.stop();
    for await (const m of messages) {
      try {
        await this.#startFrom({ subject: m.subject, seq: m.seq, headers: m.headers, data: m.data, storedAt: m.info.timestampNanos / 1e6, attempts: m.info.deliveryCount }, w, types, ordered);
        m.ack();
      } catch (err) {
        if (this.#closed) return;
        this.#log(`workflows: trigger ${name} at seq ${m.seq} (delivery ${m.info.deliveryCount}): ${describeError(err)}`, "warn");
        // A start that can never succeed (no such workflow any more, a name or input that does
        // not fit) is dead-lettered at once; anything else (the server) is tried again, with
        // growing pauses, until the retry budget is spent.
        const permanent = err instanceof FlexError && PERMANENT_START_ERRORS.has(err.code);
        if (!permanent && m.info.deliveryCount < TRIGGER_MAX_DELIVER) {
          m.nak(Math.min(TRIGGER_NAK_MS * 2 ** (m.info.deliveryCount - 1), TRIGGER_MAX_NAK_MS));
          continue;
        }
        try {
          await this.#deadLetter({ subject: m.subject, seq: m.seq, headers: m.headers, data: m.data, storedAt: 0, attempts: m.info.deliveryCount }, w, err);
          m.term();
        } catch (dlqErr) {
          // Not stored in FLEX_DLQ: the event stays with the consumer (redelivered after ack_wait).
          this.#log(`workflows: trigger ${name} at seq ${m.seq}: dead letter not stored: ${describeError(dlqErr)}`, "error");
          m.nak(TRIGGER_MAX_NAK_MS);
        }
      }
    }
  }

  // Starts the run of one trigger event (an event FlexCore writes itself, or of a type the
  // trigger does not take, starts nothing). The run id is the event's sequence: a redelivery
  // or a redrive of the same event starts no second run.
  async #startFrom(m: TriggerEvent, w: StoredWorkflow, types: readonly string[], ordered: boolean): Promise<void> {
    const e = decodeEvent({ subject: m.subject, seq: m.seq, headers: m.headers, data: m.data, storedAt: m.storedAt });
    const parsed = parseSubject(m.subject);
    if (parsed.kind !== "event" || parsed.category === WORKFLOW_CATEGORY || (types.length > 0 && !types.includes(e.type))) return;
    const trigger: TriggerInfo = { kind: "event", subject: e.subject, type: e.type, id: e.id, seq: e.seq, key: parsed.id, time: e.time, data: e.data };
    const runId = `${w.name}-e${m.seq}`;
    const after = ordered ? await this.#chain(w.tenant, w.name, parsed.id, runId) : undefined;
    await this.#host.start(w.tenant, w.name, { runId, input: e.data, trigger, causationId: e.id, ...(after ? { after } : {}) });
  }

  /**
   * Reads the workflow's redriven dead letters (`redrive.<tenant>.workflow-<name>` in
   * `FLEX_REDRIVE`, one durable consumer shared by all runners) and tries each event again
   * with the version installed now: the event is read back from `FLEX_EVENTS` by its sequence.
   */
  async #readRedrives(key: string, prefix: string, w: StoredWorkflow): Promise<void> {
    const name = `${prefix}_redrive`;
    const filter = redriveSubject(w.tenant, `${WORKFLOW_CATEGORY}-${w.name}`);
    try {
      await this.#jsm.consumers.add(STREAMS.redrive, { durable_name: name, filter_subject: filter, deliver_policy: DeliverPolicy.All, ack_policy: AckPolicy.Explicit, ack_wait: TRIGGER_ACK_WAIT_NS, max_deliver: -1, max_ack_pending: 1 })
        .catch(async (err: unknown) => {
          await this.#jsm.consumers.info(STREAMS.redrive, name).catch(() => {
            throw err;
          });
        });
    } catch (err) {
      // A deployment whose topology predates FLEX_REDRIVE still runs its triggers.
      this.#log(`workflows: no redrive consumer for ${w.tenant}/${w.name} (${describeError(err)}); run flexcore up to create ${STREAMS.redrive}`, "warn");
      return;
    }
    const entry = { messages: undefined as ConsumerMessages | undefined, done: Promise.resolve() };
    this.#redrives.set(key, entry);
    entry.done = (async () => {
      const consumer = await this.#js.consumers.get(STREAMS.redrive, name);
      const messages = await consumer.consume({ max_messages: 1 });
      entry.messages = messages;
      if (this.#closed) messages.stop();
      for await (const m of messages) await this.#redriveOne(key, m);
    })().catch((err: unknown) => {
      if (!this.#closed) this.#log(`workflows: redrives of ${w.tenant}/${w.name}: ${describeError(err)}`, "warn");
    });
  }

  async #redriveOne(key: string, m: JsMsg): Promise<void> {
    const w = this.#installed.get(key)!;
    const h = m.headers;
    const { subject, seq, dlqSeq, reasons } = readRedriveHeaders(h);
    let parsed: ReturnType<typeof parseSubject> | undefined;
    try {
      parsed = parseSubject(subject);
    } catch {
      parsed = undefined;
    }
    // Only FlexCore's service user publishes redrives, but the tenant is still the workflow's.
    if (!parsed || parsed.kind !== "event" || parsed.tenant !== w.tenant || m.subject.split(".")[1] !== w.tenant || !Number.isSafeInteger(seq) || seq < 1) {
      this.#log(`workflows: dropped a malformed redrive on ${m.subject} (original subject ${JSON.stringify(subject)}, sequence ${String(h?.get(REDRIVE_HEADERS.seq))})`, "warn");
      m.term();
      return;
    }
    const origin: RedriveOrigin = { dlqSeq: Number.isSafeInteger(dlqSeq) ? dlqSeq : 0, reasons };
    let event: TriggerEvent | undefined;
    try {
      const stored = await this.#jsm.streams.getMessage(STREAMS.events, { seq });
      if (!stored || stored.subject !== subject) throw new TriggerEventGoneError(subject, seq, `it is no longer in ${STREAMS.events} at that sequence`);
      event = { subject, seq, headers: stored.header, data: stored.data, storedAt: stored.time.getTime(), attempts: m.info.deliveryCount };
      const t = w.definition.triggers.find((x): x is Extract<WorkflowDefinition["triggers"][number], { kind: "event" }> => x.kind === "event" && matchesFilter(x.subject, subject));
      if (!t) throw new TriggerEventGoneError(subject, seq, `no event trigger of ${w.name} v${w.version} takes that subject`);
      await this.#startFrom(event, w, t.types, t.ordered);
      m.ack();
    } catch (err) {
      if (this.#closed) return;
      const permanent = err instanceof FlexError && PERMANENT_START_ERRORS.has(err.code);
      if (!permanent && m.info.deliveryCount < TRIGGER_MAX_DELIVER) {
        m.nak(Math.min(TRIGGER_NAK_MS * 2 ** (m.info.deliveryCount - 1), TRIGGER_MAX_NAK_MS));
        return;
      }
      try {
        await this.#deadLetter(event ?? { subject, seq, headers: undefined, data: m.data, storedAt: 0, attempts: m.info.deliveryCount }, w, err, origin);
        m.term();
      } catch (dlqErr) {
        this.#log(`workflows: redrive of dead letter ${origin.dlqSeq}: dead letter not stored: ${describeError(dlqErr)}`, "error");
        m.nak(TRIGGER_MAX_NAK_MS);
      }
    }
  }

  /**
   * Stores the `TriggerFailed` dead letter of a trigger event at `dlq.<tenant>.workflow-<name>`
   * (once per event: fixed `Nats-Msg-Id`; a redrive that failed again is a new one, `:r<dlq seq>`,
   * carrying the earlier reasons).
   */
  async #deadLetter(m: TriggerEvent, w: StoredWorkflow, err: unknown, redriven?: RedriveOrigin): Promise<void> {
    const source = `${WORKFLOW_CATEGORY}-${w.name}`;
    const subject = dlqSubject(w.tenant, source);
    const code = err instanceof FlexError ? err.code : typeof (err as { code?: unknown })?.code === "string" ? String((err as { code: string }).code) : null;
    const reason = `workflow ${w.tenant}/${w.name} v${w.version}: event ${m.seq} started no run after ${m.attempts} attempt(s)${redriven ? " of its redrive" : ""}: ${describeError(err)}`;
    const id = `${source}:${m.seq}:dlq${redriven ? `:r${redriven.dlqSeq}` : ""}`;
    const h = deadLetterHeaders({ id, type: "TriggerFailed", causationId: m.headers?.get(HEADERS.msgId), sourceSeq: m.seq, sourceSubject: m.subject, reason });
    const body = {
      workflow: w.name,
      version: w.version,
      seq: m.seq,
      subject: m.subject,
      tenant: w.tenant,
      type: m.headers?.get(HEADERS.type) || undefined,
      time: m.headers?.get(HEADERS.time) || undefined,
      attempts: m.attempts,
      error: { code, message: (err as Error)?.message ?? String(err) },
      reason,
      ...(redriven ? { previousReasons: redriven.reasons, redrivenFrom: redriven.dlqSeq } : {}),
      // The event stays in FLEX_EVENTS at `seq`; a large body is not copied (it may be why it failed).
      ...(m.data.length <= DLQ_MAX_DATA_BYTES ? { data: decodeData(m.data) } : { dataOmitted: m.data.length }),
    };
    await this.#js.publish(subject, encoder.encode(JSON.stringify(body)), { headers: h, msgID: id });
    this.#log(`workflows: ${reason}; dead-lettered to ${subject}`, "warn");
  }

  /**
   * Starts what the cron triggers owe since the last tick. A fire missed during a stall or a
   * restart runs late, once: several missed fires of a schedule collapse into its latest
   * one, and a fire older than CRON_CATCH_UP_MS is skipped (logged), as a Kubernetes CronJob
   * with a starting deadline does. Every runner fires; the run id is the fire time, so
   * exactly one RunStarted is stored, even when a restarted runner owes a fire again.
   */
  async cronTick(): Promise<void> {
    if (this.#closed) return;
    const now = this.#now().getTime();
    const checked = this.#cronCheckedUpTo ?? now - CRON_CATCH_UP_MS;
    if (now < checked + 1_000) return;
    this.#cronCheckedUpTo = now;
    const from = new Date(Math.max(checked, now - CRON_CATCH_UP_MS));
    if (checked < from.getTime()) this.#log(`workflows: cron: ${Math.round((from.getTime() - checked) / 60_000)} min not checked (a stall); fires older than ${CRON_CATCH_UP_MS / 60_000} min are skipped`, "warn");
    for (const c of this.#crons.values()) {
      for (const schedule of c.schedules) {
        const at = latestFireTime(schedule, new Date(Math.max(from.getTime(), c.since - 1)), new Date(now));
        if (!at) continue;
        const time = at.toISOString();
        const stamp = time.slice(0, 16).replace(/[-:T]/g, "");
        await this.#host.start(c.tenant, c.name, { runId: `${c.name}-c${stamp}`, input: { scheduledAt: time }, trigger: { kind: "cron", schedule: schedule.source, time } })
          .catch((err: unknown) => this.#log(`workflows: cron ${c.tenant}/${c.name}: ${describeError(err)}`, "warn"));
      }
    }
  }

  /** Stops every consumer and waits for the runs they were starting. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const c of this.#consumers.values()) {
      c.stopped = true;
      c.messages?.stop();
    }
    // A redrive reader still being set up stops itself when it sees #closed.
    for (const c of this.#redrives.values()) c.messages?.stop();
    await Promise.allSettled([...this.#consumers.values(), ...this.#redrives.values()].map((c) => c.done));
  }
}

