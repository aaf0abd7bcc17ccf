/**
 * Publisher process of the `projection.lag.p99` bench (bench/projections.ts): publishes
 * `rate` events/s for `seconds` to the server, as a client separate from the projector
 * would, and prints `<seq> <ack time>` per acked event (ms on the shared wall clock,
 * performance.timeOrigin + performance.now()), then `done <events> <seconds>`.
 * Usage: node bench/projections-publisher.js <natsUrl> <rate> <seconds> <firstIndex>
 */
import { connect } from "@nats-io/transport-node";
import { createPublisher, credentialsFromEnv, encodeEvent, natsConnectOptions } from "../streams/index.js";

const TICK_MS = 10;
const AGGREGATES = 10_000;
const [url, rateText, secondsText, firstText] = process.argv.slice(2);
const rate = Number(rateText);
const seconds = Number(secondsText);
const nc = await connect(natsConnectOptions(url!, credentialsFromEnv()));
const publisher = createPublisher(nc, { maxInFlight: 16_384 });
const now = (): number => performance.timeOrigin + performance.now();
const out: string[] = [];
const flush = (): void => {
  if (out.length > 0) process.stdout.write(`${out.splice(0).join("\n")}\n`);
};
const perTick = Math.round((rate * TICK_MS) / 1000);
const started = performance.now();
const end = started + seconds * 1000;
let i = Number(firstText);
let sent = 0;
const pending: Array<Promise<unknown>> = [];
let next = started;
while (performance.now() < end) {
  for (let k = 0; k < perTick; k++) {
    const n = i++;
    const e = encodeEvent({ type: "ReadingRecorded", data: { sensor: `s-${n % AGGREGATES}`, site: `plant-${n % 7}`, temp: 20 + (n % 50) / 10, seq: n } });
    pending.push(publisher.publish(`evt.t${n % 10}.sensor.s${n % AGGREGATES}`, e.data, { headers: e.headers }).then((ack) => void out.push(`${ack.seq} ${now().toFixed(3)}`)));
    sent += 1;
  }
  flush();
  next += TICK_MS;
  const wait = next - performance.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  if (pending.length > 50_000) await Promise.all(pending.splice(0));
}
await Promise.all(pending);
flush();
process.stdout.write(`done ${sent} ${((performance.now() - started) / 1000).toFixed(3)}\n`);
await publisher.close();
await nc.close();
