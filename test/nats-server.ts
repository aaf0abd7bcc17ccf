import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { startNatsServer } from "../streams/index.js";
import type { NatsServer, NatsServerOptions } from "../streams/index.js";

/** A real nats-server for one test file plus a connection to it. */
export interface TestNats extends AsyncDisposable {
  readonly server: NatsServer;
  readonly nc: NatsConnection;
  /** Another connection (e.g. for a second writer); closed with the fixture. */
  connect(): Promise<NatsConnection>;
  close(): Promise<void>;
}

/**
 * Starts `nats-server` on a random port with a temporary JetStream store and connects.
 * Throws with install instructions when the binary is missing.
 */
export async function startTestNats(options: NatsServerOptions = {}): Promise<TestNats> {
  const server = await startNatsServer(options);
  const extra: NatsConnection[] = [];
  const open = async (): Promise<NatsConnection> =>
    connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, name: "flexcore-test" });
  const nc = await open();
  const close = async (): Promise<void> => {
    for (const c of [nc, ...extra]) if (!c.isClosed()) await c.close().catch(() => undefined);
    await server.close();
  };
  return {
    server,
    nc,
    connect: async () => {
      const c = await open();
      extra.push(c);
      return c;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

let counter = 0;
/** A name unique within this process and run, for streams, consumers and tenants. */
export function uniqueName(prefix = "t"): string {
  counter += 1;
  return `${prefix}${process.pid}x${counter}x${Math.random().toString(36).slice(2, 8)}`;
}
