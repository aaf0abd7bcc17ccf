// A tenant writing the NATS protocol by hand can store an event whose header value holds a
// bare LF (a header line ends at CRLF only; nats-server stores it, nats.js would refuse to
// write it). The processor runtime copies the source's time and ids into each derived
// event's headers: through the real broker, such a value must neither forge a header of the
// derived event nor stall the processor.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NatsConnection } from "@nats-io/transport-node";
import { createPublisher, ensureTopology, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { parseConfig, pipelineSections, startProcessorRuntime } from "./index.js";
import type { RemoteBatchResult, RemoteKinds } from "./index.js";
import { countMessages, publishSeries, readStream, waitFor } from "./testing.js";

const TENANT = "hdrt";
let nats: TestNats;
let publisher: Publisher;

beforeAll(async () => {
  nats = await startTestNats({ tenants: [TENANT] });
  await ensureTopology(nats.nc);
  publisher = createPublisher(nats.nc);
});
afterAll(async () => {
  await publisher?.close();
  await nats?.close();
});

/** Sends a raw HPUB (header block as given) on `nc`: what any client may write on the wire. */
function rawPublish(nc: NatsConnection, subject: string, headerBlock: string, body: string): void {
  const h = Buffer.byteLength(headerBlock);
  const cmd = `HPUB ${subject} ${h} ${h + Buffer.byteLength(body)}\r\n${headerBlock}${body}\r\n`;
  (nc as unknown as { protocol: { sendCommand(cmd: string): void } }).protocol.sendCommand(cmd);
}

const echo: RemoteKinds = {
  has: (kind) => kind === "echo/echo",
  isPermanent: () => false,
  async process(b): Promise<RemoteBatchResult> {
    return { states: {}, outputs: b.inputs.map((x, i) => ({ input: i, type: "Echoed", data: x.data })) };
  },
};

describe("source header values with a bare line break", () => {
  it("are not carried into derived events' headers, and the processor keeps going", async () => {
    const name = uniqueName("hdr");
    const tenantNc = await nats.connectAs(TENANT);
    const forged = "NATS/1.0\r\nNats-Msg-Id: evil-1\r\nFlex-Type: Evil\r\nFlex-Time: 2026-01-01T00:00:00.000Z\nNats-Msg-Id: forged-time\r\nFlex-Correlation-Id: c\nNats-Msg-Id: forged-corr\r\nContent-Type: application/json\r\n\r\n";
    rawPublish(tenantNc, `evt.${TENANT}.x.a`, forged, '{"i":-1}');
    await tenantNc.flush();
    await waitFor(async () => (await countMessages(nats.nc, STREAMS.events, `evt.${TENANT}.x.a`)) === 1, 10_000, "the raw event stored by the broker");
    await publishSeries(publisher, TENANT, "x", ["a"], (i) => ({ i }), 5);
    const runtime = await startProcessorRuntime(nats.nc, {
      processors: parseConfig(`processors:\n  - name: ${name}\n    kind: echo/echo\n    subjects: ["evt.${TENANT}.x.*"]\n    batch_size: 4\n`, pipelineSections({ threads: 1 })).processors,
      threads: 1,
      metricsIntervalMs: 0,
      remote: echo,
      log: () => undefined,
    });
    try {
      await waitFor(async () => (await countMessages(nats.nc, STREAMS.derived, `drv.${TENANT}.${name}.>`)) === 6, 20_000, "6 derived events");
      await runtime.idle();
      // readStream decodes the headers with nats.js, which refuses a value with a line break.
      const derived = await readStream(nats.nc, STREAMS.derived, `drv.${TENANT}.${name}.>`);
      expect(derived.map((d) => JSON.parse(d.data) as { i: number }).map((d) => d.i)).toEqual([-1, 0, 1, 2, 3, 4]);
      const first = derived[0]!;
      expect(JSON.stringify(first.headers)).not.toContain("forged");
      expect(first.msgId).toBe(`${name}:${first.headers["Flex-Source-Seq"]}:0`);
      // The values with a line break count as absent: the correlation id falls back to the
      // source's id, the time to its stored time.
      expect(first.headers["Flex-Causation-Id"]).toBe("evil-1");
      expect(first.headers["Flex-Correlation-Id"]).toBe("evil-1");
      expect(Number.isNaN(Date.parse(first.headers["Flex-Time"]!))).toBe(false);
      expect(runtime.metrics()[0]).toMatchObject({ processed: 6, outputs: 6, errors: 0, deadLettered: 0 });
    } finally {
      await runtime.close();
    }
  });
});
