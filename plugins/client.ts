/**
 * The host side of the plugin protocol: discovery (INFO by scatter-gather, nonce check),
 * health (PING, STATS) and typed, validated calls with the errors of `errors.ts`.
 */
import { NoRespondersError, RequestError, TimeoutError } from "@nats-io/transport-node";
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import { InvalidOptionError } from "../streams/index.js";
import {
  PluginBadReplyError,
  PluginFailedError,
  PluginRejectedError,
  PluginTimeoutError,
  PluginUnavailableError,
} from "./errors.js";
import type { PluginCallContext } from "./errors.js";
import {
  DEFAULT_MAX_REPLY_BYTES,
  HEADERS,
  METADATA,
  SRV_PREFIX,
  checkControlResponse,
  endpointSubject,
  parseReply,
} from "./protocol.js";
import type {
  CallTypes,
  InfoResponse,
  PingResponse,
  PluginKind,
  ProcessorInput,
  ProcessorOutput,
  ProcessorRejection,
  ProcessorReply,
  ProcessorRequest,
  SinkReply,
  SinkRequest,
  SourceReply,
  SourceRequest,
  SrvVerb,
  StatsResponse,
  StepReply,
  StepRequest,
} from "./protocol.js";

/** @default 1000 ms: how long discovery collects INFO replies. */
export const DEFAULT_DISCOVERY_TIMEOUT_MS = 1000;
/** @default 5000 ms */
export const DEFAULT_CALL_TIMEOUT_MS = 5000;
/** The status a call gets, locally, when one key's inputs alone exceed the server's max payload. */
export const STATUS_TOO_LARGE = 413;

export interface DiscoverOptions {
  /** Only instances of this service (asks `$SRV.INFO.<name>`). */
  readonly name?: string;
  /** Keep only instances whose INFO metadata `flexcore.nonce` equals this (managed plugins). */
  readonly nonce?: string;
  /** How long to collect replies. @default {@link DEFAULT_DISCOVERY_TIMEOUT_MS} */
  readonly timeoutMs?: number;
  /** Return as soon as this many instances were kept (e.g. 1 to wait for a launch's readiness). */
  readonly limit?: number;
  readonly signal?: AbortSignal;
}

/**
 * Asks every service (or every instance of `name`) for its INFO and returns the instances
 * that answered with a valid INFO within the time, in the order they answered. Invalid
 * replies are skipped; with `nonce`, so is every instance whose metadata does not carry
 * that nonce (an impostor registering the same name cannot pass for a managed launch).
 */
export async function discoverPlugins(nc: NatsConnection, options: DiscoverOptions = {}): Promise<InfoResponse[]> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_DISCOVERY_TIMEOUT_MS;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw new InvalidOptionError("timeoutMs", timeoutMs, "an integer number of milliseconds from 1 and up");
  if (options.name !== undefined && (typeof options.name !== "string" || !/^[A-Za-z0-9_-]+$/u.test(options.name))) throw new InvalidOptionError("name", options.name, "a service name of letters, digits, `-` and `_`");
  const subject = options.name ? `${SRV_PREFIX}.INFO.${options.name}` : `${SRV_PREFIX}.INFO`;
  const found: InfoResponse[] = [];
  const seen = new Set<string>();
  let replies: AsyncIterable<Msg>;
  try {
    replies = await nc.requestMany(subject, "", { strategy: "timer", maxWait: timeoutMs });
  } catch (err) {
    if (isNoResponders(err)) return found;
    throw err;
  }
  try {
    for await (const msg of replies) {
      if (options.signal?.aborted) break;
      const info = parseControl("INFO", msg);
      if (!info || seen.has(info.id)) continue;
      if (options.name && info.name !== options.name) continue;
      if (options.nonce !== undefined && info.metadata[METADATA.nonce] !== options.nonce) continue;
      seen.add(info.id);
      found.push(info);
      if (options.limit !== undefined && found.length >= options.limit) break;
    }
  } catch (err) {
    // The iterator ends with an error on no responders (nobody listens at all).
    if (!isNoResponders(err)) throw err;
  }
  return found;
}

type ControlResponses = { PING: PingResponse; INFO: InfoResponse; STATS: StatsResponse };

function parseControl<V extends SrvVerb>(verb: V, msg: Msg): ControlResponses[V] | undefined {
  let value: unknown;
  try {
    value = msg.json();
  } catch {
    return undefined;
  }
  const checked = checkControlResponse(verb, value);
  if (!checked.ok) return undefined;
  const v = checked.value as { metadata?: Record<string, string> | null };
  return { ...checked.value, metadata: v.metadata ?? {} } as ControlResponses[V];
}

export interface HealthOptions {
  /** A particular instance. */
  readonly id?: string;
  /** @default 1000 */
  readonly timeoutMs?: number;
}

async function askOne<V extends SrvVerb>(nc: NatsConnection, verb: V, service: string, options: HealthOptions): Promise<ControlResponses[V]> {
  const subject = options.id ? `${SRV_PREFIX}.${verb}.${service}.${options.id}` : `${SRV_PREFIX}.${verb}.${service}`;
  const context = { service, subject };
  const timeoutMs = options.timeoutMs ?? DEFAULT_DISCOVERY_TIMEOUT_MS;
  let msg: Msg;
  try {
    msg = await nc.request(subject, "", { timeout: timeoutMs });
  } catch (err) {
    throw translate(err, context, timeoutMs);
  }
  let value: unknown;
  try {
    value = msg.json();
  } catch (err) {
    throw new PluginBadReplyError(context, "", "expected JSON", { cause: err });
  }
  const checked = checkControlResponse(verb, value);
  if (!checked.ok) throw new PluginBadReplyError(context, checked.issue.path, checked.issue.message);
  const v = checked.value as { metadata?: Record<string, string> | null };
  return { ...checked.value, metadata: v.metadata ?? {} } as ControlResponses[V];
}

/** PING one instance of `service` (any, or `id`). Throws the call errors (timeout, unavailable, bad reply). */
export function pingPlugin(nc: NatsConnection, service: string, options: HealthOptions = {}): Promise<PingResponse> {
  return askOne(nc, "PING", service, options);
}

/** STATS of one instance of `service` (any, or `id`). */
export function pluginStats(nc: NatsConnection, service: string, options: HealthOptions = {}): Promise<StatsResponse> {
  return askOne(nc, "STATS", service, options);
}

function isNoResponders(err: unknown): boolean {
  return err instanceof NoRespondersError || (err instanceof RequestError && err.isNoResponders());
}

function translate(err: unknown, context: PluginCallContext, timeoutMs: number): Error {
  if (err instanceof TimeoutError || (err instanceof Error && err.cause instanceof TimeoutError)) return new PluginTimeoutError(context, timeoutMs, { cause: err });
  if (isNoResponders(err)) return new PluginUnavailableError(context, { cause: err });
  return err instanceof Error ? err : new Error(String(err));
}

/** Options of {@link createPluginClient}. */
export interface PluginClientOptions {
  /** Time one call may take. @default {@link DEFAULT_CALL_TIMEOUT_MS} */
  readonly callTimeoutMs?: number;
  /** Largest request body; processor batches above it are split by key. @default the server's `max_payload` */
  readonly maxPayload?: number;
  /** Largest reply accepted; bigger is `FLEX_PLUGIN_BAD_REPLY`. @default {@link DEFAULT_MAX_REPLY_BYTES} */
  readonly maxReplyBytes?: number;
}

/** Typed calls to one plugin service. Every method throws the `FLEX_PLUGIN_*` call errors. */
export interface PluginClient {
  readonly service: string;
  /**
   * Runs a batch through processor `kind`; split into several calls when over max payload.
   * `signal` stops waiting (rejects with its reason); a call already sent may still be run.
   */
  callProcessor(kind: string, request: Omit<ProcessorRequest, "protocol" | "kind">, signal?: AbortSignal): Promise<ProcessorReply>;
  callStep(step: string, request: Omit<StepRequest, "protocol" | "step">, signal?: AbortSignal): Promise<StepReply>;
  callSink(sink: string, request: Omit<SinkRequest, "protocol" | "sink">, signal?: AbortSignal): Promise<SinkReply>;
  callSource(source: string, request: Omit<SourceRequest, "protocol" | "source">, signal?: AbortSignal): Promise<SourceReply>;
}

const encoder = new TextEncoder();

class PluginClientImpl implements PluginClient {
  readonly service: string;
  #nc: NatsConnection;
  #timeoutMs: number;
  #maxPayload: number | undefined;
  #maxReplyBytes: number;

  constructor(nc: NatsConnection, service: string, options: PluginClientOptions) {
    if (typeof service !== "string" || !/^[A-Za-z0-9_-]+$/u.test(service)) throw new InvalidOptionError("service", service, "a service name of letters, digits, `-` and `_`");
    const timeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw new InvalidOptionError("callTimeoutMs", timeoutMs, "an integer number of milliseconds from 1 and up");
    if (options.maxPayload !== undefined && (!Number.isInteger(options.maxPayload) || options.maxPayload < 256)) throw new InvalidOptionError("maxPayload", options.maxPayload, "an integer number of bytes from 256 and up");
    const maxReply = options.maxReplyBytes ?? DEFAULT_MAX_REPLY_BYTES;
    if (!Number.isInteger(maxReply) || maxReply < 2) throw new InvalidOptionError("maxReplyBytes", maxReply, "an integer number of bytes from 2 and up");
    this.service = service;
    this.#nc = nc;
    this.#timeoutMs = timeoutMs;
    this.#maxPayload = options.maxPayload;
    this.#maxReplyBytes = maxReply;
  }

  get #limit(): number {
    // Read at call time: the server (and so its max_payload) may change after a reconnect.
    return this.#maxPayload ?? this.#nc.info?.max_payload ?? DEFAULT_MAX_REPLY_BYTES;
  }

  async #call<K extends PluginKind>(kind: K, capability: string, request: CallTypes[K]["request"], signal: AbortSignal | undefined, body?: Uint8Array): Promise<CallTypes[K]["reply"]> {
    signal?.throwIfAborted();
    const subject = endpointSubject(this.service, kind, capability);
    const context = { service: this.service, subject };
    const payload = body ?? encoder.encode(JSON.stringify(request));
    if (payload.byteLength > this.#limit) {
      throw new PluginRejectedError(context, STATUS_TOO_LARGE, `the request is ${payload.byteLength} bytes, over the server's max payload of ${this.#limit} bytes`);
    }
    let msg: Msg;
    try {
      const reply = this.#nc.request(subject, payload, { timeout: this.#timeoutMs });
      msg = signal ? await abortable(reply, signal) : await reply;
    } catch (err) {
      if (signal?.aborted && err === signal.reason) throw err;
      throw translate(err, context, this.#timeoutMs);
    }
    const code = msg.headers?.get(HEADERS.errorCode);
    if (code) {
      const status = Number.parseInt(code, 10);
      const reason = msg.headers?.get(HEADERS.error) ?? "";
      if (status >= 400 && status < 500) throw new PluginRejectedError(context, status, reason);
      throw new PluginFailedError(context, Number.isFinite(status) ? status : 500, reason || `error code ${JSON.stringify(code)}`);
    }
    const checked = parseReply(kind, msg.data, request, this.#maxReplyBytes);
    if (!checked.ok) throw new PluginBadReplyError(context, checked.issue.path, checked.issue.message);
    return checked.value;
  }

  async callProcessor(kind: string, request: Omit<ProcessorRequest, "protocol" | "kind">, signal?: AbortSignal): Promise<ProcessorReply> {
    const full: ProcessorRequest = { protocol: 1, tenant: request.tenant, kind, options: request.options, states: request.states, inputs: request.inputs };
    const body = encoder.encode(JSON.stringify(full));
    if (body.byteLength <= this.#limit) return this.#call("processor", kind, full, signal, body);
    const chunks = splitByKey(full, this.#limit, { service: this.service, subject: endpointSubject(this.service, "processor", kind) });
    const replies = await Promise.all(chunks.map((c) => this.#call("processor", kind, c.request, signal)));
    return mergeReplies(chunks, replies);
  }

  callStep(step: string, request: Omit<StepRequest, "protocol" | "step">, signal?: AbortSignal): Promise<StepReply> {
    return this.#call("step", step, { protocol: 1, tenant: request.tenant, step, input: request.input, run: request.run }, signal);
  }

  callSink(sink: string, request: Omit<SinkRequest, "protocol" | "sink">, signal?: AbortSignal): Promise<SinkReply> {
    return this.#call("sink", sink, { protocol: 1, tenant: request.tenant, sink, options: request.options, events: request.events }, signal);
  }

  callSource(source: string, request: Omit<SourceRequest, "protocol" | "source">, signal?: AbortSignal): Promise<SourceReply> {
    return this.#call("source", source, { protocol: 1, tenant: request.tenant, source, options: request.options, cursor: request.cursor, max: request.max }, signal);
  }
}

function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/** One sub-batch: its request and, per input, its index in the whole batch. */
interface Chunk {
  readonly request: ProcessorRequest;
  readonly origin: readonly number[];
}

function byteLength(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value) ?? "null");
}

/**
 * Splits a batch into requests of at most `limit` bytes, each key whole (its state and all
 * its inputs in one request, inputs in their order), keys packed in order of first
 * appearance. A key that alone exceeds the limit cannot be sent: 413, which the host treats
 * as a rejected input (dead letter), not as something a retry could fix.
 */
export function splitByKey(request: ProcessorRequest, limit: number, context: PluginCallContext): Chunk[] {
  const order: string[] = [];
  const byKey = new Map<string, number[]>();
  request.inputs.forEach((input, i) => {
    let list = byKey.get(input.key);
    if (!list) {
      list = [];
      byKey.set(input.key, list);
      order.push(input.key);
    }
    list.push(i);
  });
  const base = byteLength({ ...request, states: {}, inputs: [] });
  const chunks: Chunk[] = [];
  let keys: string[] = [];
  let size = base;
  const flush = (): void => {
    if (keys.length === 0) return;
    const states: Record<string, unknown> = {};
    const origin: number[] = [];
    for (const k of keys) {
      setOwn(states, k, Object.hasOwn(request.states, k) ? request.states[k] : null);
      origin.push(...byKey.get(k)!);
    }
    origin.sort((a, b) => a - b);
    const inputs: ProcessorInput[] = origin.map((i) => request.inputs[i]!);
    chunks.push({ request: { ...request, states, inputs }, origin });
    keys = [];
    size = base;
  };
  for (const key of order) {
    // `"key":state,` plus each input and its comma.
    let cost = byteLength(key) + byteLength(Object.hasOwn(request.states, key) ? request.states[key] : null) + 2;
    for (const i of byKey.get(key)!) cost += byteLength(request.inputs[i]) + 1;
    if (base + cost > limit) {
      const first = request.inputs[byKey.get(key)![0]!]!;
      throw new PluginRejectedError(context, STATUS_TOO_LARGE, `the inputs of key ${JSON.stringify(key)} (from seq ${first.seq}) need ${base + cost} bytes, over the max payload of ${limit} bytes`);
    }
    if (size + cost > limit) flush();
    keys.push(key);
    size += cost;
  }
  flush();
  return chunks;
}

/** `obj[key] = value` that stays a data property for `__proto__` (a key is any subject token). */
function setOwn(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

function mergeReplies(chunks: readonly Chunk[], replies: readonly ProcessorReply[]): ProcessorReply {
  const states: Record<string, unknown> = {};
  const outputs: Array<{ at: number; n: number; output: ProcessorOutput }> = [];
  const rejected: ProcessorRejection[] = [];
  let n = 0;
  chunks.forEach((chunk, c) => {
    const reply = replies[c]!;
    for (const [k, v] of Object.entries(reply.states)) setOwn(states, k, v);
    for (const out of reply.outputs) outputs.push({ at: chunk.origin[out.input]!, n: n++, output: { ...out, input: chunk.origin[out.input]! } });
    for (const r of reply.rejected ?? []) rejected.push({ input: chunk.origin[r.input]!, reason: r.reason });
  });
  outputs.sort((a, b) => a.at - b.at || a.n - b.n);
  rejected.sort((a, b) => a.input - b.input);
  const merged = { states, outputs: outputs.map((o) => o.output) };
  return rejected.length > 0 ? { ...merged, rejected } : merged;
}

/** A client for one plugin service. */
export function createPluginClient(nc: NatsConnection, service: string, options: PluginClientOptions = {}): PluginClient {
  return new PluginClientImpl(nc, service, options);
}
