import { Buffer } from "node:buffer";
import { nuid } from "@nats-io/transport-node";
import type { Msg, MsgHdrs } from "@nats-io/transport-node";
import { InvalidEventError } from "./errors.js";
import { EventHeaders } from "./event-headers.js";

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

const decoder = new TextDecoder();
// Header values go on one line of the NATS protocol.
const BAD_HEADER_VALUE = /[\r\n\u0000]/u;

// The field's name (`path` + `name`, e.g. `events[2].type`) is built only for an error: a
// batch of 1,000 events otherwise concatenated 7,000 names nobody read.
function headerValue(path: string, name: string, value: unknown, required: boolean): string | undefined {
  if (value === undefined && !required) return undefined;
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_HEADER_VALUE || BAD_HEADER_VALUE.test(value)) {
    throw new InvalidEventError(path + name, value, `a non-empty string of at most ${MAX_HEADER_VALUE} characters without line breaks`);
  }
  return value;
}

// "Now" as RFC 3339, kept for the millisecond it names: a batch of events stamped in the same
// millisecond formats the date once (Date#toISOString was ~2% of a publish's client CPU).
let nowMs = -1;
let nowIso = "";

function timeValue(path: string, value: Date | string | undefined): string {
  if (value === undefined) {
    const ms = Date.now();
    if (ms !== nowMs) {
      nowIso = new Date(ms).toISOString();
      nowMs = ms;
    }
    return nowIso;
  }
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) throw new InvalidEventError(`${path}time`, value, "a Date or an RFC 3339 timestamp");
  return date.toISOString();
}

/** Encodes the JSON body of an event. @throws InvalidEventError when `data` is not JSON-serialisable. */
export function encodeData(data: unknown, field = "data"): Uint8Array {
  return encodeDataAt(data, "", field);
}

function encodeDataAt(data: unknown, path: string, name: string): Uint8Array {
  let json: string | undefined;
  try {
    json = JSON.stringify(data);
  } catch (err) {
    throw new InvalidEventError(path + name, data, "JSON-serialisable data", { cause: err });
  }
  if (json === undefined) throw new InvalidEventError(path + name, data, "JSON-serialisable data");
  // Buffer.from carves small strings out of Node's shared 8 KB pool: ~4x faster than
  // TextEncoder#encode (which allocates an ArrayBuffer per call) for event-sized bodies, and
  // less garbage. A Buffer is a Uint8Array; the NATS client copies it into its outbound buffer.
  return Buffer.from(json, "utf8");
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
  const id = headerValue(path, "id", event.id ?? nuid.next(), true)!;
  const type = headerValue(path, "type", event.type, true)!;
  const time = timeValue(path, event.time);
  const correlation = headerValue(path, "correlationId", event.correlationId, false) ?? id;
  const causation = headerValue(path, "causationId", event.causationId, false);
  const schema = headerValue(path, "schema", event.schema === undefined ? DEFAULT_SCHEMA : String(event.schema), true)!;
  // The values were checked above and the names are canonical constants.
  const h = new EventHeaders();
  h.appendChecked(HEADERS.msgId, id);
  h.appendChecked(HEADERS.type, type);
  h.appendChecked(HEADERS.time, time);
  h.appendChecked(HEADERS.correlationId, correlation);
  if (causation) h.appendChecked(HEADERS.causationId, causation);
  h.appendChecked(HEADERS.schema, schema);
  h.appendChecked(HEADERS.contentType, "application/json");
  return { id, headers: h, data: encodeDataAt(event.data, path, "data") };
}

/**
 * UTF-8 text of `bytes[start, end)`. A Buffer (what the NATS transport reads into) is
 * decoded in place: a subarray of a Buffer plus TextDecoder costs 1.6× as much.
 */
export function utf8(bytes: Uint8Array, start = 0, end = bytes.length): string {
  if (bytes instanceof Buffer) return bytes.toString("utf8", start, end);
  return decoder.decode(start === 0 && end === bytes.length ? bytes : bytes.subarray(start, end));
}

/** Parses the JSON body of a stored event (`data` from `start`); data that is not JSON is returned as text. */
export function decodeData(data: Uint8Array, start = 0): unknown {
  if (data.length <= start) return null;
  const text = utf8(data, start);
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

interface HeaderFields {
  id?: string;
  type?: string;
  time?: string;
  correlationId?: string;
  causationId?: string;
  schema?: string;
  revision?: string;
}

function assign(fields: HeaderFields, key: string, value: string): void {
  // The canonical spelling (what nats.js writes) first: no lower-cased copy per header.
  switch (key) {
    case HEADERS.msgId: fields.id = value; return;
    case HEADERS.type: fields.type = value; return;
    case HEADERS.time: fields.time = value; return;
    case HEADERS.correlationId: fields.correlationId = value; return;
    case HEADERS.causationId: fields.causationId = value; return;
    case HEADERS.schema: fields.schema = value; return;
    case HEADERS.revision: fields.revision = value; return;
    case HEADERS.contentType: return;
    default: break;
  }
  switch (key.toLowerCase()) {
    case "nats-msg-id": fields.id = value; break;
    case "flex-type": fields.type = value; break;
    case "flex-time": fields.time = value; break;
    case "flex-correlation-id": fields.correlationId = value; break;
    case "flex-causation-id": fields.causationId = value; break;
    case "flex-schema": fields.schema = value; break;
    case "flex-revision": fields.revision = value; break;
    default: break;
  }
}

/** Reads FlexCore's fields from decoded headers in one pass (MsgHdrs.get() scans all keys on every call). */
export function headerFields(h: MsgHdrs | undefined): HeaderFields {
  const fields: HeaderFields = {};
  if (h) for (const [key, values] of h) if (values[0]) assign(fields, key, values[0]);
  return fields;
}

/**
 * Reads FlexCore's fields straight from a header block (`NATS/1.0\r\nKey: value\r\n...`),
 * skipping the generic MsgHdrs decoding, which dominates replay time otherwise.
 */
export function headerFieldsFromBlock(block: Uint8Array, from = 0, to = block.length): HeaderFields {
  return headerFieldsFromText(utf8(block, from, to));
}

function headerFieldsFromText(text: string): HeaderFields {
  const fields: HeaderFields = {};
  let start = text.indexOf("\r\n") + 2;
  while (start > 1 && start < text.length) {
    let end = text.indexOf("\r\n", start);
    if (end < 0) end = text.length;
    const colon = text.indexOf(":", start);
    if (colon > start && colon < end) {
      const value = lineValue(text, colon, end);
      if (value && !assignCanonical(fields, text, start, colon - start, value)) assign(fields, text.slice(start, colon), value);
    }
    start = end + 2;
  }
  return fields;
}

// The value of the header line whose colon is at `colon`; what nats.js writes,
// `Name: value`, needs no trim.
function lineValue(text: string, colon: number, end: number): string {
  return text.charCodeAt(colon + 1) === 32 && text.charCodeAt(colon + 2) > 32 && text.charCodeAt(end - 1) > 32 ? text.slice(colon + 2, end) : text.slice(colon + 1, end).trim();
}

const TYPE_LINE = `\r\n${HEADERS.type}:`;
const TIME_LINE = `\r\n${HEADERS.time}:`;

// The value of the first header line starting with `line` (`\r\nName:`), or undefined
// when there is none or it is empty.
function canonicalValue(text: string, line: string): string | undefined {
  const at = text.indexOf(line);
  if (at < 0) return undefined;
  const colon = at + line.length - 1;
  let end = text.indexOf("\r\n", colon);
  if (end < 0) end = text.length;
  return lineValue(text, colon, end) || undefined;
}

// The canonical names, matched in place (no slice per header name); false when the
// name is spelt some other way.
function assignCanonical(fields: HeaderFields, text: string, start: number, length: number, value: string): boolean {
  switch (length) {
    case 9:
      if (text.startsWith(HEADERS.type, start)) fields.type = value;
      else if (text.startsWith(HEADERS.time, start)) fields.time = value;
      else return false;
      return true;
    case 11:
      if (text.startsWith(HEADERS.msgId, start)) fields.id = value;
      else if (text.startsWith(HEADERS.schema, start)) fields.schema = value;
      else return false;
      return true;
    case 12:
      return text.startsWith(HEADERS.contentType, start);
    case 13:
      if (!text.startsWith(HEADERS.revision, start)) return false;
      fields.revision = value;
      return true;
    case 17:
      if (!text.startsWith(HEADERS.causationId, start)) return false;
      fields.causationId = value;
      return true;
    case 19:
      if (!text.startsWith(HEADERS.correlationId, start)) return false;
      fields.correlationId = value;
      return true;
    default:
      return false;
  }
}

/** Builds a {@link StoredEvent} from a message's parts and its header fields. */
export function toStoredEvent<T = unknown>(subject: string, seq: number, data: Uint8Array, storedAt: number, f: HeaderFields, revision?: number): StoredEvent<T> {
  return {
    id: f.id ?? `seq-${seq}`,
    type: f.type ?? "unknown",
    data: decodeData(data) as T,
    time: f.time ?? new Date(storedAt).toISOString(),
    correlationId: f.correlationId,
    causationId: f.causationId,
    schema: f.schema ?? DEFAULT_SCHEMA,
    subject,
    seq,
    revision: revision ?? (f.revision === undefined ? undefined : Number(f.revision)),
    storedAt,
  };
}

/**
 * A {@link StoredEvent} whose JSON data is parsed on first access, for readers that often
 * skip it (a projection that only counts events). Built from a header block, it reads
 * `type` and `time` at once (by their canonical names; any other spelling parses the
 * whole block) and the other header fields on first access: a projection reads `type`
 * and `time` of every event, rarely its ids. Serialises like a plain event; note that
 * object spread copies none of the fields read on access (they are getters).
 */
class LazyStoredEvent implements StoredEvent {
  readonly type: string;
  readonly time: string;
  readonly subject: string;
  readonly seq: number;
  readonly storedAt: number;
  /** The header fields, or the header block's text until they are first needed. */
  #fields: HeaderFields | string;
  #raw: Uint8Array | undefined;
  #start: number;
  #data: unknown;

  constructor(subject: string, seq: number, raw: Uint8Array, storedAt: number, headers: HeaderFields | string, start: number) {
    // The same defaults as toStoredEvent, without building a throwaway event.
    let type: string | undefined;
    let time: string | undefined;
    if (typeof headers === "string") {
      type = canonicalValue(headers, TYPE_LINE);
      time = canonicalValue(headers, TIME_LINE);
      if (type === undefined || time === undefined) headers = headerFieldsFromText(headers);
    }
    if (typeof headers !== "string") {
      type = headers.type;
      time = headers.time;
    }
    this.type = type ?? "unknown";
    this.time = time ?? new Date(storedAt).toISOString();
    this.subject = subject;
    this.seq = seq;
    this.storedAt = storedAt;
    this.#fields = headers;
    this.#raw = raw;
    this.#start = start;
  }

  #headerFields(): HeaderFields {
    if (typeof this.#fields === "string") this.#fields = headerFieldsFromText(this.#fields);
    return this.#fields;
  }

  get id(): string {
    return this.#headerFields().id ?? `seq-${this.seq}`;
  }

  get correlationId(): string | undefined {
    return this.#headerFields().correlationId;
  }

  get causationId(): string | undefined {
    return this.#headerFields().causationId;
  }

  get schema(): string {
    return this.#headerFields().schema ?? DEFAULT_SCHEMA;
  }

  get revision(): number | undefined {
    const r = this.#headerFields().revision;
    return r === undefined ? undefined : Number(r);
  }

  get data(): unknown {
    if (this.#raw !== undefined) {
      this.#data = decodeData(this.#raw, this.#start);
      this.#raw = undefined;
    }
    return this.#data;
  }

  toJSON(): StoredEvent {
    return { id: this.id, type: this.type, data: this.data, time: this.time, correlationId: this.correlationId, causationId: this.causationId, schema: this.schema, subject: this.subject, seq: this.seq, revision: this.revision, storedAt: this.storedAt };
  }
}

/**
 * Like {@link toStoredEvent}, with `data` parsed only when first read; the JSON body is
 * `data` from `dataStart` (a received message's bytes need no subarray). `headers` are
 * the header fields, or the text of the header block (see LazyStoredEvent).
 */
export function toLazyStoredEvent(subject: string, seq: number, data: Uint8Array, storedAt: number, headers: HeaderFields | string, dataStart = 0): StoredEvent {
  return new LazyStoredEvent(subject, seq, data, storedAt, headers, dataStart);
}

/**
 * What nats.js keeps of a received message. Read directly when it has the expected shape
 * (checked on every call; otherwise the public getters are used): the subject, header
 * block and body are then decoded from the received bytes, with no copies or subarrays.
 */
export interface CoreMsgInternals {
  readonly _msg?: { readonly hdr?: number; readonly reply?: Uint8Array; readonly subject?: Uint8Array };
  readonly _rdata?: Uint8Array;
}

/**
 * Turns a received JetStream message into an event, given its stream sequence and stored
 * time (from its reply subject). With `lazyData`, the JSON body is parsed on first read.
 */
export function eventFromMsg(msg: Msg, seq: number, storedAt: number, lazyData: boolean): StoredEvent {
  const core = msg as unknown as CoreMsgInternals;
  const hdr = core._msg?.hdr;
  const raw = core._rdata;
  if (typeof hdr === "number" && hdr > 0 && raw instanceof Uint8Array && hdr <= raw.length) {
    const subjectBytes = core._msg?.subject;
    const subject = subjectBytes instanceof Uint8Array ? utf8(subjectBytes) : msg.subject;
    return lazyData ? toLazyStoredEvent(subject, seq, raw, storedAt, utf8(raw, 0, hdr), hdr) : toStoredEvent(subject, seq, raw.subarray(hdr), storedAt, headerFieldsFromBlock(raw, 0, hdr));
  }
  const fields = headerFields(msg.headers);
  return lazyData ? toLazyStoredEvent(msg.subject, seq, msg.data, storedAt, fields) : toStoredEvent(msg.subject, seq, msg.data, storedAt, fields);
}

/** Turns a stored message into a {@link StoredEvent}; messages published without FlexCore headers get defaults. */
export function decodeEvent<T = unknown>(msg: RawMessage, revision?: number): StoredEvent<T> {
  return toStoredEvent<T>(msg.subject, msg.seq, msg.data, msg.storedAt, headerFields(msg.headers), revision);
}
