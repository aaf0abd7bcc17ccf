/**
 * The projector as a child process, for the kill -9 test (crash.int.test.ts): runs the
 * built-in projections with synchronous=FULL until every one reaches the given
 * sequences, printing the lowest position every few ms. It starts when a line arrives on
 * stdin, so the test can start the next process while the previous one still runs.
 * Credentials come from the environment (NATS_NKEY, ...).
 * Usage: node --import tsx projections/projector.child.ts <natsUrl> <dataDir> <eventsSeq> <derivedSeq> [small|default]
 */
import { once } from "node:events";
import { connect } from "@nats-io/transport-node";
import { credentialsFromEnv, natsConnectOptions, STREAMS } from "../streams/index.js";
import { createProjectionEngine } from "./index.js";

const [url, dataDir, eventsSeq, derivedSeq, size] = process.argv.slice(2);
process.stdout.write("ready\n");
await once(process.stdin, "data");
process.stdin.destroy();
const nc = await connect(natsConnectOptions(url!, credentialsFromEnv()));
// Small batches and fold windows: more commits, so more kills land inside a transaction.
const windows = size === "default" ? {} : { batchSize: 1_000, foldWindow: 2_000 };
const engine = createProjectionEngine(nc, { dataDir: dataDir!, sync: "full", ...windows, log: () => undefined });
await engine.start();
const names = engine.list().map((p) => p.name);
const report = setInterval(() => {
  const low = Math.min(...names.map((n) => engine.position(n)[STREAMS.events] ?? 0));
  process.stdout.write(`${low}\n`);
}, 10);
for (const name of names) await engine.waitFor(name, Number(eventsSeq), { timeout: 600_000 });
await engine.waitFor("pipeline_summary", Number(derivedSeq), { stream: STREAMS.derived, timeout: 600_000 });
clearInterval(report);
await engine.close();
await nc.close();
process.stdout.write("done\n");
