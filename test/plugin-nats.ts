import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import type { ConnectionOptions, NatsConnection } from "@nats-io/transport-node";
import { generateNatsUsers, SERVICE_USER } from "../gateway/index.js";
import { natsConnectOptions, startNatsServer } from "../streams/index.js";
import type { NatsServer, NatsServerOptions } from "../streams/index.js";

/** A plugin's NATS user (as the contract of #15 gives it; the production generator is D's). */
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

/** The contract's permissions of `plugin-<service>`: its own subjects, answers only. */
export function pluginUserBlock(u: TestPluginUser): string {
  const subs = ["$SRV.PING", "$SRV.INFO", "$SRV.STATS", `$SRV.*.${u.service}`, `$SRV.*.${u.service}.>`, `flexplugin.${u.service}.>`];
  return [
    `    { user: "${u.user}", password: "${u.password}", permissions: {`,
    `        subscribe: { allow: [${subs.map((s) => JSON.stringify(s)).join(", ")}] }`,
    `        publish: { deny: [">"] }`,
    `        allow_responses: true`,
    `    } }`,
  ].join("\n");
}

/**
 * A real nats-server with authorization on: FlexCore's service user (NKey) plus one
 * user/password per plugin in `plugins`, with the permissions of the plugin contract.
 */
export async function startPluginTestNats(options: NatsServerOptions & { readonly plugins: readonly string[] }): Promise<PluginTestNats> {
  const { plugins, ...serverOptions } = options;
  const seedsDir = await mkdtemp(join(tmpdir(), "flexcore-plugin-seeds-"));
  const users = await generateNatsUsers({ tenants: [], seedsDir });
  const service = users.users.find((u) => u.name === SERVICE_USER)!;
  const pluginUsers = new Map<string, TestPluginUser>(plugins.map((s) => [s, { service: s, user: `plugin-${s}`, password: randomBytes(18).toString("base64url") }]));
  const marker = "  users = [\n";
  if (!users.config.includes(marker)) throw new Error("startPluginTestNats: the generated users block changed shape");
  const config = users.config.replace(marker, `${marker}${[...pluginUsers.values()].map(pluginUserBlock).join("\n")}\n`);
  const server = await startNatsServer({ ...serverOptions, extraConfig: `${serverOptions.extraConfig ?? ""}\n${config}` });
  const hostOptions = (more: ConnectionOptions = {}): ConnectionOptions => natsConnectOptions(server.url, { nkeySeedFile: service.seedFile }, { name: "flexcore-test", ...more });
  const nc = await connect(hostOptions());
  const extra: NatsConnection[] = [];
  const user = (s: string): TestPluginUser => {
    const u = pluginUsers.get(s);
    if (!u) throw new Error(`startPluginTestNats: plugin ${s} has no NATS user; list it in options.plugins`);
    return u;
  };
  const close = async (): Promise<void> => {
    for (const c of [nc, ...extra]) if (!c.isClosed()) await c.close().catch(() => undefined);
    await server.close();
    await rm(seedsDir, { recursive: true, force: true });
  };
  return {
    server,
    nc,
    connect: async (more) => {
      const c = await connect(hostOptions(more));
      extra.push(c);
      return c;
    },
    pluginUser: user,
    connectAsPlugin: async (s, more = {}) => {
      const u = user(s);
      const c = await connect(natsConnectOptions(server.url, { user: u.user, password: u.password }, { name: u.user, maxReconnectAttempts: 0, ...more }));
      extra.push(c);
      return c;
    },
    pluginEnv: (s, more = {}) => {
      const u = user(s);
      return {
        FLEXCORE_PLUGIN_NAME: s,
        FLEXCORE_PLUGIN_NATS_URL: server.url,
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
    close,
    [Symbol.asyncDispose]: close,
  };
}
