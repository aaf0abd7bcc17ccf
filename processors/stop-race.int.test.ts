// A runner's stop() can land while one of its pull loops is setting up a pull (between the
// loop's check and the end of `consumer.fetch()`). The redrive loop then awaited
// `messages.close()` before iterating: close() resolves only once an iterator consumes the
// stop it queues, so nothing ever resolved it and the stop hung for good (the scale-out test
// timed out at 300 s in CI). These tests put the stop exactly there.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import type { ConsumerMessages, JsMsg } from "@nats-io/jetstream";
import { ensureTopology, STREAMS } from "../streams/index.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { createConsumer, FETCH_EXPIRES_MS, fetchLoop } from "./delivery.js";
import type { FetchHost } from "./delivery.js";
import { redriveLoop } from "./recovery.js";
import type { RecoveryHost } from "./recovery.js";
import type { ResolvedProcessor } from "./config.js";

let nats: TestNats;
beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
});
afterAll(async () => nats?.close());

/** `stopping` reads false `falseReads` times, then true: the stop lands after the loop's own check. */
function stopAfter(falseReads: number): { readonly stopping: boolean } {
  let reads = 0;
  return {
    get stopping() {
      reads += 1;
      return reads > falseReads;
    },
  };
}

/** Resolves with the elapsed ms, or rejects when `p` has not settled within `ms`. */
async function within(p: Promise<unknown>, ms: number): Promise<number> {
  const t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still running after ${ms} ms`)), ms);
  });
  try {
    await Promise.race([p, limit]);
  } finally {
    clearTimeout(timer);
  }
  return performance.now() - t0;
}

describe("a stop while a pull is being set up", () => {
  it("ends the redrive loop instead of waiting for ever", async () => {
    const name = uniqueName("sr");
    const clock = stopAfter(1); // the while check reads false, the check after fetch() reads true
    const host = {
      cfg: { name, ackWaitMs: 30_000 } as ResolvedProcessor,
      get stopping() {
        return clock.stopping;
      },
      failed: false,
      redriveMessages: undefined as ConsumerMessages | undefined,
      log: () => undefined,
    } as unknown as RecoveryHost;
    const elapsed = await within(redriveLoop(host, nats.nc, await jetstreamManager(nats.nc)), 3 * FETCH_EXPIRES_MS);
    // It ends at once, not at the pull's expiry.
    expect(elapsed).toBeLessThan(FETCH_EXPIRES_MS);
    expect(host.redriveMessages).toBeUndefined();
  }, 30_000);

  it("ends the fetch loop without waiting for the pull to expire", async () => {
    const name = uniqueName("sf");
    const cfg = { name, kind: "counter", ackWaitMs: 30_000, maxInFlight: 64, batchSize: 8 } as ResolvedProcessor;
    const jsm = await jetstreamManager(nats.nc);
    const source = { stream: STREAMS.events, consumerName: `p_${name}`, filters: [`evt.${name}.>`] };
    const consumer = await createConsumer(nats.nc, jsm, source, cfg, 0);
    // Reads: the outer while, the backpressure while, the break check; then fetch().
    const clock = stopAfter(3);
    const accepted: JsMsg[] = [];
    const host: FetchHost = {
      cfg,
      lanes: 1,
      get stopping() {
        return clock.stopping;
      },
      inFlight: 0,
      queued: 0,
      deliveries: { next: 1 } as FetchHost["deliveries"],
      markers: { writeRun: async () => undefined },
      messages: undefined,
      room: async () => undefined,
      accept: (m) => void accepted.push(m),
      log: () => undefined,
    };
    try {
      const elapsed = await within(fetchLoop(host, consumer, async () => undefined), 3 * FETCH_EXPIRES_MS);
      expect(elapsed).toBeLessThan(FETCH_EXPIRES_MS);
      expect(host.messages).toBeUndefined();
      expect(accepted).toEqual([]);
    } finally {
      await jsm.consumers.delete(source.stream, source.consumerName).catch(() => undefined);
    }
  }, 30_000);
});
