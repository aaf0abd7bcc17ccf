import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import {
  createEventStore,
  createPublisher,
  encodeEvent,
  ensureTopology,
  eventSubject,
  HEADERS,
  STREAMS,
} from "../streams/index.js";
import type { EncodedEvent, PublisherOptions, Reducer } from "../streams/index.js";
import { ratio, runTasks, startBenchNats } from "./harness.js";
import type { BenchResult, Suite } from "./harness.js";

const AWAITED_N = 2_000;
const WINDOW_N = 20_000;
const WINDOW_SIZE = 256;
const FAST_N = 100_000;
const APPEND_N = 30_000;
const AGGREGATES = 1_000;
const REPLAY_N = 1_000_000;
const AGGREGATE_EVENTS = 10_000;
const SMALL_AGGREGATE_EVENTS = 50;

let serial = 0;
/** A ~150-byte sensor reading, like the events users send (also the `ingest-cpu` suite's). */
export function reading(i: number): EncodedEvent {
  serial += 1;
  return encodeEvent({
    id: `b${serial}`,
    type: "ReadingRecorded",
    data: { sensor: `s-${i % 1000}`, site: "plant-7", temp: 20 + (i % 50) / 10, humidity: 40 + (i % 30) / 3, pressure: 1013.25, seq: i },
  });
}

/** Publishes `n` readings through FlexCore's pipelined publisher, at most 8192 unacknowledged. */
export async function publishFast(nc: NatsConnection, subjectOf: (i: number) => string, n: number, revisions?: boolean, options: PublisherOptions = {}): Promise<void> {
  const publisher = createPublisher(nc, options);
  const pending: Array<Promise<unknown>> = [];
  for (let i = 0; i < n; i++) {
    const e = reading(i);
    if (revisions) e.headers.set(HEADERS.revision, String(i + 1));
    pending.push(publisher.publish(subjectOf(i), e.data, { headers: e.headers }));
    if (pending.length >= 8192) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
  await publisher.close();
}

export const suite: Suite = {
  name: "ingest",
  description: "append and replay throughput against one nats-server, each variant beside its baseline",
  async run({ log, env }) {
    const nats = await startBenchNats();
    const { server, nc } = nats;
    env.natsServer = server.version;
    try {
      await ensureTopology(nc);
      const js = jetstream(nc);
      const subject = (i: number): string => `evt.bench.sensor.s${i % 1000}`;
      const results: BenchResult[] = await runTasks([
        {
          name: "publish.awaited",
          unit: "events/s",
          ops: AWAITED_N,
          async fn() {
            for (let i = 0; i < AWAITED_N; i++) {
              const e = reading(i);
              await js.publish(subject(i), e.data, { headers: e.headers });
            }
          },
          extra: { what: "js.publish, one at a time" },
        },
        {
          name: "publish.window",
          unit: "events/s",
          ops: WINDOW_N,
          async fn() {
            const inflight = new Set<Promise<unknown>>();
            for (let i = 0; i < WINDOW_N; i++) {
              const e = reading(i);
              const p = js.publish(subject(i), e.data, { headers: e.headers });
              inflight.add(p);
              void p.finally(() => inflight.delete(p));
              if (inflight.size >= WINDOW_SIZE) await Promise.race(inflight);
            }
            await Promise.all(inflight);
          },
          extra: { what: `js.publish with ${WINDOW_SIZE} promises in flight` },
        },
        {
          name: "publish.flexcore",
          unit: "events/s",
          ops: FAST_N,
          fn: () => publishFast(nc, subject, FAST_N),
          extra: { what: "createPublisher: pipelined, every message acked" },
        },
        {
          name: "publish.flexcore-batched",
          unit: "events/s",
          ops: FAST_N,
          fn: () => publishFast(nc, subject, FAST_N, false, { batching: "auto" }),
          extra: { what: "createPublisher({ batching: \"auto\" }): fast-ingest batches (2.14+), acked per batch" },
        },
        {
          name: "publish.core-no-ack",
          unit: "events/s",
          ops: FAST_N,
          async fn() {
            for (let i = 0; i < FAST_N; i++) {
              const e = reading(i);
              nc.publish(subject(i), e.data, { headers: e.headers });
            }
            await nc.flush();
          },
          extra: { what: "core publish then flush, no acks: the ceiling" },
        },
      ], { log });

      // The cost of an fsync before every ack (`sync_interval: always`), measured on a second
      // server with the same store device, in the same run.
      const syncedBench = await startBenchNats({ config: "jetstream {\n  sync_interval: always\n}\n" });
      const syncedNc = syncedBench.nc;
      try {
        await ensureTopology(syncedNc);
        results.push(...(await runTasks([
          {
            name: "publish.flexcore.sync-always",
            unit: "events/s",
            ops: FAST_N,
            fn: () => publishFast(syncedNc, subject, FAST_N),
            extra: { what: "publish.flexcore on a server with jetstream.sync_interval: always (fsync before each ack)" },
          },
          {
            name: "publish.flexcore-batched.sync-always",
            unit: "events/s",
            ops: FAST_N,
            fn: () => publishFast(syncedNc, subject, FAST_N, false, { batching: "auto" }),
            extra: { what: "publish.flexcore-batched on a server with sync_interval: always" },
          },
        ], { log })));
      } finally {
        await syncedBench.close();
      }

      const store = await createEventStore(nc);
      let round = 0;
      results.push(...(await runTasks([
        {
          name: "append.expected-revision",
          unit: "events/s",
          ops: APPEND_N,
          async fn() {
            round += 1;
            const perAggregate = APPEND_N / AGGREGATES;
            await Promise.all(Array.from({ length: AGGREGATES }, async (_, a) => {
              const stream = eventSubject("bench", `append${round}`, `a${a}`);
              for (let r = 0; r < perAggregate; r++) {
                await store.append(stream, [{ type: "Inc", data: reading(r).data }], { expectedRevision: r });
              }
            }));
          },
          extra: { what: `${AGGREGATES} aggregates appended concurrently, each with its expected revision` },
        },
      ], { log })));

      log(`  publishing ${REPLAY_N} events for replay...`);
      await publishFast(nc, (i) => `evt.replay.sensor.s${i % 1000}`, REPLAY_N);
      results.push(...(await runTasks([
        {
          name: "replay.ordered-raw",
          unit: "events/s",
          ops: REPLAY_N,
          async fn() {
            // The ceiling: the same ordered consumer with no decoding at all.
            const consumer = await js.consumers.get(STREAMS.events, { filter_subjects: "evt.replay.>" });
            const messages = await consumer.consume({ max_messages: 2_048 });
            let n = 0;
            for await (const m of messages) {
              n += 1;
              if (m.info.pending === 0) break;
            }
            await messages.close();
            if (n !== REPLAY_N) throw new Error(`raw replay read ${n} of ${REPLAY_N}`);
          },
          extra: { what: "ordered consumer, messages counted, nothing decoded" },
        },
        {
          name: "replay.ordered-raw-callback",
          unit: "events/s",
          ops: REPLAY_N,
          async fn() {
            // The same consumer in callback mode, which readAll uses underneath.
            const consumer = await js.consumers.get(STREAMS.events, { filter_subjects: "evt.replay.>" });
            let n = 0;
            let done!: () => void;
            const finished = new Promise<void>((resolve) => { done = resolve; });
            const messages = await consumer.consume({
              max_messages: 2_048,
              callback: (m) => {
                n += 1;
                if (m.info.pending === 0) done();
              },
            });
            await finished;
            await messages.close();
            if (n !== REPLAY_N) throw new Error(`raw replay read ${n} of ${REPLAY_N}`);
          },
          extra: { what: "ordered consumer in callback mode, messages counted, nothing decoded" },
        },
        {
          name: "replay.readAll",
          unit: "events/s",
          ops: REPLAY_N,
          async fn() {
            let n = 0;
            for await (const e of store.readAll({ filter: "evt.replay.>", follow: false })) if (e.seq > 0) n += 1;
            if (n !== REPLAY_N) throw new Error(`replay read ${n} of ${REPLAY_N}`);
          },
          extra: { what: "readAll from seq 1, decoded events" },
        },
      ], { log, iterations: 3 })));

      const aggregate = eventSubject("bench", "load", "big");
      await publishFast(nc, () => aggregate, AGGREGATE_EVENTS, true);
      const sum: Reducer<{ n: number; temp: number }, { temp: number }> = {
        name: "bench-sum",
        initial: () => ({ n: 0, temp: 0 }),
        apply: (s, e) => ({ n: s.n + 1, temp: s.temp + e.data.temp }),
      };
      const warm = await store.aggregate(aggregate, sum);
      if (warm.revision !== AGGREGATE_EVENTS) throw new Error(`aggregate has ${warm.revision} events`);
      results.push(...(await runTasks([
        {
          name: "aggregate.load.no-snapshot",
          unit: "ms",
          async fn() {
            const t = performance.now();
            const s = await store.aggregate(aggregate, sum, { snapshots: false });
            if (s.state.n !== AGGREGATE_EVENTS) throw new Error("wrong state");
            return performance.now() - t;
          },
          extra: { events: AGGREGATE_EVENTS },
        },
        {
          name: "aggregate.load.snapshot",
          unit: "ms",
          async fn() {
            const t = performance.now();
            const s = await store.aggregate(aggregate, sum);
            if (s.state.n !== AGGREGATE_EVENTS || !s.fromSnapshot) throw new Error("no snapshot used");
            return performance.now() - t;
          },
          extra: { events: AGGREGATE_EVENTS },
        },
      ], { log, iterations: 9, warmup: 2 })));

      // Aggregate reads both ways in the same run: an ordered consumer (the baseline) and
      // batch direct gets (nats-server 2.11+), for the 10,000-event aggregate, a 50-event
      // one, and time travel to the middle of the big one.
      const viaConsumer = await createEventStore(nc, { batchReads: "off" });
      const viaDirect = await createEventStore(nc, { batchReads: "auto" });
      const small = eventSubject("bench", "load", "small");
      await viaDirect.append(small, Array.from({ length: SMALL_AGGREGATE_EVENTS }, (_, i) => ({ type: "Read", data: { temp: i } })));
      const middle = (await viaDirect.read(aggregate, { from: AGGREGATE_EVENTS / 2, limit: 1 }))[0]!.seq;
      const load = (s: typeof store, subject: string, expected: number, asOf?: number) => async (): Promise<number> => {
        const t = performance.now();
        const r = await s.aggregate(subject, sum, { snapshots: false, ...(asOf === undefined ? {} : { asOf }) });
        if (r.state.n !== expected) throw new Error(`read ${r.state.n} of ${expected}`);
        return performance.now() - t;
      };
      results.push(...(await runTasks([
        { name: "aggregate.load.consumer", unit: "ms", fn: load(viaConsumer, aggregate, AGGREGATE_EVENTS), extra: { events: AGGREGATE_EVENTS, what: "aggregate() without snapshot, ordered consumer (baseline)" } },
        { name: "aggregate.load.direct-batch", unit: "ms", fn: load(viaDirect, aggregate, AGGREGATE_EVENTS), extra: { events: AGGREGATE_EVENTS, what: "same, batch direct gets" } },
        { name: "aggregate.load-small.consumer", unit: "ms", fn: load(viaConsumer, small, SMALL_AGGREGATE_EVENTS), extra: { events: SMALL_AGGREGATE_EVENTS, what: "a 50-event aggregate, ordered consumer (baseline)" } },
        { name: "aggregate.load-small.direct-batch", unit: "ms", fn: load(viaDirect, small, SMALL_AGGREGATE_EVENTS), extra: { events: SMALL_AGGREGATE_EVENTS, what: "same, batch direct gets" } },
        { name: "aggregate.as-of.consumer", unit: "ms", fn: load(viaConsumer, aggregate, AGGREGATE_EVENTS / 2, middle), extra: { events: AGGREGATE_EVENTS / 2, what: "time travel to the middle of the big aggregate, ordered consumer (baseline)" } },
        { name: "aggregate.as-of.direct-batch", unit: "ms", fn: load(viaDirect, aggregate, AGGREGATE_EVENTS / 2, middle), extra: { events: AGGREGATE_EVENTS / 2, what: "same, batch direct gets" } },
      ], { log, iterations: 9, warmup: 2 })));
      await viaConsumer.close();
      await viaDirect.close();
      await store.close();

      const by = (name: string): BenchResult => results.find((r) => r.name === name)!;
      results.push(
        ratio("publish.flexcore/publish.window", by("publish.flexcore"), by("publish.window"), 4),
        ratio("publish.flexcore/publish.core-no-ack", by("publish.flexcore"), by("publish.core-no-ack"), 0.5),
        ratio("publish.flexcore-batched/publish.window", by("publish.flexcore-batched"), by("publish.window"), 4),
        ratio("publish.flexcore-batched/publish.core-no-ack", by("publish.flexcore-batched"), by("publish.core-no-ack"), 0.7),
        ratio("publish.flexcore.sync-always/publish.flexcore", by("publish.flexcore.sync-always"), by("publish.flexcore")),
        ratio("publish.flexcore-batched.sync-always/publish.flexcore-batched", by("publish.flexcore-batched.sync-always"), by("publish.flexcore-batched")),
        ratio("replay.readAll/replay.ordered-raw", by("replay.readAll"), by("replay.ordered-raw")),
        ratio("replay.readAll/replay.ordered-raw-callback", by("replay.readAll"), by("replay.ordered-raw-callback")),
        ratio("aggregate.snapshot-speedup", by("aggregate.load.no-snapshot"), by("aggregate.load.snapshot"), 20),
        ratio("aggregate.load: consumer/direct-batch (speed-up)", by("aggregate.load.consumer"), by("aggregate.load.direct-batch")),
        ratio("aggregate.load-small: consumer/direct-batch (speed-up)", by("aggregate.load-small.consumer"), by("aggregate.load-small.direct-batch")),
        ratio("aggregate.as-of: consumer/direct-batch (speed-up)", by("aggregate.as-of.consumer"), by("aggregate.as-of.direct-batch")),
      );
      return results;
    } finally {
      await nats.close();
    }
  },
};
