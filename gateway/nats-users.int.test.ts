import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect, nkeyAuthenticator } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { encodeEvent, ensureTopology, startNatsServer, STREAMS } from "../streams/index.js";
import type { NatsServer } from "../streams/index.js";
import { generateNatsUsers, tenantInboxPrefix } from "./nats-users.js";
import type { NatsUsers } from "./nats-users.js";

let dir: string;
let server: NatsServer;
let users: NatsUsers;
const open: NatsConnection[] = [];

async function as(name: string): Promise<NatsConnection> {
  const u = users.users.find((x) => x.name === name)!;
  const seed = new TextEncoder().encode((await readFile(u.seedFile, "utf8")).trim());
  const nc = await connect({ servers: server.url, authenticator: nkeyAuthenticator(seed), ...(u.inboxPrefix ? { inboxPrefix: u.inboxPrefix } : {}), maxReconnectAttempts: 0 });
  open.push(nc);
  return nc;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-nats-users-"));
  users = await generateNatsUsers({ tenants: ["acme", "globex"], seedsDir: join(dir, "seeds") });
  server = await startNatsServer({ config: users.config });
  await ensureTopology(await as("flexcore"));
}, 60_000);

afterAll(async () => {
  for (const nc of open) await nc.close().catch(() => undefined);
  await server?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("flexcore nats-users", () => {
  it("writes 0600 seeds and reuses them on a second run", async () => {
    for (const u of users.users) expect((await stat(u.seedFile)).mode & 0o777).toBe(0o600);
    const again = await generateNatsUsers({ tenants: ["acme", "globex"], seedsDir: join(dir, "seeds") });
    expect(again.users.map((u) => u.publicKey)).toEqual(users.users.map((u) => u.publicKey));
    expect(users.config).toContain('publish: { allow: ["evt.acme.>"] }');
  });

  it("refuses unknown clients", async () => {
    await expect(connect({ servers: server.url, maxReconnectAttempts: 0 })).rejects.toThrow();
  });

  it("a tenant publishes its own events through JetStream and gets the ack", async () => {
    const acme = await as("acme");
    const e = encodeEvent({ type: "Read", data: { v: 1 } });
    const ack = await jetstream(acme).publish("evt.acme.sensor.s1", e.data, { headers: e.headers });
    expect(ack.stream).toBe(STREAMS.events);
  });

  it("a tenant cannot publish to another tenant, read streams, use other inboxes or the JetStream API", async () => {
    const acme = await as("acme");
    const errors: string[] = [];
    void (async () => {
      for await (const s of acme.status()) if (s.type === "error") errors.push(String((s as { error?: Error }).error?.message ?? s.type));
    })();
    const e = encodeEvent({ type: "Read", data: { v: 666 } });
    acme.publish("evt.globex.sensor.s1", e.data, { headers: e.headers });
    acme.publish("drv.acme.proc.k", e.data);
    const snoop = acme.subscribe(`${tenantInboxPrefix("globex")}.>`);
    const wide = acme.subscribe("evt.>");
    await acme.flush();
    await expect(jetstreamManager(acme, { timeout: 1_000 }).then((jsm) => jsm.streams.info(STREAMS.events))).rejects.toThrow();
    await expect(snoop.closed).resolves.toBeInstanceOf(Error);
    await expect(wide.closed).resolves.toBeInstanceOf(Error);
    await new Promise((r) => setTimeout(r, 200));
    expect(errors.join("\n")).toMatch(/permissions violation/i);

    const svc = await as("flexcore");
    const jsm = await jetstreamManager(svc);
    const info = await jsm.streams.info(STREAMS.events, { subjects_filter: "evt.>" });
    expect(Object.keys(info.state.subjects ?? {})).toEqual(["evt.acme.sensor.s1"]);
    const derived = await jsm.streams.info(STREAMS.derived);
    expect(derived.state.messages).toBe(0);
  });
});
