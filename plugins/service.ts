/**
 * The subset of the NATS services protocol ("micro") FlexCore needs, on nats.js v3:
 * `$SRV.PING|INFO|STATS` on their three subject forms, endpoints in queue group `q`, the
 * `Nats-Service-Error` headers, per-endpoint stats, a bound on calls in flight and a drain
 * on stop. Wire format as nats.js `@nats-io/services` and nats-py `nats.micro` write it,
 * so `nats micro ls|info|stats` and any micro client see a FlexCore plugin as a service.
 *
 * Why not `@nats-io/services`: its only releases are pre-releases (3.0.0-25) pinned to a
 * pre-release `@nats-io/nats-core` (3.0.0-50), a second copy of the core beside the 3.4
 * transport FlexCore uses, with types that do not match our `NatsConnection`.
 */
import { headers, nuid } from "@nats-io/transport-node";
import type { Msg, MsgHdrs, NatsConnection, Subscription } from "@nats-io/transport-node";
import { InvalidOptionError } from "../streams/index.js";
import { HEADERS, QUEUE_GROUP, RESPONSE_TYPES, SRV_VERBS, controlSubjects } from "./protocol.js";
import type { EndpointInfo, EndpointStats, InfoResponse, PingResponse, SrvVerb, StatsResponse } from "./protocol.js";

/** A micro service or endpoint name: letters, digits, `-`, `_`. */
const MICRO_NAME = /^[A-Za-z0-9_-]+$/u;
const SEMVER = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$/u;

/** Options of {@link createService}. */
export interface ServiceOptions {
  /** Service name, shared by all instances. */
  readonly name: string;
  /** Semver of the service. */
  readonly version: string;
  /** @default "" */
  readonly description?: string;
  /** Published in PING, INFO and STATS. @default {} */
  readonly metadata?: Readonly<Record<string, string>>;
  /** Calls handled at once by this instance; more wait in order. @default 64 */
  readonly maxInFlight?: number;
}

export const DEFAULT_MAX_IN_FLIGHT = 64;

/** A request as an endpoint handler sees it. */
export interface ServiceRequest {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs | undefined;
}

/** Throw this from a handler to answer with `Nats-Service-Error-Code: <code>`. */
export class ServiceError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = "ServiceError";
    this.status = status;
  }
}

/** Returns the reply body; throwing answers with error headers (ServiceError's code, else 500). */
export type EndpointHandler = (request: ServiceRequest) => Promise<Uint8Array> | Uint8Array;

export interface EndpointOptions {
  /** Endpoint name (no dots). */
  readonly name: string;
  readonly subject: string;
  readonly handler: EndpointHandler;
  /** @default {} */
  readonly metadata?: Readonly<Record<string, string>>;
}

/** A running service instance. */
export interface Service extends AsyncDisposable {
  readonly id: string;
  readonly name: string;
  addEndpoint(options: EndpointOptions): void;
  info(): InfoResponse;
  stats(): StatsResponse;
  /** Calls being handled or waiting for a slot. */
  readonly inFlight: number;
  /**
   * Stops taking calls (endpoint subscriptions drained), waits for the calls in flight to be
   * answered, then stops answering PING/INFO/STATS. Does not close the connection.
   */
  stop(): Promise<void>;
  /** Resolves when the service stopped. */
  readonly stopped: Promise<void>;
}

class Endpoint {
  readonly name: string;
  readonly subject: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly handler: EndpointHandler;
  sub: Subscription | undefined;
  numRequests = 0;
  numErrors = 0;
  lastError = "";
  processingNs = 0n;

  constructor(options: EndpointOptions) {
    this.name = options.name;
    this.subject = options.subject;
    this.metadata = options.metadata ?? {};
    this.handler = options.handler;
  }

  info(): EndpointInfo {
    return { name: this.name, subject: this.subject, queue_group: QUEUE_GROUP, metadata: this.metadata };
  }

  stats(): EndpointStats {
    const total = Number(this.processingNs);
    return {
      name: this.name,
      subject: this.subject,
      queue_group: QUEUE_GROUP,
      num_requests: this.numRequests,
      num_errors: this.numErrors,
      last_error: this.lastError,
      processing_time: total,
      average_processing_time: this.numRequests ? Math.round(total / this.numRequests) : 0,
      data: null,
    };
  }
}

class ServiceImpl implements Service {
  readonly id = nuid.next();
  readonly name: string;
  #nc: NatsConnection;
  #version: string;
  #description: string;
  #metadata: Readonly<Record<string, string>>;
  #started = new Date().toISOString();
  #endpoints: Endpoint[] = [];
  #control: Subscription[] = [];
  #maxInFlight: number;
  #running = 0;
  #waiting: Array<() => void> = [];
  #idle: Array<() => void> = [];
  #stopping: Promise<void> | undefined;
  #resolveStopped!: () => void;
  readonly stopped = new Promise<void>((resolve) => {
    this.#resolveStopped = resolve;
  });

  constructor(nc: NatsConnection, options: ServiceOptions) {
    if (typeof options.name !== "string" || !MICRO_NAME.test(options.name)) throw new InvalidOptionError("name", options.name, "a service name of letters, digits, `-` and `_`");
    if (typeof options.version !== "string" || !SEMVER.test(options.version)) throw new InvalidOptionError("version", options.version, "a semantic version such as 1.0.0");
    const maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1) throw new InvalidOptionError("maxInFlight", maxInFlight, "an integer from 1 and up");
    this.#nc = nc;
    this.name = options.name;
    this.#version = options.version;
    this.#description = options.description ?? "";
    this.#metadata = Object.freeze({ ...(options.metadata ?? {}) });
    this.#maxInFlight = maxInFlight;
    for (const verb of SRV_VERBS) {
      for (const subject of controlSubjects(verb, this.name, this.id)) {
        this.#control.push(nc.subscribe(subject, {
          callback: (err, msg) => {
            if (!err) this.#answerControl(verb, msg);
          },
        }));
      }
    }
  }

  get inFlight(): number {
    return this.#running + this.#waiting.length;
  }

  addEndpoint(options: EndpointOptions): void {
    if (this.#stopping) throw new InvalidOptionError("service", "stopped", "a running service");
    if (typeof options.name !== "string" || !MICRO_NAME.test(options.name)) throw new InvalidOptionError("endpoint.name", options.name, "an endpoint name of letters, digits, `-` and `_`");
    if (typeof options.subject !== "string" || !/^[^\s>*]+$/u.test(options.subject)) throw new InvalidOptionError("endpoint.subject", options.subject, "a subject without spaces or wildcards");
    if (typeof options.handler !== "function") throw new InvalidOptionError("endpoint.handler", options.handler, "a function");
    const endpoint = new Endpoint(options);
    endpoint.sub = this.#nc.subscribe(endpoint.subject, {
      queue: QUEUE_GROUP,
      callback: (err, msg) => {
        if (!err) void this.#handle(endpoint, msg);
      },
    });
    this.#endpoints.push(endpoint);
  }

  #identity() {
    return { name: this.name, id: this.id, version: this.#version, metadata: this.#metadata };
  }

  info(): InfoResponse {
    return { type: RESPONSE_TYPES.INFO, ...this.#identity(), description: this.#description, endpoints: this.#endpoints.map((e) => e.info()) };
  }

  stats(): StatsResponse {
    return { type: RESPONSE_TYPES.STATS, ...this.#identity(), started: this.#started, endpoints: this.#endpoints.map((e) => e.stats()) };
  }

  #answerControl(verb: SrvVerb, msg: Msg): void {
    const body: PingResponse | InfoResponse | StatsResponse = verb === "PING" ? { type: RESPONSE_TYPES.PING, ...this.#identity() } : verb === "INFO" ? this.info() : this.stats();
    try {
      msg.respond(JSON.stringify(body));
    } catch {
      // The connection is closing; the asker times out, as it would on a lost message.
    }
  }

  async #handle(endpoint: Endpoint, msg: Msg): Promise<void> {
    const start = process.hrtime.bigint();
    endpoint.numRequests += 1;
    if (this.#running >= this.#maxInFlight) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    this.#running += 1;
    try {
      const reply = await endpoint.handler({ subject: msg.subject, data: msg.data, headers: msg.headers });
      msg.respond(reply);
    } catch (err) {
      const status = err instanceof ServiceError ? err.status : 500;
      const message = err instanceof Error ? err.message : String(err);
      endpoint.numErrors += 1;
      endpoint.lastError = `${status}:${message}`;
      const h = headers();
      h.set(HEADERS.error, oneLine(message));
      h.set(HEADERS.errorCode, String(status));
      try {
        msg.respond(new Uint8Array(0), { headers: h });
      } catch {
        // Connection closed under us: nothing left to answer on.
      }
    } finally {
      endpoint.processingNs += process.hrtime.bigint() - start;
      this.#running -= 1;
      const next = this.#waiting.shift();
      if (next) next();
      else if (this.#running === 0) for (const idle of this.#idle.splice(0)) idle();
    }
  }

  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      // Draining the endpoint subscriptions first: the server stops routing calls here (the
      // queue group's other members get them), and what already arrived is still handled.
      await Promise.all(this.#endpoints.map((e) => e.sub?.drain().catch(() => undefined)));
      if (this.inFlight > 0) await new Promise<void>((resolve) => this.#idle.push(resolve));
      for (const sub of this.#control) sub.unsubscribe();
      this.#resolveStopped();
    })();
    return this.#stopping;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/** Header values are one line: CR/LF would break the NATS header block. */
function oneLine(text: string): string {
  const flat = text.replace(/[\r\n]+/gu, " ");
  return flat.length > 1024 ? `${flat.slice(0, 1021)}...` : flat;
}

/** Registers a service instance on `nc` (PING/INFO/STATS answered at once); add endpoints next. */
export function createService(nc: NatsConnection, options: ServiceOptions): Service {
  return new ServiceImpl(nc, options);
}
