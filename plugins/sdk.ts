/**
 * The TypeScript plugin SDK: `definePlugin({...})` describes the capabilities, `serve()`
 * reads the handshake environment, connects with the plugin's own NATS user, registers the
 * service (the launch nonce in INFO metadata), bounds the calls in flight, answers errors
 * with the services protocol's headers, logs JSON lines on stderr and drains on SIGTERM.
 */
import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import type { Logger } from "pino";
import { InvalidOptionError, natsConnectOptions } from "../streams/index.js";
import { PluginInputError } from "./errors.js";
import {
  CAPABILITY_PATTERN,
  ENV,
  EXIT_PROTOCOL_MISMATCH,
  METADATA,
  PLUGIN_NAME_PATTERN,
  SUPPORTED_PROTOCOLS,
  endpointName,
  endpointSubject,
} from "./protocol.js";
import type { PluginKind, ProcessorReply, ProcessorRequest, SinkReply, SinkRequest, SourceReply, SourceRequest, StepReply, StepRequest } from "./protocol.js";
import { ServiceError, createService } from "./service.js";
import type { Service } from "./service.js";
import { PLUGIN_SERVICE_PATTERN, PLUGIN_TENANT_ENV, PLUGIN_TENANT_PATTERN, TENANT_SERVICE_SEPARATOR } from "./tenancy.js";

/** What a handler gets beside the request. */
export interface HandlerContext {
  /** The operator's options for this plugin (`FLEXCORE_PLUGIN_CONFIG`), frozen. */
  readonly config: Readonly<Record<string, unknown>>;
  /** JSON lines on stderr, with the plugin's name. */
  readonly log: Logger;
}

/** A reply a handler already encoded (JSON bytes), sent as is. For tests of hosts. */
export type RawReply = Uint8Array;
type Result<T> = T | RawReply | Promise<T | RawReply>;

export interface ProcessorDefinition {
  /** Handles one batch: returns the new states and the outputs. Throw `PluginInputError` for a bad input (400). */
  process(request: ProcessorRequest, context: HandlerContext): Result<ProcessorReply>;
}
export interface StepDefinition {
  run(request: StepRequest, context: HandlerContext): Result<StepReply>;
}
export interface SinkDefinition {
  deliver(request: SinkRequest, context: HandlerContext): Result<SinkReply>;
}
export interface SourceDefinition {
  read(request: SourceRequest, context: HandlerContext): Result<SourceReply>;
}

/** What {@link definePlugin} takes. */
export interface PluginDefinition {
  /** Service name when `FLEXCORE_PLUGIN_NAME` is unset (an external plugin). */
  readonly name?: string;
  /** Semver of the plugin. */
  readonly version: string;
  readonly description: string;
  /** Protocol versions the plugin speaks. */
  readonly protocols: readonly number[];
  readonly processors?: Readonly<Record<string, ProcessorDefinition>>;
  readonly steps?: Readonly<Record<string, StepDefinition>>;
  readonly sinks?: Readonly<Record<string, SinkDefinition>>;
  readonly sources?: Readonly<Record<string, SourceDefinition>>;
}

/** A checked, frozen plugin definition. */
export interface Plugin extends PluginDefinition {
  readonly capabilities: ReadonlyArray<{ readonly kind: PluginKind; readonly name: string; readonly call: (request: never, context: HandlerContext) => Result<unknown> }>;
}

const GROUPS = [
  ["processor", "processors", "process"],
  ["step", "steps", "run"],
  ["sink", "sinks", "deliver"],
  ["source", "sources", "read"],
] as const;

/** Checks a plugin definition (names, version, protocols, handlers) and freezes it. */
export function definePlugin(definition: PluginDefinition): Plugin {
  const d = definition;
  if (d.name !== undefined && (typeof d.name !== "string" || !PLUGIN_NAME_PATTERN.test(d.name))) throw new InvalidOptionError("name", d.name, `a plugin name matching ${PLUGIN_NAME_PATTERN}`);
  if (typeof d.version !== "string" || !/^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]*)?$/u.test(d.version)) throw new InvalidOptionError("version", d.version, "a semantic version such as 1.0.0");
  if (typeof d.description !== "string") throw new InvalidOptionError("description", d.description, "a string");
  if (!Array.isArray(d.protocols) || d.protocols.length === 0 || !d.protocols.every((p) => Number.isInteger(p) && p > 0)) throw new InvalidOptionError("protocols", d.protocols, "a non-empty list of protocol versions, e.g. [1]");
  const capabilities: Array<Plugin["capabilities"][number]> = [];
  for (const [kind, group, method] of GROUPS) {
    const entries = d[group] ?? {};
    for (const [name, def] of Object.entries(entries)) {
      if (!CAPABILITY_PATTERN.test(name)) throw new InvalidOptionError(`${group}.${name}`, name, `a capability name matching ${CAPABILITY_PATTERN}`);
      const fn = (def as unknown as Record<string, unknown>)[method];
      if (typeof fn !== "function") throw new InvalidOptionError(`${group}.${name}.${method}`, fn, "a function");
      capabilities.push({ kind, name, call: (fn as (r: never, c: HandlerContext) => Result<unknown>).bind(def) });
    }
  }
  if (capabilities.length === 0) throw new InvalidOptionError("processors", undefined, "at least one processor, step, sink or source");
  return Object.freeze({ ...d, protocols: Object.freeze([...d.protocols]), capabilities: Object.freeze(capabilities) });
}

/** Options of {@link serve}. */
export interface ServeOptions {
  /** Where the handshake is read. @default process.env */
  readonly env?: NodeJS.ProcessEnv;
  /** Drain and exit 0 on SIGTERM and SIGINT. @default true */
  readonly handleSignals?: boolean;
  /** Process exit. @default process.exit */
  readonly exit?: (code: number) => void;
  /** @default JSON lines on stderr, level $LOG_LEVEL or info */
  readonly logger?: Logger;
}

/** A plugin being served. */
export interface ServedPlugin extends AsyncDisposable {
  readonly service: Service;
  readonly nc: NatsConnection;
  readonly protocol: number;
  readonly config: Readonly<Record<string, unknown>>;
  /** Stops taking calls, finishes those in flight, drains the connection. */
  stop(): Promise<void>;
}

/** @default calls in flight when `FLEXCORE_PLUGIN_CONCURRENCY` is unset. */
export const DEFAULT_PLUGIN_CONCURRENCY = 64;

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** The handshake environment, checked. Throws InvalidOptionError naming the variable. */
export function readHandshake(env: NodeJS.ProcessEnv, plugin: Plugin) {
  const name = env[ENV.name] || plugin.name;
  if (!name || !PLUGIN_NAME_PATTERN.test(name) && !PLUGIN_SERVICE_PATTERN.test(name)) throw new InvalidOptionError(ENV.name, name, `a plugin name matching ${PLUGIN_NAME_PATTERN}, or <name>_<tenant> (or a name in definePlugin)`);
  const tenant = env[PLUGIN_TENANT_ENV] || undefined;
  if (tenant !== undefined && (!PLUGIN_TENANT_PATTERN.test(tenant) || name !== `${name.split(TENANT_SERVICE_SEPARATOR, 1)[0]}${TENANT_SERVICE_SEPARATOR}${tenant}`)) throw new InvalidOptionError(PLUGIN_TENANT_ENV, tenant, `the tenant of the service name ${name} (<name>_<tenant>)`);
  const url = env[ENV.natsUrl] || env.NATS_URL;
  if (!url) throw new InvalidOptionError(ENV.natsUrl, url, "a comma-separated list of NATS server URLs");
  const user = env[ENV.natsUser];
  const password = env[ENV.natsPassword];
  const hostProtocols = (env[ENV.protocols] ?? "1").split(",").map((p) => p.trim()).filter(Boolean).map(Number);
  if (hostProtocols.length === 0 || hostProtocols.some((p) => !Number.isInteger(p) || p < 1)) throw new InvalidOptionError(ENV.protocols, env[ENV.protocols], "a comma-separated list of protocol versions, e.g. 1");
  const concurrencyText = env[ENV.concurrency];
  const concurrency = concurrencyText ? Number(concurrencyText) : DEFAULT_PLUGIN_CONCURRENCY;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new InvalidOptionError(ENV.concurrency, concurrencyText, "an integer from 1 and up");
  let config: unknown = {};
  const configText = env[ENV.config];
  if (configText) {
    try {
      config = JSON.parse(configText);
    } catch {
      throw new InvalidOptionError(ENV.config, configText, "a JSON object");
    }
  }
  if (typeof config !== "object" || config === null || Array.isArray(config)) throw new InvalidOptionError(ENV.config, configText, "a JSON object");
  return {
    name,
    url,
    user,
    password,
    hostProtocols,
    concurrency,
    nonce: env[ENV.nonce] || undefined,
    /** `FLEXCORE_PLUGIN_TENANT`: the one tenant a `tenancy: tenant` instance serves; calls of another are answered 403. */
    tenant,
    config: Object.freeze(config as Record<string, unknown>),
  };
}

/**
 * Serves `plugin` as the handshake environment says. Exits 78 (after one stderr line) when
 * the plugin and the host share no protocol version or the environment is unusable; exits 0
 * after a drain on SIGTERM; exits 1 if the connection closes on its own.
 */
export async function serve(plugin: Plugin, options: ServeOptions = {}): Promise<ServedPlugin> {
  const env = options.env ?? process.env;
  const exit = options.exit ?? ((code: number) => process.exit(code));
  const baseLog = options.logger ?? pino({ level: env.LOG_LEVEL || "info", base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
  let handshake: ReturnType<typeof readHandshake>;
  try {
    handshake = readHandshake(env, plugin);
  } catch (err) {
    baseLog.fatal({ err, code: (err as { code?: string }).code }, "plugin handshake environment is invalid");
    exit(EXIT_PROTOCOL_MISMATCH);
    throw err;
  }
  const log = baseLog.child({ plugin: handshake.name });
  const common = plugin.protocols.filter((p) => handshake.hostProtocols.includes(p) && SUPPORTED_PROTOCOLS.includes(p));
  if (common.length === 0) {
    log.fatal({ plugin: handshake.name, pluginProtocols: plugin.protocols, hostProtocols: handshake.hostProtocols }, "no protocol version in common with the host");
    exit(EXIT_PROTOCOL_MISMATCH);
    throw new InvalidOptionError(ENV.protocols, env[ENV.protocols], `a list including one of ${plugin.protocols.join(", ")}`);
  }
  const protocol = Math.max(...common);
  const credentials = handshake.user || handshake.password ? { user: handshake.user, password: handshake.password } : {};
  const nc = await connect(natsConnectOptions(handshake.url, credentials, { name: `plugin-${handshake.name}`, maxReconnectAttempts: -1, reconnectTimeWait: 250 }));
  const metadata: Record<string, string> = { [METADATA.protocol]: String(protocol) };
  if (handshake.nonce) metadata[METADATA.nonce] = handshake.nonce;
  const service = createService(nc, { name: handshake.name, version: plugin.version, description: plugin.description, metadata, maxInFlight: handshake.concurrency });
  const context: HandlerContext = { config: handshake.config, log };
  for (const cap of plugin.capabilities) {
    service.addEndpoint({
      name: endpointName(cap.kind, cap.name),
      subject: endpointSubject(handshake.name, cap.kind, cap.name),
      metadata: { kind: cap.kind, capability: cap.name },
      handler: async (req) => {
        let request: { protocol?: unknown };
        try {
          request = JSON.parse(decoder.decode(req.data)) as { protocol?: unknown };
        } catch {
          throw new ServiceError(400, "the request is not JSON");
        }
        if (typeof request !== "object" || request === null || request.protocol !== protocol) {
          throw new ServiceError(400, `expected \`protocol\` to be ${protocol}, got ${JSON.stringify((request as { protocol?: unknown } | null)?.protocol)}`);
        }
        // A tenant's instance never handles another tenant's data, whoever sent it.
        if (handshake.tenant !== undefined && (request as { tenant?: unknown }).tenant !== handshake.tenant) {
          throw new ServiceError(403, `this instance serves tenant ${handshake.tenant}, not ${JSON.stringify((request as { tenant?: unknown }).tenant)}`);
        }
        try {
          const reply = await cap.call(request as never, context);
          return reply instanceof Uint8Array ? reply : encoder.encode(JSON.stringify(reply));
        } catch (err) {
          if (err instanceof PluginInputError) throw new ServiceError(err.status, err.message);
          log.error({ err, endpoint: `${cap.kind}.${cap.name}` }, "handler failed");
          throw err;
        }
      },
    });
  }
  // Once serve() resolves, the server has the subscriptions: a call sent now is routed here.
  await nc.flush();
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      await service.stop();
      await nc.drain().catch(() => undefined);
    })();
    return stopping;
  };
  void nc.closed().then((err) => {
    if (stopping) return;
    log.error({ err }, "NATS connection closed; exiting");
    exit(1);
  });
  if (options.handleSignals ?? true) {
    const onSignal = (signal: string): void => {
      log.info({ signal, inFlight: service.inFlight }, "draining");
      void stop().then(
        () => {
          log.info("stopped");
          exit(0);
        },
        (err: unknown) => {
          log.error({ err }, "drain failed");
          exit(1);
        },
      );
    };
    process.once("SIGTERM", onSignal);
    process.once("SIGINT", onSignal);
  }
  log.info({ id: service.id, protocol, concurrency: handshake.concurrency, capabilities: plugin.capabilities.map((c) => `${c.kind}.${c.name}`) }, "plugin ready");
  return { service, nc, protocol, config: handshake.config, stop, [Symbol.asyncDispose]: stop };
}
