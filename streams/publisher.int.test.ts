import { afterEach, describe, expect, it } from "vitest";
import { jetstream } from "@nats-io/jetstream";
import { setTimeout as sleep } from "node:timers/promises";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { createPublisher, encodeEvent, ensureTopology, HEADERS, PayloadTooLargeError, PublisherClosedError, serverFeatures, STREAMS, StreamUnavailableError } from "./index.js";
import type { OutgoingMessage, PublishAck, Publisher } from "./index.js";

let nats: TestNats | undefined;
afterEach(async () => {
  await nats?.close();
  nats = undefined;
});

/** Counts stored events by event id under a subject filter, with a plain JetStream consumer. */
async function countById(t: TestNats, filter: string): Promise<Map<string, number>> {
  const js = jetstream(t.nc);
  const consumer = await js.consumers.get(STREAMS.events, { filter_subjects: filter });
  const counts = new Map<string, number>();
  const info = await consumer.info(true).catch(() => undefined);
  let remaining = info?.num_pending;
  const messages = await consumer.consume({ max_messages: 4096 });
  for await (const m of messages) {
    const id = m.headers?.get(HEADERS.msgId) ?? "";
    counts.set(id, (counts.get(id) ?? 0) + 1);
    if (m.info.pending === 0 || (remaining !== undefined && --remaining <= 0)) break;
  }
  await messages.close();
  return counts;
}

function publishAll(publisher: Publisher, tenant: string, ids: readonly string[]): Array<Promise<PublishAck>> {
  return ids.map((id, i) => {
    const e = encodeEvent({ id, type: "ReadingRecorded", data: { sensor: `s${i % 100}`, value: i } });
    return publisher.publish(`evt.${tenant}.sensor.s${i % 100}`, e.data, { headers: e.headers });
  });
}

describe.each(["off", "auto"] as const)("publisher, batching %s", (batching) => {
  it("kill -9 of nats-server during a 50,000-event ingest: every acked event is stored exactly once after retrying the rest", async () => {
    nats = await startTestNats();
    await ensureTopology(nats.nc);
    const tenant = uniqueName("k");
    const ids = Array.from({ length: 50_000 }, (_, i) => `${tenant}-${i}`);
    const publisher = createPublisher(nats.nc, { ackTimeoutMs: 500, maxAttempts: 3, deadlineMs: 10_000, batching });
    const acked = new Set<string>();
    const failed: string[] = [];
    let killed = false;
    const settle = publishAll(publisher, tenant, ids).map((p, i) =>
      p.then(
        () => {
          acked.add(ids[i]!);
          if (!killed && acked.size >= 15_000) {
            killed = true;
            void nats!.server.kill("SIGKILL").then(() => sleep(300)).then(() => nats!.server.restart());
          }
        },
        () => void failed.push(ids[i]!),
      ),
    );
    await Promise.all(settle);
    expect(killed).toBe(true);
    expect(acked.size + failed.length).toBe(ids.length);
    // Retry what was not acked, with the same ids.
    let retry = failed.splice(0);
    for (let round = 0; retry.length > 0 && round < 5; round++) {
      const results = await Promise.allSettled(publishAll(publisher, tenant, retry));
      retry = retry.filter((_, i) => results[i]!.status === "rejected");
    }
    expect(retry).toEqual([]);
    await publisher.close();

    const counts = await countById(nats, `evt.${tenant}.>`);
    const missingAcked = [...acked].filter((id) => !counts.has(id));
    const twice = [...counts].filter(([, n]) => n > 1);
    expect(missingAcked).toEqual([]);
    expect(twice).toEqual([]);
    expect(counts.size).toBe(ids.length);
  });

  it("server down for 5 s and back: the publisher reconnects and every publish ends acked or failed", async () => {
    nats = await startTestNats();
    await ensureTopology(nats.nc);
    const tenant = uniqueName("d");
    const publisher = createPublisher(nats.nc, { ackTimeoutMs: 500, maxAttempts: 4, deadlineMs: 30_000, batching });
    const before = await Promise.all(publishAll(publisher, tenant, Array.from({ length: 500 }, (_, i) => `${tenant}-a${i}`)));
    expect(before).toHaveLength(500);

    await nats.server.kill("SIGKILL");
    const duringIds = Array.from({ length: 2_000 }, (_, i) => `${tenant}-b${i}`);
    const during = publishAll(publisher, tenant, duringIds).map((p) => p.then(() => "acked" as const, () => "failed" as const));
    await sleep(5_000);
    await nats.server.restart();
    const outcomes = await Promise.all(during);
    expect(outcomes.length).toBe(duringIds.length);
    const ackedIds = duringIds.filter((_, i) => outcomes[i] === "acked");
    // Reconnection resends, so nothing sent while the server was down is lost.
    expect(ackedIds.length).toBe(duringIds.length);
    await publisher.close();
    const counts = await countById(nats, `evt.${tenant}.>`);
    expect(counts.size).toBe(2_500);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
  });

  it("a subject no stream stores fails with StreamUnavailableError instead of hanging", async () => {
    nats = await startTestNats();
    await ensureTopology(nats.nc);
    const publisher = createPublisher(nats.nc, { ackTimeoutMs: 200, maxAttempts: 2, batching });
    const e = encodeEvent({ type: "T", data: 1 });
    await expect(publisher.publish("nostream.x", e.data, { headers: e.headers })).rejects.toBeInstanceOf(StreamUnavailableError);
    expect(publisher.stats.inFlight).toBe(0);
    await publisher.close();
  });

  it("applies backpressure: never more than maxInFlight unacknowledged", async () => {
    nats = await startTestNats();
    await ensureTopology(nats.nc);
    const publisher = createPublisher(nats.nc, { maxInFlight: 16, batching });
    let peak = 0;
    const tenant = uniqueName("bp");
    const all = publishAll(publisher, tenant, Array.from({ length: 2_000 }, (_, i) => `${tenant}-${i}`)).map((p) =>
      p.then(() => void (peak = Math.max(peak, publisher.stats.inFlight))),
    );
    await Promise.all(all);
    expect(peak).toBeLessThanOrEqual(16);
    expect(publisher.stats.acked).toBe(2_000);
    await publisher.close();
  });

  it("publishAll: one outcome per message at its index, the window kept, and after a kill -9 of nats-server mid-batch every acked event is stored once", async () => {
    nats = await startTestNats();
    await ensureTopology(nats.nc);
    const t = nats;
    const publisher = createPublisher(t.nc, { maxInFlight: 64, ackTimeoutMs: 500, maxAttempts: 3, deadlineMs: 10_000, batching });
    const tenant = uniqueName("all");
    const ids = Array.from({ length: 10_000 }, (_, i) => `${tenant}-${i}`);
    const messages: OutgoingMessage[] = ids.map((id, i) => {
      const e = encodeEvent({ id, type: "ReadingRecorded", data: { value: i } });
      return { subject: `evt.${tenant}.sensor.s${i % 10}`, data: e.data, headers: e.headers };
    });
    const unstored = encodeEvent({ type: "T", data: 1 });
    messages[5] = { subject: "nostream.x", data: unstored.data, headers: unstored.headers };
    messages[7] = { subject: `evt.${tenant}.sensor.big`, data: new Uint8Array((t.nc.info?.max_payload ?? 1_048_576) + 1) };
    let peak = 0;
    let killed = false;
    const watch = setInterval(() => {
      peak = Math.max(peak, publisher.stats.inFlight);
      if (!killed && publisher.stats.acked >= 3_000) {
        killed = true;
        void t.server.kill("SIGKILL").then(() => sleep(300)).then(() => t.server.restart());
      }
    }, 1);
    const outcomes = await publisher.publishAll(messages);
    clearInterval(watch);
    expect(killed).toBe(true);
    expect(outcomes).toHaveLength(messages.length);
    expect(outcomes[5]).toBeInstanceOf(StreamUnavailableError);
    expect(outcomes[7]).toBeInstanceOf(PayloadTooLargeError);
    expect(peak).toBeLessThanOrEqual(64);
    const acked = ids.filter((_, i) => outcomes[i] !== undefined && !(outcomes[i] instanceof Error));
    for (const [i, o] of outcomes.entries()) expect(o instanceof Error || (typeof o?.seq === "number" && o.seq > 0) || o?.batched === true && o.seq > 0, `outcome ${i}`).toBe(true);
    // On 2.14+ "auto" really batches; before, it falls back to one ack per message.
    if (batching === "auto") expect(outcomes.some((o) => !(o instanceof Error) && o.batched)).toBe(serverFeatures(t.server.version).fastIngest);
    expect(acked.length).toBeGreaterThanOrEqual(3_000);
    const counts = await countById(t, `evt.${tenant}.>`);
    for (const id of acked) expect(counts.get(id), id).toBe(1);
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
    expect(await publisher.publishAll([])).toEqual([]);
    await expect(publisher.publishAll("x" as never)).rejects.toMatchObject({ field: "messages" });
    await publisher.close();
    // After close nothing is sent: each message ends with PublisherClosedError, none is left pending.
    const late = await publisher.publishAll(messages.slice(0, 3));
    expect(late.every((o) => o instanceof PublisherClosedError)).toBe(true);
  }, 120_000);
});
