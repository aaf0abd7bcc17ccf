import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import type { ConnectionOptions, NatsConnection } from "@nats-io/transport-node";
import { generateNatsUsers, SERVICE_USER } from "../gateway/index.js";
import { credentialsToEnv, natsConnectOptions, startNatsServer } from "../streams/index.js";
import type { NatsCredentials, NatsServer, NatsServerOptions } from "../streams/index.js";

/** Options of {@link startTestNats}: the server's, plus the tenants that get a NATS user. */
export interface TestNatsOptions extends NatsServerOptions {
  /** Tenants given a confined NATS user (as `flexcore nats-users` writes them). @default [] */
  readonly tenants?: readonly string[];
  /** More entries of the server's users list (e.g. plugin users from `generatePluginUsers`). @default [] */
  readonly extraUsers?: readonly string[];
}

/** A real nats-server for one test file plus a connection to it, authorization on. */
export interface TestNats extends AsyncDisposable {
  readonly server: NatsServer;
  /** Connected as FlexCore's service user. */
  readonly nc: NatsConnection;
  /** The service user's credentials (an NKey seed file). */
  readonly credentials: NatsCredentials;
  /** `NATS_URL` and the service user's credential variables, for a child process. */
  readonly env: Readonly<Record<string, string>>;
  /** The seed file of a tenant listed in `tenants`. */
  tenantSeedFile(tenant: string): string;
  /** Connection options as the service user (for code that connects by itself). */
  options(extra?: ConnectionOptions): ConnectionOptions;
  /** Another connection as the service user (e.g. for a second writer); closed with the fixture. */
  connect(extra?: ConnectionOptions): Promise<NatsConnection>;
  /** A connection with other credentials (a plugin's user, say); closed with the fixture. */
  connectWith(credentials: NatsCredentials, extra?: ConnectionOptions): Promise<NatsConnection>;
  /** A connection as a tenant's confined user (its inbox prefix set); closed with the fixture. */
  connectAs(tenant: string, extra?: ConnectionOptions): Promise<NatsConnection>;
  close(): Promise<void>;
}

/**
 * Starts `nats-server` on a random port with a temporary JetStream store, with authorization
 * on as `flexcore up` runs it (the service user, plus a confined user per tenant in
 * `tenants`; anonymous clients are refused), and connects as the service user.
 * Throws with install instructions when the binary is missing.
 */
export async function startTestNats(options: TestNatsOptions = {}): Promise<TestNats> {
  const { tenants = [], extraUsers = [], ...serverOptions } = options;
  const seedsDir = await mkdtemp(join(tmpdir(), "flexcore-test-seeds-"));
  const users = await generateNatsUsers({ tenants, seedsDir, extraUsers });
  const service = users.users.find((u) => u.name === SERVICE_USER)!;
  const server = await startNatsServer({ ...serverOptions, extraConfig: `${serverOptions.extraConfig ?? ""}\n${users.config}` });
  const credentials: NatsCredentials = { nkeySeedFile: service.seedFile };
  const extra: NatsConnection[] = [];
  const options_ = (more: ConnectionOptions = {}): ConnectionOptions =>
    natsConnectOptions(server.url, credentials, { maxReconnectAttempts: -1, reconnectTimeWait: 100, name: "flexcore-test", ...more });
  const nc = await connect(options_());
  const track = (c: NatsConnection): NatsConnection => {
    extra.push(c);
    return c;
  };
  const tenantUser = (tenant: string) => {
    const u = users.users.find((x) => x.name === tenant && x.name !== SERVICE_USER);
    if (!u) throw new Error(`startTestNats: tenant ${tenant} has no NATS user; list it in options.tenants`);
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
    credentials,
    get env() {
      return { NATS_URL: server.url, ...credentialsToEnv(credentials) };
    },
    tenantSeedFile: (tenant) => tenantUser(tenant).seedFile,
    options: options_,
    connect: async (more) => track(await connect(options_(more))),
    connectWith: async (creds, more = {}) => track(await connect(natsConnectOptions(server.url, creds, { maxReconnectAttempts: 0, ...more }))),
    connectAs: async (tenant, more = {}) => {
      const u = tenantUser(tenant);
      return track(await connect(natsConnectOptions(server.url, { nkeySeedFile: u.seedFile }, { maxReconnectAttempts: 0, name: `tenant-${tenant}`, inboxPrefix: u.inboxPrefix!, ...more })));
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
