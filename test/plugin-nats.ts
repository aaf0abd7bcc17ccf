import { randomBytes } from "node:crypto";
import type { ConnectionOptions, NatsConnection } from "@nats-io/transport-node";
import { pluginUserEntry, pluginUserName } from "../plugins/index.js";
import type { NatsServer, NatsServerOptions } from "../streams/index.js";
import { startTestNats } from "./nats-server.js";

/** A plugin's NATS user (user/password, as `flexcore up` gives managed plugins). */
export interface TestPluginUser {
  readonly service: string;
  readonly user: string;
  readonly password: string;
}

export interface PluginTestNats extends AsyncDisposable {
  readonly server: NatsServer;
  /** FlexCore's service user (the host). */
  readonly nc: NatsConnection;
  /** Another host connection; closed with the fixture. */
  connect(extra?: ConnectionOptions): Promise<NatsConnection>;
  /** The plugin user of `service` (listed in `plugins`). */
  pluginUser(service: string): TestPluginUser;
  /** A connection as that plugin user; closed with the fixture. */
  connectAsPlugin(service: string, extra?: ConnectionOptions): Promise<NatsConnection>;
  /** The handshake environment for a plugin child process of `service`. */
  pluginEnv(service: string, more?: Record<string, string>): Record<string, string>;
  close(): Promise<void>;
}

/**
 * {@link startTestNats} (authorization on, FlexCore's service user) plus one user/password
 * per plugin in `plugins`, with the production permissions of `plugins/nats-users.ts`.
 */
export async function startPluginTestNats(options: NatsServerOptions & { readonly plugins: readonly string[] }): Promise<PluginTestNats> {
  const { plugins, ...serverOptions } = options;
  const pluginUsers = new Map<string, TestPluginUser>(plugins.map((s) => [s, { service: s, user: pluginUserName(s), password: randomBytes(18).toString("base64url") }]));
  const nats = await startTestNats({ ...serverOptions, extraUsers: [...pluginUsers.values()].map((u) => pluginUserEntry(u.service, u.password)) });
  const user = (s: string): TestPluginUser => {
    const u = pluginUsers.get(s);
    if (!u) throw new Error(`startPluginTestNats: plugin ${s} has no NATS user; list it in options.plugins`);
    return u;
  };
  return {
    server: nats.server,
    nc: nats.nc,
    connect: (more) => nats.connect(more),
    pluginUser: user,
    connectAsPlugin: async (s, more = {}) => {
      const u = user(s);
      return nats.connectWith({ user: u.user, password: u.password }, { name: u.user, ...more });
    },
    pluginEnv: (s, more = {}) => {
      const u = user(s);
      return {
        FLEXCORE_PLUGIN_NAME: s,
        FLEXCORE_PLUGIN_NATS_URL: nats.server.url,
        FLEXCORE_PLUGIN_NATS_USER: u.user,
        FLEXCORE_PLUGIN_NATS_PASSWORD: u.password,
        FLEXCORE_PLUGIN_PROTOCOLS: "1",
        FLEXCORE_PLUGIN_NONCE: randomBytes(16).toString("base64url"),
        FLEXCORE_VERSION: "0.1.0",
        FLEXCORE_PLUGIN_CONCURRENCY: "64",
        FLEXCORE_PLUGIN_CONFIG: "{}",
        ...more,
      };
    },
    close: () => nats.close(),
    [Symbol.asyncDispose]: () => nats.close(),
  };
}
