import { headers as natsHeaders, nuid } from "@nats-io/transport-node";
import type { MsgHdrs } from "@nats-io/transport-node";
import { InvalidEventError } from "./errors.js";

/** Header names every stored event carries (DESIGN.md). */
export const HEADERS = {
  msgId: "Nats-Msg-Id",
  type: "Flex-Type",
  time: "Flex-Time",
  correlationId: "Flex-Correlation-Id",
  causationId: "Flex-Causation-Id",
  schema: "Flex-Schema",
  /** The aggregate's revision after this event (1-based); written by the event store. */
  revision: "Flex-Revision",
  contentType: "Content-Type",
} as const;

/** Schema version written when an event does not name one. */
export const DEFAULT_SCHEMA = "1";
/** Longest event id / type / correlation id FlexCore accepts, in characters. */
export const MAX_HEADER_VALUE = 256;

/** An event to append or publish. */
export interface EventInput<T = unknown> {
  /** Event type, e.g. `ReadingRecorded`. Required. */
  readonly type: string;
  /** The event's JSON data. */
  readonly data: T;
  /** Event id; becomes `Nats-Msg-Id`, so a retry with the same id is stored once. @default a new NUID */
  readonly id?: string;
  /** @default the event id */
  readonly correlationId?: string;
  readonly causationId?: string;
  /** Schema version of `data`. @default "1" */
  readonly schema?: string | number;
  /** When the event happened. @default now */
  readonly time?: Date | string;
}

/** An event as stored in a JetStream stream, with its metadata. */
export interface StoredEvent<T = unknown> {
  readonly id: string;
  readonly type: string;
  readonly data: T;
  /** `Flex-Time`: when the event happened (RFC 3339). */
  readonly time: string;
  readonly correlationId: string | undefined;
  readonly causationId: string | undefined;
  readonly schema: string;
  readonly subject: string;
  /** Stream sequence. */
  readonly seq: number;
  /** Position within the aggregate (1-based) when known. */
  readonly revision: number | undefined;
  /** When JetStream stored it, in ms since the epoch. */
  readonly storedAt: number;
}

/** An event encoded for the wire. */
export interface EncodedEvent {
  readonly id: string;
  readonly headers: MsgHdrs;
  readonly data: Uint8Array;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
// Header values go on one line of the NATS protocol.
const BAD_HEADER_VALUE = /[\r\n\u0000]/u;

function headerValue(field: string, value: unknown, required: boolean): string | undefined {
  if (value === undefined && !required) return undefined;
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_HEADER_VALUE || BAD_HEADER_VALUE.test(value)) {
    throw new InvalidEventError(field, value, `a non-empty string of at most ${MAX_HEADER_VALUE} characters without line breaks`);
  }
  return value;
}

function timeValue(field: string, value: Date | string | undefined): string {
  if (value === undefined) return new Date().toISOString();
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) throw new InvalidEventError(field, value, "a Date or an RFC 3339 timestamp");
  return date.toISOString();
}

/** Encodes the JSON body of an event. @throws InvalidEventError when `data` is not JSON-serialisable. */
export function encodeData(data: unknown, field = "data"): Uint8Array {
  let json: string | undefined;
  try {
    json = JSON.stringify(data);
  } catch (err) {
    throw new InvalidEventError(field, data, "JSON-serialisable data", { cause: err });
  }
  if (json === undefined) throw new InvalidEventError(field, data, "JSON-serialisable data");
  return encoder.encode(json);
}

/**
 * Validates an event and builds its headers and body.
 * @param path prefix of field names in errors, e.g. `events[2].`
 * @throws InvalidEventError naming the field
 */
export function encodeEvent(event: EventInput, path = ""): EncodedEvent {
  if (event === null || typeof event !== "object" || Array.isArray(event)) {
    throw new InvalidEventError(path ? path.replace(/\.$/, "") : "event", event, "an object with `type` and `data`");
  }
  const id = headerValue(`${path}id`, event.id ?? nuid.next(), true)!;
  const h = natsHeaders();
  h.set(HEADERS.msgId, id);
  h.set(HEADERS.type, headerValue(`${path}type`, event.type, true)!);
  h.set(HEADERS.time, timeValue(`${path}time`, event.time));
  h.set(HEADERS.correlationId, headerValue(`${path}correlationId`, event.correlationId, false) ?? id);
  const causation = headerValue(`${path}causationId`, event.causationId, false);
  if (causation) h.set(HEADERS.causationId, causation);
  h.set(HEADERS.schema, headerValue(`${path}schema`, event.schema === undefined ? DEFAULT_SCHEMA : String(event.schema), true)!);
  h.set(HEADERS.contentType, "application/json");
  return { id, headers: h, data: encodeData(event.data, `${path}data`) };
}

/** Parses the JSON body of a stored event; data that is not JSON is returned as text. */
export function decodeData(data: Uint8Array): unknown {
  if (data.length === 0) return null;
  const text = decoder.decode(data);
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** The parts of a JetStream message an event is read from. */
export interface RawMessage {
  readonly subject: string;
  readonly seq: number;
  readonly headers: MsgHdrs | undefined;
  readonly data: Uint8Array;
  /** Stored time in ms since the epoch. */
  readonly storedAt: number;
}

/** Turns a stored message into a {@link StoredEvent}; messages published without FlexCore headers get defaults. */
export function decodeEvent<T = unknown>(msg: RawMessage, revision?: number): StoredEvent<T> {
  const h = msg.headers;
  const get = (k: string): string | undefined => {
    const v = h?.get(k);
    return v ? v : undefined;
  };
  const rev = get(HEADERS.revision);
  return {
    id: get(HEADERS.msgId) ?? `seq-${msg.seq}`,
    type: get(HEADERS.type) ?? "unknown",
    data: decodeData(msg.data) as T,
    time: get(HEADERS.time) ?? new Date(msg.storedAt).toISOString(),
    correlationId: get(HEADERS.correlationId),
    causationId: get(HEADERS.causationId),
    schema: get(HEADERS.schema) ?? DEFAULT_SCHEMA,
    subject: msg.subject,
    seq: msg.seq,
    revision: revision ?? (rev === undefined ? undefined : Number(rev)),
    storedAt: msg.storedAt,
  };
}
