/**
 * Takes back a projection's redriven dead letters (`reapply.<tenant>.projection_<name>` in
 * `FLEX_REAPPLY`, see docs/dlq.md) and applies each where this copy failed it, as a late
 * event.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import type { StoredMsg } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { HEADERS, parseSubject, readRedriveHeaders, REDRIVE_HEADERS, STREAMS, SUBJECT_ROOTS } from "../streams/index.js";
import type { StoredEvent } from "../streams/index.js";
import { dlqSource } from "./dead-letter.js";
import type { RedrivenFrom } from "./dead-letter.js";
import type { Member, Reapply } from "./member.js";
import type { SourceStream } from "./projection.js";
import type { ProjectionRunner } from "./runner.js";

/** Wait before reading `FLEX_REAPPLY` again after a failure, in ms. */
const RETRY_MS = 1_000;
/** How often an engine looks for new redrives when it has taken them all, in ms. */
export const REAPPLY_POLL_MS = 500;
const POLL_MS = REAPPLY_POLL_MS;

/** What the reapplier needs of the engine. */
export interface ReapplyHost {
  readonly nc: NatsConnection;
  /** The served member of a projection, if this engine runs it. */
  member(name: string): Member | undefined;
  /** Every served member (the read starts at the lowest position among them). */
  members(): readonly Member[];
  readonly live: ProjectionRunner;
  deadLetter(member: Member, stream: SourceStream, event: StoredEvent, error: unknown, redriven: RedrivenFrom): Promise<void>;
  /** Told after an event was applied (waiters, change listeners). */
  applied(member: Member, stream: SourceStream, tenant: string): void;
  log(line: string, level?: "warn" | "error"): void;
}

const PREFIX = "projection_";

/** Reads `FLEX_REAPPLY` with an ordered consumer (no acks: each database stores its own position). */
export class Reapplier {
  readonly #host: ReapplyHost;
  #nap = new AbortController();
  #closed = false;
  #again = false;
  #failing = false;
  #running: Promise<void> | undefined;

  constructor(host: ReapplyHost) {
    this.#host = host;
  }

  start(): void {
    this.#running = this.#loop();
  }

  /** Reads again from the lowest position (a rebuilt copy replaced a served one). */
  restart(): void {
    this.#again = true;
    this.#nap.abort();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#nap.abort();
    await this.#running;
  }

  // One direct get per message (`next_by_subj` skips gaps): no subscription to tear down, so
  // a restart or a close never waits on an idle one; an empty stream is polled.
  async #loop(): Promise<void> {
    const jsm = await jetstreamManager(this.#host.nc).catch(() => undefined);
    let next = 0;
    while (!this.#closed) {
      if (this.#again || next === 0) {
        this.#again = false;
        const members = this.#host.members();
        next = (members.length === 0 ? 0 : Math.min(...members.map((m) => m.reapplied))) + 1;
      }
      let m: StoredMsg | null;
      let wait = POLL_MS;
      try {
        if (!jsm) throw new Error("no JetStream manager");
        m = await jsm.direct.getMessage(STREAMS.reapply, { seq: next, next_by_subj: `${SUBJECT_ROOTS.reapply}.>` });
      } catch (err) {
        if (this.#closed) break;
        if (!/no message found|message not found/iu.test(String((err as Error).message))) {
          // Logged once per run of failures (a topology without FLEX_REAPPLY fails every time).
          if (!this.#failing) this.#host.log(`flexcore: projections: reading ${STREAMS.reapply} failed (${(err as Error).message}); trying every ${RETRY_MS} ms (flexcore up creates the stream)`, "warn");
          this.#failing = true;
          wait = RETRY_MS;
        }
        m = null;
      }
      if (m !== null) this.#failing = false;
      if (m === null) {
        await this.#sleep(wait);
        continue;
      }
      if (this.#closed || this.#again) continue;
      try {
        await this.#take(m);
        next = m.seq + 1;
      } catch (err) {
        // The DLQ or the database could not be written: the message is tried again.
        this.#host.log(`flexcore: projections: taking redrive ${m.seq} failed (${(err as Error).message}); trying again in ${RETRY_MS} ms`, "warn");
        await this.#sleep(RETRY_MS);
      }
    }
  }

  async #sleep(ms: number): Promise<void> {
    const nap = this.#nap;
    await sleep(ms, undefined, { signal: nap.signal }).catch(() => undefined);
    if (nap.signal.aborted && !this.#closed) this.#nap = new AbortController();
  }

  async #take(m: StoredMsg): Promise<void> {
    const [, tenant, source] = m.subject.split(".");
    if (!source?.startsWith(PREFIX)) return;
    const member = this.#host.member(source.slice(PREFIX.length));
    if (!member || m.seq <= member.reapplied || member.stopped) return;
    const h = m.header;
    const { subject, stream, seq, dlqSeq, reasons } = readRedriveHeaders(h);
    let parsed: ReturnType<typeof parseSubject> | undefined;
    try {
      parsed = parseSubject(subject);
    } catch {
      parsed = undefined;
    }
    // Only FlexCore's service user publishes here, but the tenant is still the subject's,
    // and the event must be one this projection reads.
    const ok = parsed !== undefined && parsed.tenant === tenant && (parsed.kind === "event" || parsed.kind === "derived") &&
      member.streams.get(stream as SourceStream)?.matcher(subject) === true && Number.isSafeInteger(seq) && seq > 0 && Number.isSafeInteger(dlqSeq) && dlqSeq > 0 &&
      source === dlqSource(member.name) && m.subject.split(".").length === 3 && m.subject.startsWith(`${SUBJECT_ROOTS.reapply}.`);
    const data = (() => {
      try {
        return JSON.parse(new TextDecoder().decode(m.data)) as unknown;
      } catch {
        return undefined;
      }
    })();
    const event: StoredEvent = {
      id: h?.get(HEADERS.causationId) || `seq-${seq}`,
      type: h?.get(HEADERS.type) ?? "unknown",
      data,
      time: h?.get(HEADERS.time) ?? new Date(m.time.getTime()).toISOString(),
      correlationId: h?.get(HEADERS.correlationId) || undefined,
      causationId: undefined,
      schema: h?.get(HEADERS.schema) || "1",
      subject,
      seq,
      revision: undefined,
      storedAt: m.time.getTime(),
    };
    if (!ok) {
      this.#host.log(`flexcore: projections: ${member.name}: dropped a malformed redrive ${m.seq} on ${m.subject} (original subject ${JSON.stringify(subject)}, stream ${JSON.stringify(stream)}, sequence ${String(h?.get(REDRIVE_HEADERS.seq))})`, "warn");
      member.skipReapply(m.seq);
      return;
    }
    const r: Reapply = { source, dlqSeq, position: m.seq, stream: stream as SourceStream, event };
    // Errors other than `apply`'s (a database closed by a rebuild's swap, the DLQ out of
    // reach) are thrown: the message is read again, from the position of the copy served then.
    const outcome = await this.#host.live.exclusive(async () => {
      await this.#host.live.commitAll(member);
      return member.reapply(r);
    });
    if (typeof outcome === "object") {
      // Failed again: a new dead letter with both reasons, then the record that it was tried.
      await this.#host.deadLetter(member, r.stream, event, outcome.failed, { dlqSeq, reasons });
      member.reapplyFailed(r);
      this.#host.log(`flexcore: projections: ${member.name}: redrive of dead letter ${dlqSeq} failed again; dead-lettered with both reasons`, "warn");
      return;
    }
    // Test-only fault switch: dies right after the transaction committed (crash tests).
    if (process.env.FLEXCORE_TEST_FAULT === "projection-reapply-after-commit") process.kill(process.pid, "SIGKILL");
    if (outcome === "applied") this.#host.applied(member, r.stream, tenant!);
    else this.#host.log(`flexcore: projections: ${member.name}: redrive of dead letter ${dlqSeq} (${stream} ${seq}) not applied: ${outcome === "duplicate" ? "already applied here" : "this copy did not fail it"}`);
  }
}
