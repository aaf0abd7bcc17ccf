import { jetstream } from "@nats-io/jetstream";
import { ensureTopology } from "../streams/index.js";
import { publishFast, reading } from "./ingest.js";
import { cpuMeter, median, ratio, startBenchNats } from "./harness.js";
import type { BenchResult, CpuSplit, Suite } from "./harness.js";

const N = 100_000;
const WINDOW_N = 20_000;
const WINDOW_SIZE = 256;
const ROUNDS = 3;

const subject = (i: number): string => `evt.bench.sensor.s${i % 1000}`;

/**
 * The four publish figures of `ingest`, interleaved round by round (so the machine's
 * neighbours weigh on all alike), each with the CPU per event of this process and of
 * nats-server: the split that says whether the client or the server limits a figure.
 * Quick (about a minute); for profiling: `node --cpu-prof dist/bench/main.js ingest-cpu`.
 */
export const suite: Suite = {
  name: "ingest-cpu",
  description: "the ingest suite's publish figures interleaved, with client and nats-server CPU per event",
  async run({ log, env }) {
    const nats = await startBenchNats();
    const { server, nc } = nats;
    env.natsServer = server.version;
    try {
      await ensureTopology(nc);
      const js = jetstream(nc);
      const tasks: Array<{ name: string; ops: number; what: string; fn: () => Promise<void> }> = [
        {
          name: "publish.window", ops: WINDOW_N, what: `js.publish with ${WINDOW_SIZE} promises in flight`,
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
        },
        { name: "publish.flexcore", ops: N, what: "createPublisher, every message acked", fn: () => publishFast(nc, subject, N) },
        { name: "publish.flexcore-batched", ops: N, what: 'createPublisher({ batching: "auto" })', fn: () => publishFast(nc, subject, N, false, { batching: "auto" }) },
        {
          name: "publish.core-no-ack", ops: N, what: "core publish then flush, no acks: the ceiling",
          async fn() {
            for (let i = 0; i < N; i++) {
              const e = reading(i);
              nc.publish(subject(i), e.data, { headers: e.headers });
            }
            await nc.flush();
          },
        },
      ];
      const rates = new Map<string, number[]>();
      const splits = new Map<string, CpuSplit[]>();
      for (let round = 0; round <= ROUNDS; round++) {
        for (const t of tasks) {
          const meter = cpuMeter(server.pid);
          const started = performance.now();
          await t.fn();
          const ms = performance.now() - started;
          const split = meter(t.ops);
          if (round === 0) continue; // warm-up
          (rates.get(t.name) ?? rates.set(t.name, []).get(t.name)!).push((t.ops * 1000) / ms);
          (splits.get(t.name) ?? splits.set(t.name, []).get(t.name)!).push(split);
        }
      }
      const results: BenchResult[] = tasks.map((t) => {
        const s = splits.get(t.name)!;
        const r: BenchResult = {
          name: t.name, unit: "events/s", median: median(rates.get(t.name)!), samples: rates.get(t.name)!,
          extra: {
            what: t.what,
            clientCpuUsPerEvent: median(s.map((c) => c.benchUsPerEvent)),
            ...(s.every((c) => c.serverUsPerEvent !== undefined) ? { natsServerCpuUsPerEvent: median(s.map((c) => c.serverUsPerEvent!)) } : {}),
            coresBusy: median(s.map((c) => c.cores)),
          },
        };
        log(`  ${r.name}: ${Math.round(r.median)} events/s, client ${String(r.extra!.clientCpuUsPerEvent)} µs/event, nats-server ${String(r.extra!.natsServerCpuUsPerEvent)} µs/event`);
        return r;
      });
      const by = (name: string): BenchResult => results.find((r) => r.name === name)!;
      results.push(
        ratio("publish.flexcore-batched/publish.core-no-ack", by("publish.flexcore-batched"), by("publish.core-no-ack"), 0.7),
        ratio("publish.flexcore-batched/publish.window", by("publish.flexcore-batched"), by("publish.window"), 4),
        ratio("publish.flexcore/publish.window", by("publish.flexcore"), by("publish.window"), 4),
      );
      return results;
    } finally {
      await nats.close();
    }
  },
};
