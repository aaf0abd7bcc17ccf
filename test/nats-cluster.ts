import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import type { ConnectionOptions, NatsConnection } from "@nats-io/transport-node";
import { generateNatsUsers, SERVICE_USER } from "../gateway/index.js";
import { credentialsToEnv, ensureTopology, natsConnectOptions, startNatsServer } from "../streams/index.js";
import type { NatsCredentials, NatsServer } from "../streams/index.js";

/** Options of {@link startTestCluster}. */
export interface TestClusterOptions {
  /** Nodes. @default 3 */
  readonly size?: number;
  /** Extra configuration for every node. */
  readonly extraConfig?: string;
  /** Provision FlexCore's streams and buckets with one replica per node (`ensureTopology`). @default false */
  readonly topology?: boolean;
}

/** A cluster of real nats-servers on loopback, authorization on, for failure tests. */
export interface TestCluster extends AsyncDisposable {
  readonly nodes: readonly NatsServer[];
  /** The client URLs, comma-separated (what `NATS_URL` takes). */
  readonly url: string;
  /** Connected as FlexCore's service user, to any node (it fails over). */
  readonly nc: NatsConnection;
  readonly credentials: NatsCredentials;
  /** `NATS_URL` (every node) and the service user's credential variables, for a child process. */
  readonly env: Readonly<Record<string, string>>;
  /** Another connection as the service user; closed with the cluster. */
  connect(extra?: ConnectionOptions): Promise<NatsConnection>;
  /** The index in {@link nodes} of the node leading a stream (its server name is `n<index>`). */
  leaderOf(stream: string): Promise<number>;
  close(): Promise<void>;
}

/** How long {@link TestCluster.leaderOf} waits for a stream to have a leader. */
const LEADER_WAIT_MS = 30_000;

/** A TCP port free right now on 127.0.0.1 (for the cluster routes, which must be known before start). */
function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => res(port));
    });
  });
}

/**
 * Starts a JetStream cluster of `size` nats-servers on loopback (random client ports, temp
 * stores, server names `n0`, `n1`, ...), with FlexCore's service user and no anonymous
 * access, and waits until JetStream has a meta leader.
 */
export async function startTestCluster(options: TestClusterOptions = {}): Promise<TestCluster> {
  const size = options.size ?? 3;
  const seedsDir = await mkdtemp(join(tmpdir(), "flexcore-cluster-seeds-"));
  const users = await generateNatsUsers({ tenants: [], seedsDir });
  const credentials: NatsCredentials = { nkeySeedFile: users.users.find((u) => u.name === SERVICE_USER)!.seedFile };
  const routePorts = await Promise.all(Array.from({ length: size }, () => freePort()));
  const routes = routePorts.map((p) => JSON.stringify(`nats://127.0.0.1:${p}`)).join(", ");
  const nodes: NatsServer[] = [];
  try {
    const started = await Promise.all(routePorts.map((port, i) =>
      startNatsServer({
        extraConfig: [
          `server_name: n${i}`,
          `cluster { name: flexcore-test, listen: "127.0.0.1:${port}", routes: [${routes}] }`,
          options.extraConfig ?? "",
          users.config,
        ].join("\n"),
      })));
    nodes.push(...started);
  } catch (err) {
    await Promise.all(nodes.map((n) => n.close()));
    await rm(seedsDir, { recursive: true, force: true });
    throw err;
  }
  const url = nodes.map((n) => n.url).join(",");
  const extra: NatsConnection[] = [];
  const open = (more: ConnectionOptions = {}): Promise<NatsConnection> =>
    connect(natsConnectOptions(url, credentials, { maxReconnectAttempts: -1, reconnectTimeWait: 100, name: "flexcore-test-cluster", ...more }));
  const nc = await open();
  // JetStream answers once the meta group has a leader.
  const deadline = Date.now() + 30_000;
  for (;;) {
    const ok = await jetstreamManager(nc, { timeout: 2_000 }).then((jsm) => jsm.getAccountInfo()).then(() => true, () => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error("the test cluster's JetStream did not elect a meta leader within 30 s");
    await new Promise((r) => setTimeout(r, 200));
  }
  // A meta leader may not know every peer yet ("no suitable peers for placement" for an R3
  // stream): place and remove a probe stream on all nodes before handing the cluster out.
  for (let n = 0; ; n++) {
    const probe = `FLEX_PROBE_${n}`;
    const placed = await jetstreamManager(nc, { timeout: 5_000 }).then(async (jsm) => {
      await jsm.streams.add({ name: probe, subjects: [`_flex_probe.${n}`], num_replicas: size, storage: StorageType.Memory });
      await jsm.streams.delete(probe);
      return true;
    }, () => false).catch(() => false);
    if (placed) break;
    if (Date.now() > deadline) throw new Error(`the test cluster could not place an R${size} stream within 30 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
  // On a busy machine the first creations of the replicated streams can still time out: again, for a while.
  for (let attempt = 1; options.topology; attempt++) {
    try {
      await ensureTopology(nc, { replicas: size });
      break;
    } catch (err) {
      if (attempt >= 10) throw err;
      await new Promise((r) => setTimeout(r, 1_000));
    }
  }
  const close = async (): Promise<void> => {
    for (const c of [nc, ...extra]) if (!c.isClosed()) await c.close().catch(() => undefined);
    await Promise.all(nodes.map((n) => n.close()));
    await rm(seedsDir, { recursive: true, force: true });
  };
  return {
    nodes,
    url,
    nc,
    credentials,
    env: { NATS_URL: url, ...credentialsToEnv(credentials) },
    connect: async (more) => {
      const c = await open(more);
      extra.push(c);
      return c;
    },
    leaderOf: async (stream) => {
      // During an election the API may time out or answer without a leader: ask again for a while.
      const until = Date.now() + LEADER_WAIT_MS;
      for (;;) {
        const leader = await jetstreamManager(nc, { timeout: 5_000 })
          .then((jsm) => jsm.streams.info(stream))
          .then((info) => info.cluster?.leader, () => undefined);
        const index = leader ? Number(/^n(\d+)$/u.exec(leader)?.[1]) : Number.NaN;
        if (Number.isInteger(index)) return index;
        if (Date.now() > until) throw new Error(`stream ${stream} has no leader after ${LEADER_WAIT_MS} ms (${leader ?? "none"})`);
        await new Promise((r) => setTimeout(r, 250));
      }
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** Messages stored under `filter` in `stream`, by the stream leader's count. */
export async function storedCount(nc: NatsConnection, stream: string, filter: string): Promise<number> {
  const info = await (await jetstreamManager(nc)).streams.info(stream, { subjects_filter: filter });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

/**
 * The messages stored under `filter`, counted by the value of `header` (the event id, the
 * causation id), read again until the read agrees with the leader's count (or a minute passed):
 * after a leader change a replica can briefly lag.
 */
export async function countByHeader(nc: NatsConnection, stream: string, filter: string, header: string): Promise<Map<string, number>> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const stored = await storedCount(nc, stream, filter);
    const counts = new Map<string, number>();
    if (stored > 0) {
      const consumer = await jetstream(nc).consumers.get(stream, { filter_subjects: filter });
      let remaining = (await consumer.info(true)).num_pending;
      if (remaining > 0) {
        const messages = await consumer.consume({ max_messages: 4096 });
        for await (const m of messages) {
          const id = m.headers?.get(header) ?? "";
          counts.set(id, (counts.get(id) ?? 0) + 1);
          if (--remaining <= 0) break;
        }
        await messages.close();
      }
    }
    if ([...counts.values()].reduce((a, b) => a + b, 0) === stored || Date.now() > deadline) return counts;
    await sleep(500);
  }
}
