/**
 * What the runtime holds per delivered message and per key, and how a delivery is decoded:
 * shared by fetching, batching and recovery.
 */
import type { JsMsg } from "@nats-io/jetstream";
import type { MsgHdrs } from "@nats-io/transport-node";
import { headerFieldsFromBlock, snapshotKey } from "../streams/index.js";

export interface Entry {
  readonly m: JsMsg;
  /** Committed (or skipped): the low-water mark may pass it. */
  done: boolean;
  readonly seq: number;
  readonly subject: string;
  readonly tenant: string;
  readonly key: string;
  readonly stateKey: string;
  /** The message as received: header block then body (`raw.subarray(hdr)` is the body). */
  readonly raw: Uint8Array;
  readonly hdr: number;
  /** When the stream stored it, in ms since the epoch. */
  readonly storedAt: number;
  readonly partition: number;
  readonly receivedAt: number;
  /** Header fields, decoded on demand (outputs and dead letters need them, scoring does not). */
  meta: EntryMeta | undefined;
  /** Set on a dead letter sent back by `flexcore dlq redrive`: where it came from, why it failed so far. */
  readonly redrive?: { readonly dlqSeq: number; readonly reasons: readonly string[] };
}

export interface EntryMeta {
  readonly type: string;
  readonly time: string;
  /** `Nats-Msg-Id` of the source (`seq-<n>` without one) and its correlation id. */
  readonly sourceId: string;
  readonly correlationId: string;
}

// The raw message of nats.js (header block and body in one buffer), when its internals have
// the expected shape; otherwise the public headers are encoded again.
interface CoreMsgInternals {
  readonly _msg?: { readonly hdr?: number };
  readonly _rdata?: Uint8Array;
}

export function rawOf(m: JsMsg): { raw: Uint8Array; hdr: number } {
  const core = (m as unknown as { msg?: CoreMsgInternals }).msg;
  const hdr = core?._msg?.hdr;
  const rdata = core?._rdata;
  if (rdata instanceof Uint8Array) {
    if (typeof hdr === "number" && hdr > 0 && hdr <= rdata.length) return { raw: rdata, hdr };
    if (hdr === -1 || hdr === 0) return { raw: rdata, hdr: 0 };
  }
  const block = (m.headers as unknown as { encode?: () => Uint8Array } | undefined)?.encode?.() ?? new Uint8Array(0);
  const raw = new Uint8Array(block.length + m.data.length);
  raw.set(block, 0);
  raw.set(m.data, block.length);
  return { raw, hdr: block.length };
}

const LINE_BREAK = /[\r\n]/u;

// A header line ends at CRLF only, so a raw client can store a value holding a bare CR or LF
// (nats.js refuses to write one, nats-server stores it). Copied into a derived event's or a
// dead letter's headers it would start a forged header line: such a value counts as absent.
function oneLine(value: string | undefined): string | undefined {
  return value === undefined || LINE_BREAK.test(value) ? undefined : value;
}

/**
 * The header fields outputs and dead letters carry on, read once per entry. Values carried
 * into headers (time, ids) are single lines; a source without them, or with a value that is
 * not, gets the defaults: its stored time, `seq-<n>` as its id, its id as correlation id.
 */
export function metaOf(e: Entry): EntryMeta {
  if (!e.meta) {
    // One pass over the header block the entry already holds (the same fields and defaults
    // as eventFromJsMsg, without building an event).
    const f = headerFieldsFromBlock(e.raw, 0, e.hdr);
    const sourceId = oneLine(f.id) ?? `seq-${e.m.info.streamSequence}`;
    e.meta = { type: f.type || "unknown", time: oneLine(f.time) ?? new Date(e.storedAt).toISOString(), sourceId, correlationId: oneLine(f.correlationId) || sourceId };
  }
  return e.meta;
}

/** What the runtime keeps per key: parsed once from the first subject seen, not per event. */
export interface KeyInfo {
  readonly tenant: string;
  readonly key: string;
  readonly stateKey: string;
  readonly partition: number;
  /** Events of the key fetched and not yet acknowledged; a key at 0 may be evicted. */
  pending: number;
}

export interface KeyState {
  json: string | null;
  seq: number;
  /**
   * `FLEX_DLQ` sequences of the redriven dead letters this state already took (the newest
   * {@link MAX_REDRIVEN_IDS}), so a redelivered redrive is not applied twice.
   */
  redriven?: readonly number[];
}

/** Redriven dead-letter ids kept per key state (the newest; a redelivery comes soon after the first delivery). */
export const MAX_REDRIVEN_IDS = 64;

export interface PendingOutput {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs;
}

export interface Outcome {
  readonly entries: readonly Entry[];
  readonly outputs: readonly PendingOutput[];
  readonly dlq: readonly PendingOutput[];
  readonly checkpoints: ReadonlyMap<string, Readonly<KeyState>>;
  readonly failedAttempts: number;
}

/** A key's state as held in memory: its JSON and the source sequence it reflects. */
export type Checkpoints = Map<string, KeyState>;

/** 32-bit FNV-1a of a string's UTF-16 code units (the lane of a key). */
export function fnv(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** The `flex_state` key of a processor's state for one key. */
export function stateKvKey(processor: string, tenant: string, key: string): string {
  return snapshotKey(`${tenant}.${key}`, processor);
}

/** Counters since the runner's processor started on this instance (carried over restarts). */
export interface RunnerTotals {
  processed: number;
  outputs: number;
  errors: number;
  deadLettered: number;
  redelivered: number;
}
