// The sink driver on a real nats-server (FLEX_EVENTS, FLEX_DLQ) with a scriptable sink
// plugin served in-process, and end to end with the http-sink plugin as a child process.
import { createServer } from "node:http";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPluginProcess } from "../test/plugin-process.js";
import type { PluginProcess } from "../test/plugin-process.js";
import { startPluginTestNats } from "../test/plugin-nats.js";
import type { PluginTestNats } from "../test/plugin-nats.js";
import { encodeEvent, ensureTopology, InvalidOptionError, STREAMS } from "../streams/index.js";
import { createPluginClient } from "./client.js";
import { PluginInputError } from "./errors.js";
import { httpSinkPluginCommand } from "./http-sink/launch.js";
import type { SinkEvent } from "./protocol.js";
import { definePlugin, serve } from "./sdk.js";
import type { ServedPlugin } from "./sdk.js";
import { ServiceError } from "./service.js";
import { createSinkDriver } from "./sink-driver.js";
import type { SinkDriver } from "./sink-driver.js";

let nats: PluginTestNats;
let served: ServedPlugin;
const drivers: SinkDriver[] = [];

/** What the scriptable sink saw and how it answers. */
const script = { calls: 0, fail: 0, received: [] as SinkEvent[], byTenant: new Map<string, SinkEvent[]>() };

const sinkPlugin = definePlugin({
  version: "1.0.0",
  description: "scriptable sink",
  protocols: [1],
  sinks: {
    memory: {
      deliver(req) {
        script.calls += 1;
        if (script.fail > 0) {
          script.fail -= 1;
          throw new ServiceError(503, "endpoint down");
        }
        const poison = req.events.findIndex((e) => (e.data as { poison?: boolean } | null)?.poison === true);
        if (poison === 0) throw new PluginInputError(`event ${req.events[0]!.id} is poison`);
        const ok = poison === -1 ? req.events : req.events.slice(0, poison);
        script.received.push(...ok);
        if (poison > 0) throw new PluginInputError("poison in the batch");
        return { delivered: req.events.length };
      },
    },
  },
});

async function publish(tenant: string, category: string, key: string, data: unknown, id: string): Promise<void> {
  const e = encodeEvent({ id, type: "Thing", data });
  await jetstream(nats.nc).publish(`evt.${tenant}.${category}.${key}`, e.data, { headers: e.headers, msgID: e.id });
}

async function consumerState(name: string): Promise<{ pending: number; ackPending: number }> {
  const info = await (await jetstreamManager(nats.nc)).consumers.info(STREAMS.events, name);
  return { pending: info.num_pending, ackPending: info.num_ack_pending };
}

async function dlqCount(subject: string): Promise<number> {
  const info = await (await jetstreamManager(nats.nc)).streams.info(STREAMS.dlq, { subjects_filter: subject });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

async function waitFor(check: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function driver(tenant: string, name: string, more: Partial<Parameters<typeof createSinkDriver>[1]> = {}): SinkDriver {
  const d = createSinkDriver(nats.nc, { client: createPluginClient(nats.nc, "sink-test"), sink: "memory", name, tenant, stream: "events", subjects: [`evt.${tenant}.>`], batchSize: 16, backoffMs: [50, 100], fetchMs: 1000, ...more });
  drivers.push(d);
  return d;
}

beforeAll(async () => {
  nats = await startPluginTestNats({ plugins: ["sink-test", "http-sink"] });
  await ensureTopology(nats.nc);
  served = await serve(sinkPlugin, { env: nats.pluginEnv("sink-test"), handleSignals: false, logger: pino({ level: "silent" }), exit: () => undefined });
}, 30_000);

afterAll(async () => {
  for (const d of drivers) await d.close();
  await served?.stop();
  await nats?.close();
});

describe("sink driver", () => {
  it("delivers every event in per-subject order and acks only what the sink confirmed", async () => {
    for (let i = 0; i < 40; i++) await publish("t1", "orders", `o${i % 4}`, { i }, `t1-${i}`);
    const d = driver("t1", "all");
    await d.start();
    await waitFor(async () => (await consumerState(d.consumer)).pending === 0 && (await consumerState(d.consumer)).ackPending === 0, 10_000, "all acked");
    const mine = script.received.filter((e) => e.subject.startsWith("evt.t1."));
    expect(mine.map((e) => e.id)).toEqual(Array.from({ length: 40 }, (_, i) => `t1-${i}`));
    expect(mine[0]).toMatchObject({ subject: "evt.t1.orders.o0", type: "Thing", data: { i: 0 } });
    expect(d.metrics()).toEqual({ delivered: 40, failed: 0, retried: 0, deadLettered: 0 });
  });

  it("a 5xx naks with backoff: the batch comes back and is delivered, nothing acked before", async () => {
    script.fail = 2;
    for (let i = 0; i < 10; i++) await publish("t2", "orders", `o${i % 2}`, { i }, `t2-${i}`);
    const d = driver("t2", "retry");
    await d.start();
    await waitFor(async () => (await consumerState(d.consumer)).pending === 0 && (await consumerState(d.consumer)).ackPending === 0, 10_000, "all acked");
    const mine = script.received.filter((e) => e.subject.startsWith("evt.t2."));
    expect(mine.map((e) => e.id)).toEqual(Array.from({ length: 10 }, (_, i) => `t2-${i}`));
    expect(d.metrics()).toMatchObject({ delivered: 10, failed: 2, deadLettered: 0 });
    expect(d.metrics().retried).toBe(20);
  });

  it("a 4xx dead-letters only the events the sink refuses; the others are delivered and everything is acked", async () => {
    for (let i = 0; i < 8; i++) await publish("t3", "orders", "o1", i === 5 ? { i, poison: true } : { i }, `t3-${i}`);
    const d = driver("t3", "poison");
    await d.start();
    await waitFor(async () => (await consumerState(d.consumer)).pending === 0 && (await consumerState(d.consumer)).ackPending === 0, 10_000, "all acked");
    expect(await dlqCount("dlq.t3.sink-poison")).toBe(1);
    const mine = new Set(script.received.filter((e) => e.subject.startsWith("evt.t3.")).map((e) => e.id));
    expect([...mine].sort()).toEqual(["t3-0", "t3-1", "t3-2", "t3-3", "t3-4", "t3-6", "t3-7"]);
    expect(d.metrics()).toMatchObject({ deadLettered: 1 });
    const consumer = await jetstream(nats.nc).consumers.get(STREAMS.dlq, { filter_subjects: "dlq.t3.sink-poison" });
    const m = await consumer.next();
    expect(m?.headers?.get("Flex-Source-Seq")).toBeDefined();
    expect(m?.json<{ data: unknown; error: { code: string } }>()).toMatchObject({ data: { i: 5, poison: true }, error: { code: "FLEX_PLUGIN_REJECTED" } });
  });

  it.each([["evt.other.>"], ["evt.*.>"], ["evt.>"], ["drv.t4.>"], ["evt.t4"]])("refuses subjects outside the tenant or the stream: %s", (subject) => {
    expect(() => createSinkDriver(nats.nc, { client: createPluginClient(nats.nc, "sink-test"), sink: "memory", name: "x", tenant: "t4", stream: "events", subjects: [subject] })).toThrow(InvalidOptionError);
  });

  it("end to end with http-sink: nothing is acked while the endpoint fails; once it answers, each event is accepted once by idempotency key", async () => {
    let up = false;
    const accepted = new Map<string, number>();
    const server: Server = createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        if (!up) return void res.writeHead(503).end();
        const key = String(req.headers["idempotency-key"]);
        accepted.set(key, (accepted.get(key) ?? 0) + 1);
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const proc: PluginProcess = await startPluginProcess(nats, "http-sink", httpSinkPluginCommand());
    try {
      for (let i = 0; i < 12; i++) await publish("t5", "orders", `o${i % 3}`, { i }, `t5-${i}`);
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
      const d = createSinkDriver(nats.nc, { client: createPluginClient(nats.nc, "http-sink", { callTimeoutMs: 10_000 }), sink: "webhook", name: "hook", tenant: "t5", stream: "events", subjects: ["evt.t5.>"], batchSize: 5, backoffMs: [100], fetchMs: 1000, options: { url, secret: "0123456789abcdef0123", maxAttempts: 2, backoffMs: 10 } });
      drivers.push(d);
      await d.start();
      await waitFor(() => d.metrics().failed >= 2, 10_000, "two failed calls");
      expect(await consumerState(d.consumer)).toMatchObject({ pending: 7, ackPending: 5 });
      expect(d.metrics().delivered).toBe(0);
      up = true;
      await waitFor(async () => (await consumerState(d.consumer)).pending === 0 && (await consumerState(d.consumer)).ackPending === 0, 15_000, "all acked");
      expect([...accepted.keys()].sort()).toEqual(Array.from({ length: 12 }, (_, i) => `t5-${i}`).sort());
      expect([...accepted.values()].every((n) => n === 1)).toBe(true);
      expect(d.metrics()).toMatchObject({ delivered: 12, deadLettered: 0 });
    } finally {
      await proc.kill();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
