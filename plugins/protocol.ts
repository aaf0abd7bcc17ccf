/**
 * FlexCore plugin protocol 1: the constants, the JSON bodies of calls and replies, and the
 * validators the host runs on every reply (shape, types, size). See `docs/plugins.md`
 * ("Protocol"). Shared by the host (`client.ts`) and the TypeScript SDK (`sdk.ts`).
 */
import { Ajv } from "ajv";
import type { ErrorObject, ValidateFunction } from "ajv";
import { describeValue } from "../streams/index.js";
import type { RemoteInput } from "../processors/index.js";

/** The protocol version this host and SDK speak. */
export const PROTOCOL_VERSION = 1;
/** Every protocol version this build speaks (sent in `FLEXCORE_PLUGIN_PROTOCOLS`). */
export const SUPPORTED_PROTOCOLS: readonly number[] = [PROTOCOL_VERSION];
/** A plugin (and its system service) name: lower case, digits, `-`; no `_` (tenant suffix) nor `.`. */
export const PLUGIN_NAME_PATTERN = /^[a-z][a-z0-9-]{1,39}$/u;
/** A capability name (`echo`, `json-transform`): one subject token, and legal in a micro endpoint name. */
export const CAPABILITY_PATTERN = /^[a-z][a-z0-9-]{0,63}$/u;
/** The first token of every endpoint subject. */
export const ENDPOINT_SUBJECT_ROOT = "flexplugin";
/** The services protocol's queue group, shared by every instance of a plugin. */
export const QUEUE_GROUP = "q";
/** Root of the services protocol's control subjects. */
export const SRV_PREFIX = "$SRV";
/** Exit code of a plugin whose protocols do not meet the host's (EX_CONFIG). */
export const EXIT_PROTOCOL_MISMATCH = 78;

/** The kinds of capability a plugin offers. */
export const PLUGIN_KINDS = ["processor", "step", "sink", "source"] as const;
export type PluginKind = (typeof PLUGIN_KINDS)[number];

/** Services protocol verbs and the `type` of their responses. */
export const SRV_VERBS = ["PING", "INFO", "STATS"] as const;
export type SrvVerb = (typeof SRV_VERBS)[number];
export const RESPONSE_TYPES = {
  PING: "io.nats.micro.v1.ping_response",
  INFO: "io.nats.micro.v1.info_response",
  STATS: "io.nats.micro.v1.stats_response",
} as const satisfies Record<SrvVerb, string>;

/** The handshake environment the host gives a managed plugin (no stdout protocol). */
export const ENV = {
  name: "FLEXCORE_PLUGIN_NAME",
  natsUrl: "FLEXCORE_PLUGIN_NATS_URL",
  natsUser: "FLEXCORE_PLUGIN_NATS_USER",
  natsPassword: "FLEXCORE_PLUGIN_NATS_PASSWORD",
  protocols: "FLEXCORE_PLUGIN_PROTOCOLS",
  nonce: "FLEXCORE_PLUGIN_NONCE",
  flexcoreVersion: "FLEXCORE_VERSION",
  concurrency: "FLEXCORE_PLUGIN_CONCURRENCY",
  config: "FLEXCORE_PLUGIN_CONFIG",
} as const;

/** The services protocol's error headers. */
export const HEADERS = {
  error: "Nats-Service-Error",
  errorCode: "Nats-Service-Error-Code",
} as const;

/** INFO metadata keys FlexCore reads. */
export const METADATA = {
  protocol: "flexcore.protocol",
  nonce: "flexcore.nonce",
} as const;

/** Largest reply the host accepts unless told otherwise (the server's default max payload). */
export const DEFAULT_MAX_REPLY_BYTES = 1024 * 1024;

/** `flexplugin.<service>.<kind>.<capability>` */
export function endpointSubject(service: string, kind: PluginKind, capability: string): string {
  return `${ENDPOINT_SUBJECT_ROOT}.${service}.${kind}.${capability}`;
}

/** `<kind>-<capability>`: micro endpoint names may not hold dots. */
export function endpointName(kind: PluginKind, capability: string): string {
  return `${kind}-${capability}`;
}

/** The three subjects a verb answers on: `$SRV.<verb>`, `.<service>`, `.<service>.<id>`. */
export function controlSubjects(verb: SrvVerb, service: string, id: string): string[] {
  return [`${SRV_PREFIX}.${verb}`, `${SRV_PREFIX}.${verb}.${service}`, `${SRV_PREFIX}.${verb}.${service}.${id}`];
}

// --- Call bodies -------------------------------------------------------------------------

/**
 * One event given to a processor: the processor runtime's remote input, sent as is (the
 * runtime, which may not import plugins/, defines it; the wire and the runtime share one type).
 */
export type ProcessorInput = RemoteInput;

/** A batch for a processor kind. State lives in the host: the plugin gets and returns it. */
export interface ProcessorRequest {
  readonly protocol: 1;
  readonly tenant: string;
  readonly kind: string;
  readonly options: unknown;
  /** The state of every key that has inputs in this batch (`null`: none yet). */
  readonly states: Readonly<Record<string, unknown>>;
  readonly inputs: readonly ProcessorInput[];
}

/** One derived event. */
export interface ProcessorOutput {
  /** Index into the request's `inputs` of the event this output derives from. */
  readonly input: number;
  readonly type: string;
  readonly data: unknown;
  /** Output key; defaults to the input's key. */
  readonly key?: string;
}

export interface ProcessorReply {
  /** New state per key; a key left out keeps its state, `null` clears it. Only keys of the request. */
  readonly states: Readonly<Record<string, unknown>>;
  /** Outputs, in the order of their inputs. */
  readonly outputs: readonly ProcessorOutput[];
  /**
   * Inputs the plugin refuses one by one (optional): the host dead-letters each with its
   * reason, as it would a 400 for that input alone, and keeps the rest of the batch. In
   * input order, each index once, and no output may derive from a rejected input.
   */
  readonly rejected?: readonly ProcessorRejection[];
}

/** One input a processor refuses, by index, with a reason for the dead letter. */
export interface ProcessorRejection {
  /** Index into the request's `inputs`. */
  readonly input: number;
  /** Why, for the dead letter (at most 1024 characters). */
  readonly reason: string;
}

export interface StepRequest {
  readonly protocol: 1;
  readonly tenant: string;
  readonly step: string;
  readonly input: unknown;
  readonly run: { readonly id: string; readonly workflow: string; readonly attempt: number };
}

export interface StepReply {
  readonly output: unknown;
}

export interface SinkEvent {
  readonly seq: number;
  readonly id: string;
  readonly subject: string;
  readonly type: string;
  readonly time: string;
  readonly data: unknown;
}

export interface SinkRequest {
  readonly protocol: 1;
  readonly tenant: string;
  readonly sink: string;
  readonly options: unknown;
  readonly events: readonly SinkEvent[];
}

export interface SinkReply {
  /** How many events, from the first, the sink delivered. */
  readonly delivered: number;
}

export interface SourceRequest {
  readonly protocol: 1;
  readonly tenant: string;
  readonly source: string;
  readonly options: unknown;
  /** Where the previous read stopped; `null` to start from the beginning. */
  readonly cursor: string | null;
  /** Most records wanted. */
  readonly max: number;
}

export interface SourceRecord {
  /** Stable id (dedupe); the host derives one from source, cursor and index when absent. */
  readonly id?: string;
  readonly key: string;
  readonly type: string;
  readonly data: unknown;
}

export interface SourceReply {
  readonly records: readonly SourceRecord[];
  readonly cursor: string | null;
}

/** Request and reply types by kind. */
export interface CallTypes {
  processor: { request: ProcessorRequest; reply: ProcessorReply };
  step: { request: StepRequest; reply: StepReply };
  sink: { request: SinkRequest; reply: SinkReply };
  source: { request: SourceRequest; reply: SourceReply };
}

// --- Services protocol responses ---------------------------------------------------------

export interface PingResponse {
  readonly type: typeof RESPONSE_TYPES.PING;
  readonly name: string;
  readonly id: string;
  readonly version: string;
  readonly metadata: Readonly<Record<string, string>>;
}

export interface EndpointInfo {
  readonly name: string;
  readonly subject: string;
  readonly queue_group: string;
  readonly metadata: Readonly<Record<string, string>> | null;
}

export interface InfoResponse {
  readonly type: typeof RESPONSE_TYPES.INFO;
  readonly name: string;
  readonly id: string;
  readonly version: string;
  readonly description: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly endpoints: readonly EndpointInfo[];
}

export interface EndpointStats {
  readonly name: string;
  readonly subject: string;
  readonly queue_group: string;
  readonly num_requests: number;
  readonly num_errors: number;
  /** `""` when there was none. */
  readonly last_error: string;
  /** Total handler time, nanoseconds. */
  readonly processing_time: number;
  /** Nanoseconds. */
  readonly average_processing_time: number;
  readonly data?: unknown;
}

export interface StatsResponse {
  readonly type: typeof RESPONSE_TYPES.STATS;
  readonly name: string;
  readonly id: string;
  readonly version: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** RFC 3339, when the service started. */
  readonly started: string;
  readonly endpoints: readonly EndpointStats[];
}

// --- Validation --------------------------------------------------------------------------

/** One problem found in a body: where, and what was wrong. */
export interface ProtocolIssue {
  /** `outputs[3].input`; `""` for the whole body. */
  readonly path: string;
  /** `expected integer, got "x" (string, 1 bytes)` */
  readonly message: string;
}

/** Result of a validation: the typed value or the first problem. */
export type Checked<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly issue: ProtocolIssue };

const STRING_MAP = { type: "object", additionalProperties: { type: "string" } } as const;
// Keys and ids become subject tokens (`drv.<tenant>.<processor>.<key>`) and types become
// header values (`Flex-Type`): a plugin must not smuggle a `.`, a wildcard or a CR/LF in.
const TOKEN = { type: "string", minLength: 1, maxLength: 128, pattern: "^[^\\s.*>\\u0000-\\u001f\\u007f]+$" } as const;
const EVENT_TYPE = { type: "string", minLength: 1, maxLength: 256, pattern: "^[^\\s\\u0000-\\u001f\\u007f]+$" } as const;
const NAME = { type: "string", minLength: 1 } as const;

const schemas = {
  processor: {
    type: "object",
    required: ["states", "outputs"],
    properties: {
      states: { type: "object" },
      outputs: {
        type: "array",
        items: {
          type: "object",
          required: ["input", "type", "data"],
          properties: {
            input: { type: "integer", minimum: 0 },
            type: EVENT_TYPE,
            data: {},
            key: TOKEN,
          },
          additionalProperties: false,
        },
      },
      rejected: {
        type: "array",
        items: {
          type: "object",
          required: ["input", "reason"],
          properties: { input: { type: "integer", minimum: 0 }, reason: { type: "string", maxLength: 1024 } },
          additionalProperties: false,
        },
      },
    },
    additionalProperties: false,
  },
  step: { type: "object", required: ["output"], properties: { output: {} }, additionalProperties: false },
  sink: { type: "object", required: ["delivered"], properties: { delivered: { type: "integer", minimum: 0 } }, additionalProperties: false },
  source: {
    type: "object",
    required: ["records", "cursor"],
    properties: {
      records: {
        type: "array",
        items: {
          type: "object",
          required: ["key", "type", "data"],
          properties: {
            id: TOKEN,
            key: TOKEN,
            type: EVENT_TYPE,
            data: {},
          },
          additionalProperties: false,
        },
      },
      cursor: { type: ["string", "null"], maxLength: 4096 },
    },
    additionalProperties: false,
  },
  PING: {
    type: "object",
    required: ["type", "name", "id", "version"],
    properties: { type: { const: RESPONSE_TYPES.PING }, name: NAME, id: NAME, version: NAME, metadata: { anyOf: [STRING_MAP, { type: "null" }] } },
  },
  INFO: {
    type: "object",
    required: ["type", "name", "id", "version", "endpoints"],
    properties: {
      type: { const: RESPONSE_TYPES.INFO },
      name: NAME,
      id: NAME,
      version: NAME,
      description: { type: ["string", "null"] },
      metadata: { anyOf: [STRING_MAP, { type: "null" }] },
      endpoints: {
        type: "array",
        items: {
          type: "object",
          required: ["name", "subject"],
          properties: { name: NAME, subject: NAME, queue_group: { type: "string" }, metadata: { anyOf: [STRING_MAP, { type: "null" }] } },
        },
      },
    },
  },
  STATS: {
    type: "object",
    required: ["type", "name", "id", "version", "started", "endpoints"],
    properties: {
      type: { const: RESPONSE_TYPES.STATS },
      name: NAME,
      id: NAME,
      version: NAME,
      started: { type: "string" },
      metadata: { anyOf: [STRING_MAP, { type: "null" }] },
      endpoints: {
        type: "array",
        items: {
          type: "object",
          required: ["name", "subject", "num_requests", "num_errors", "processing_time", "average_processing_time"],
          properties: {
            name: NAME,
            subject: NAME,
            queue_group: { type: "string" },
            num_requests: { type: "integer", minimum: 0 },
            num_errors: { type: "integer", minimum: 0 },
            last_error: { type: ["string", "null"] },
            processing_time: { type: "number", minimum: 0 },
            average_processing_time: { type: "number", minimum: 0 },
          },
        },
      },
    },
  },
} as const;

type SchemaName = keyof typeof schemas;
let compiled: Map<SchemaName, ValidateFunction> | undefined;

function validatorFor(name: SchemaName): ValidateFunction {
  // Compiled on first use, not at import: importing the protocol costs nothing.
  if (!compiled) {
    const ajv = new Ajv({ allErrors: false, verbose: true, strict: true, allowUnionTypes: true });
    compiled = new Map((Object.keys(schemas) as SchemaName[]).map((n) => [n, ajv.compile(schemas[n])]));
  }
  return compiled.get(name)!;
}

/** `/outputs/3/input` → `outputs[3].input` */
export function jsonPointerToPath(pointer: string): string {
  let path = "";
  for (const raw of pointer.split("/").slice(1)) {
    const token = raw.replace(/~1/gu, "/").replace(/~0/gu, "~");
    path += /^\d+$/u.test(token) ? `[${token}]` : path ? `.${token}` : token;
  }
  return path;
}

function issueOf(error: ErrorObject): ProtocolIssue {
  let path = jsonPointerToPath(error.instancePath);
  let expected = error.message ?? "invalid";
  let got: unknown = error.data;
  if (error.keyword === "required") {
    const missing = (error.params as { missingProperty: string }).missingProperty;
    path = path ? `${path}.${missing}` : missing;
    return { path, message: "expected a value, got nothing (required)" };
  }
  if (error.keyword === "additionalProperties") {
    const extra = (error.params as { additionalProperty: string }).additionalProperty;
    path = path ? `${path}.${extra}` : extra;
    return { path, message: "unknown field (protocol 1 does not define it)" };
  }
  if (error.keyword === "pattern") expected = `a string matching /${(error.params as { pattern: string }).pattern}/ (no dots or wildcards in keys and ids, no whitespace or control characters)`;
  if (error.keyword === "const") expected = `must be ${JSON.stringify((error.params as { allowedValue: unknown }).allowedValue)}`;
  expected = expected.replace(/^must (be )?/u, "");
  if (error.keyword === "anyOf") got = error.data;
  return { path, message: `expected ${expected}, got ${describeValue(got)}` };
}

function check<T>(name: SchemaName, value: unknown): Checked<T> {
  const validate = validatorFor(name);
  if (validate(value)) return { ok: true, value: value as T };
  return { ok: false, issue: issueOf(validate.errors![0]!) };
}

/**
 * Parses and checks a reply body of a call: its size (`maxBytes`), JSON syntax, the shape
 * and types of protocol 1, and what the schema cannot say (a processor's outputs point at
 * inputs of the request, its states only name keys of the request; a sink delivers at
 * most what it got; a source returns at most `max` records).
 */
export function parseReply<K extends PluginKind>(kind: K, body: Uint8Array, request: CallTypes[K]["request"], maxBytes: number = DEFAULT_MAX_REPLY_BYTES): Checked<CallTypes[K]["reply"]> {
  if (body.byteLength > maxBytes) return { ok: false, issue: { path: "", message: `expected at most ${maxBytes} bytes, got ${body.byteLength} bytes` } };
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(body));
  } catch (err) {
    return { ok: false, issue: { path: "", message: `expected JSON, got ${(err as Error).message}` } };
  }
  const checked = check<CallTypes[K]["reply"]>(kind, value);
  if (!checked.ok) return checked;
  const more = crossCheck(kind, checked.value, request);
  return more ? { ok: false, issue: more } : checked;
}

function crossCheck(kind: PluginKind, reply: unknown, request: unknown): ProtocolIssue | undefined {
  if (kind === "processor") {
    const req = request as ProcessorRequest;
    const rep = reply as ProcessorReply;
    for (let i = 0; i < rep.outputs.length; i++) {
      const input = rep.outputs[i]!.input;
      if (input >= req.inputs.length) return { path: `outputs[${i}].input`, message: `expected an index below ${req.inputs.length} (the inputs sent), got \`${input}\` (number)` };
      if (i > 0 && input < rep.outputs[i - 1]!.input) return { path: `outputs[${i}].input`, message: `expected outputs in input order (at least ${rep.outputs[i - 1]!.input}), got \`${input}\` (number)` };
    }
    const rejected = new Set<number>();
    for (let i = 0; i < (rep.rejected ?? []).length; i++) {
      const input = rep.rejected![i]!.input;
      if (input >= req.inputs.length) return { path: `rejected[${i}].input`, message: `expected an index below ${req.inputs.length} (the inputs sent), got \`${input}\` (number)` };
      if (i > 0 && input <= rep.rejected![i - 1]!.input) return { path: `rejected[${i}].input`, message: `expected rejections in input order, each input once (above ${rep.rejected![i - 1]!.input}), got \`${input}\` (number)` };
      rejected.add(input);
    }
    for (let i = 0; i < rep.outputs.length; i++) {
      if (rejected.has(rep.outputs[i]!.input)) return { path: `outputs[${i}].input`, message: `expected no output from a rejected input, got one from input \`${rep.outputs[i]!.input}\`` };
    }
    for (const key of Object.keys(rep.states)) {
      if (!Object.hasOwn(req.states, key)) return { path: `states.${key}`, message: "expected only keys of the request's states, got a key that was not sent" };
    }
  } else if (kind === "sink") {
    const delivered = (reply as SinkReply).delivered;
    const sent = (request as SinkRequest).events.length;
    if (delivered > sent) return { path: "delivered", message: `expected at most ${sent} (the events sent), got \`${delivered}\` (number)` };
  } else if (kind === "source") {
    const got = (reply as SourceReply).records.length;
    const max = (request as SourceRequest).max;
    if (got > max) return { path: "records", message: `expected at most ${max} records (max), got ${got}` };
  }
  return undefined;
}

/** Checks a services protocol response (PING, INFO or STATS) already parsed from JSON. */
export function checkControlResponse<V extends SrvVerb>(verb: V, value: unknown): Checked<{ PING: PingResponse; INFO: InfoResponse; STATS: StatsResponse }[V]> {
  return check(verb, value);
}
