import { stat } from "node:fs/promises";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect, headers } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { AckPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { BUCKETS, createPublisher, encodeEvent, ensureTopology, STREAMS } from "../streams/index.js";
import { startTestNats } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { generateNatsUsers, seededTenants, tenantInboxPrefix } from "./nats-users.js";

let nats: TestNats;
const TENANTS = ["acme", "globex", "acme+eu"];

beforeAll(async () => {
  nats = await startTestNats({ tenants: TENANTS });
  await ensureTopology(nats.nc);
}, 60_000);

afterAll(async () => {
  await nats?.close();
});

/** Collects the permission violations the server reports to a connection. */
function violations(nc: NatsConnection): string[] {
  const seen: string[] = [];
  void (async () => {
    for await (const s of nc.status()) if (s.type === "error") seen.push(String((s as { error?: Error }).error?.message ?? s.type));
  })();
  return seen;
}

async function eventsOn(filter: string): Promise<number> {
  const jsm = await jetstreamManager(nats.nc);
  const info = await jsm.streams.info(STREAMS.events, { subjects_filter: ">" });
  const prefix = filter.replace(/>$/u, "");
  return Object.entries(info.state.subjects ?? {}).reduce((a, [s, n]) => a + (s === filter || (filter.endsWith(">") && s.startsWith(prefix)) ? n : 0), 0);
}

describe("NATS users (flexcore nats-users)", () => {
  it("writes 0600 seeds, reuses them on a second run, and lists the seeded tenants", async () => {
    const dir = await mkdtemp(join(tmpdir(), "flexcore-seeds-"));
    try {
      const first = await generateNatsUsers({ tenants: ["acme", "a/b"], seedsDir: dir });
      for (const u of first.users) expect((await stat(u.seedFile)).mode & 0o777).toBe(0o600);
      const again = await generateNatsUsers({ tenants: ["acme", "a/b"], seedsDir: dir });
      expect(again.users.map((u) => u.publicKey)).toEqual(first.users.map((u) => u.publicKey));
      expect(await seededTenants(dir)).toEqual(["a/b", "acme"]);
      expect(first.config).toContain('publish: { allow: ["evt.acme.>"], deny: ["evt.acme.workflow.>", "evt.acme.plugin.>", "evt.acme.metrics.>"] }');
      expect(first.config).not.toContain("allow_responses");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses anonymous clients and unknown keys", async () => {
    await expect(connect({ servers: nats.server.url, maxReconnectAttempts: 0 })).rejects.toThrow(/authoriz/i);
    await expect(connect({ servers: nats.server.url, user: "flexcore", pass: "guess", maxReconnectAttempts: 0 })).rejects.toThrow(/authoriz/i);
  });

  it("a tenant publishes its own events through JetStream, gets the ack, and watches them live", async () => {
    const acme = await nats.connectAs("acme");
    const live = acme.subscribe("evt.acme.>", { max: 1 });
    const e = encodeEvent({ type: "Read", data: { v: 1 } });
    const ack = await jetstream(acme).publish("evt.acme.sensor.s1", e.data, { headers: e.headers });
    expect(ack.stream).toBe(STREAMS.events);
    for await (const m of live) expect(m.subject).toBe("evt.acme.sensor.s1");
    // A tenant name with `+` works as well.
    const eu = await nats.connectAs("acme+eu");
    const other = encodeEvent({ type: "Read", data: { v: 1 } });
    await jetstream(eu).publish("evt.acme+eu.sensor.s1", other.data, { headers: other.headers });
    expect(await eventsOn("evt.acme+eu.>")).toBe(1);
  });

  it("a tenant cannot write anywhere but its own events: other tenants, reserved categories, derived, DLQ, KV", async () => {
    const acme = await nats.connectAs("acme");
    const seen = violations(acme);
    const before = { globex: await eventsOn("evt.globex.>"), acme: await eventsOn("evt.acme.>") };
    const e = encodeEvent({ type: "Forged", data: { v: 666 } });
    for (const subject of [
      "evt.globex.sensor.s1", "evt.acme.workflow.run1", "evt.acme.plugin.p", "evt.acme.metrics.gateway", "evt._system.metrics.gateway",
      "drv.acme.proc.k", "drv.globex.proc.k", "dlq.acme.proc", `$KV.${BUCKETS.auth}.user.x`, `$KV.${BUCKETS.workflows}.def.acme.w`,
      // A forged plugin choice would redirect every instance's calls and hand them a manifest.
      `$KV.${BUCKETS.state}.plugin-version.echo`,
    ]) acme.publish(subject, e.data, { headers: e.headers });
    await acme.flush();
    await new Promise((r) => setTimeout(r, 200));
    expect(seen.filter((s) => /permissions violation/i.test(s)).length).toBeGreaterThanOrEqual(11);
    expect(await eventsOn("evt.globex.>")).toBe(before.globex);
    expect(await eventsOn("evt.acme.>")).toBe(before.acme);
    expect(await eventsOn("evt._system.>")).toBe(0);
    const jsm = await jetstreamManager(nats.nc);
    expect((await jsm.streams.info(STREAMS.derived)).state.messages).toBe(0);
    expect((await jsm.streams.info(STREAMS.dlq)).state.messages).toBe(0);
    const kv = await new Kvm(nats.nc).open(BUCKETS.auth);
    expect(await kv.get("user.x")).toBeNull();
    expect(await (await new Kvm(nats.nc).open(BUCKETS.state)).get("plugin-version.echo")).toBeNull();
  });

  it("a tenant cannot read other tenants' subjects, other inboxes, KV buckets or streams", async () => {
    const acme = await nats.connectAs("acme");
    const subs = ["evt.>", "evt.globex.>", "drv.globex.>", `${tenantInboxPrefix("globex")}.>`, "_INBOX.>", `$KV.${BUCKETS.auth}.>`, "$JS.>"].map((s) => acme.subscribe(s));
    await acme.flush();
    for (const s of subs) await expect(s.closed).resolves.toBeInstanceOf(Error);
    const kvm = new Kvm(acme);
    await expect(kvm.open(BUCKETS.auth).then((kv) => kv.get("anything"))).rejects.toThrow();
    await expect(jetstreamManager(acme, { timeout: 1_000 }).then((jsm) => jsm.streams.info(STREAMS.events))).rejects.toThrow();
    // Direct get of another tenant's last event: the JetStream API is closed to tenants.
    await expect(acme.request(`$JS.API.DIRECT.GET.${STREAMS.events}.evt.globex.sensor.s1`, undefined, { timeout: 1_000 })).rejects.toThrow();
  });

  it("a tenant cannot delete, purge or consume anything through the JetStream API", async () => {
    const jsm = await jetstreamManager(nats.nc);
    await jsm.consumers.add(STREAMS.events, { durable_name: "flexcore_owned", ack_policy: AckPolicy.Explicit, filter_subject: "evt.globex.>" });
    const globex = await nats.connectAs("globex");
    const e = encodeEvent({ type: "Read", data: { v: 2 } });
    await jetstream(globex).publish("evt.globex.sensor.s9", e.data, { headers: e.headers });
    const stored = (await jsm.streams.info(STREAMS.events)).state.messages;

    const acme = await nats.connectAs("acme");
    const attempts = [
      `$JS.API.STREAM.PURGE.${STREAMS.events}`, `$JS.API.STREAM.DELETE.${STREAMS.events}`, `$JS.API.STREAM.MSG.DELETE.${STREAMS.events}`,
      `$JS.API.STREAM.UPDATE.${STREAMS.events}`, `$JS.API.CONSUMER.DELETE.${STREAMS.events}.flexcore_owned`,
      `$JS.API.CONSUMER.MSG.NEXT.${STREAMS.events}.flexcore_owned`, `$JS.API.CONSUMER.CREATE.${STREAMS.events}.mine.evt.acme.>`,
      `$JS.API.STREAM.PURGE.KV_${BUCKETS.auth}`, `$JS.API.STREAM.DELETE.KV_${BUCKETS.workflows}`,
    ];
    for (const subject of attempts) {
      await expect(acme.request(subject, new TextEncoder().encode("{}"), { timeout: 500 }), subject).rejects.toThrow();
    }
    expect((await jsm.streams.info(STREAMS.events)).state.messages).toBe(stored);
    const owned = await jsm.consumers.info(STREAMS.events, "flexcore_owned");
    expect(owned.num_pending).toBeGreaterThan(0);
    expect(owned.delivered.stream_seq).toBe(0);
    expect((await jsm.consumers.list(STREAMS.events).next()).map((c) => c.name)).toEqual(["flexcore_owned"]);
    for (const name of Object.values(BUCKETS)) await expect(jsm.streams.info(`KV_${name}`)).resolves.toBeTruthy();
  });

  it("a tenant watching its own subjects cannot answer FlexCore's publishes (no forged acks)", async () => {
    const acme = await nats.connectAs("acme");
    const seen = violations(acme);
    const sub = acme.subscribe("evt.acme.>");
    let replied = 0;
    void (async () => {
      for await (const m of sub) {
        if (!m.reply) continue;
        // Try to answer FlexCore's JetStream publish before the server does, with a fake error.
        const h = headers();
        h.set("Forged", "1");
        m.respond(new TextEncoder().encode(JSON.stringify({ error: { code: 503, err_code: 10000, description: "forged" } })), { headers: h });
        replied++;
      }
    })();
    await acme.flush();
    const publisher = createPublisher(nats.nc);
    const acks = [];
    for (let i = 0; i < 20; i++) {
      const ev = encodeEvent({ type: "Read", data: { i } });
      acks.push(await publisher.publish(`evt.acme.sensor.forge`, ev.data, { headers: ev.headers }));
    }
    await publisher.close();
    expect(acks.every((a) => a.stream === STREAMS.events && a.seq > 0)).toBe(true);
    expect(await eventsOn("evt.acme.sensor.forge")).toBe(20);
    await new Promise((r) => setTimeout(r, 100));
    expect(replied).toBeGreaterThan(0);
    expect(seen.some((s) => /permissions violation/i.test(s))).toBe(true);
    sub.unsubscribe();
  });
});
