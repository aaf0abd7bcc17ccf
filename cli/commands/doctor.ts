import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import type { Command } from "commander";
import { BUCKETS, checkNatsServerVersion, ensureTopology, natsServerPin, natsServerVersion, parseServers, resolveNatsServerBinary, serverFeatures, STREAMS, streamConfigs } from "../../streams/index.js";
import { sandboxSupport } from "../../processors/index.js";
import { connectCli, resolveNatsUrl } from "../connection.js";

type Level = "ok" | "warn" | "fail";

/** A line of the doctor's report. */
export interface Check {
  readonly level: Level;
  readonly what: string;
}

/** Runs the checks; other areas' checks are appended by the command. */
export async function runChecks(url?: string): Promise<Check[]> {
  const checks: Check[] = [];
  // Script steps: the bubblewrap sandbox, and pasta for networked ones; without them such steps are refused.
  const sandbox = await sandboxSupport();
  if (sandbox.mode === "bwrap") checks.push({ level: "ok", what: `script steps run in the bubblewrap ${sandbox.bwrapVersion ?? ""} sandbox${sandbox.dropsPrivileges ? " as uid 65534" : ""}` });
  if (sandbox.pastaPath) checks.push({ level: "ok", what: `script steps with network: true run under pasta (passt, ${sandbox.pastaPath}) in a network namespace of their own, with no way to the host's loopback (NATS, the gateway)` });
  for (const w of sandbox.warnings) checks.push({ level: "warn", what: w });
  try {
    const found = await resolveNatsServerBinary();
    const binaryVersion = await natsServerVersion(found.binary);
    await checkNatsServerVersion(binaryVersion, found.binary);
    checks.push({ level: "ok", what: `nats-server binary ${binaryVersion} at ${found.binary} (${found.source})` });
  } catch (err) {
    checks.push({ level: "warn", what: (err as Error).message });
  }
  const target = await resolveNatsUrl(url);
  let nc;
  try {
    nc = await connectCli(url, "flexcore-doctor");
  } catch (err) {
    checks.push({ level: "fail", what: (err as Error).message });
    return checks;
  }
  try {
    const version = nc.info?.version ?? "unknown";
    checks.push({ level: "ok", what: `server reachable at ${target}, version ${version}, max_payload ${nc.info?.max_payload ?? "?"} bytes` });
    const anonymous = await connect({ servers: parseServers(target), maxReconnectAttempts: 0, reconnect: false, timeout: 2_000 }).then(
      async (c) => {
        await c.close();
        return true;
      },
      () => false,
    );
    checks.push(anonymous
      ? { level: "warn", what: "the server accepts anonymous clients: anyone who reaches it reads and writes every tenant's events (see docs/security.md: authorization)" }
      : { level: "ok", what: "the server refuses anonymous clients" });
    const pin = await natsServerPin();
    await checkNatsServerVersion(version, target).then(
      () => checks.push({ level: "ok", what: `the server is ${pin.minimum} or newer: it has every feature FlexCore uses` }),
      (err: unknown) => checks.push({ level: "fail", what: (err as Error).message }),
    );
    const jsm = await jetstreamManager(nc).catch(() => undefined);
    if (!jsm) {
      checks.push({ level: "fail", what: "JetStream is not enabled on this server (start it with -js)" });
      return checks;
    }
    const existing = new Set<string>();
    for (const name of Object.values(STREAMS)) {
      await jsm.streams.info(name).then(() => existing.add(name), () => undefined);
    }
    const missing = streamConfigs().filter((c) => !existing.has(c.name)).map((c) => c.name);
    if (missing.length > 0) {
      checks.push({ level: "warn", what: `streams missing: ${missing.join(", ")} (flexcore up creates them)` });
    } else {
      const report = await ensureTopology(nc);
      if (report.drift.length === 0) checks.push({ level: "ok", what: "topology present, no drift" });
      for (const d of report.drift) checks.push({ level: "warn", what: `drift: ${d.resource}.${d.field} is ${JSON.stringify(d.actual)}, FlexCore provisions ${JSON.stringify(d.expected)}` });
    }
    // What of the server's features is in use here, each behind its option (docs/streams.md).
    const f = serverFeatures(version);
    const config = async (stream: string) => (await jsm.streams.info(stream).catch(() => undefined))?.config;
    const events = await config(STREAMS.events);
    const feature = (on: boolean, yes: string, no: string): void => void checks.push(on ? { level: "ok", what: yes } : { level: "warn", what: no });
    feature(f.atomicBatch && events?.allow_atomic === true,
      "atomic appends: on (atomicAppends \"auto\"; allow_atomic on FLEX_EVENTS): a multi-event append is stored whole or not at all",
      "atomic appends: off (needs nats-server 2.12+ and allow_atomic on FLEX_EVENTS): a multi-event append is stored event by event");
    feature(f.fastIngest && events?.allow_batched === true,
      "fast-ingest batches: available (allow_batched on FLEX_EVENTS); used where batching / ingestBatching is \"auto\" (default \"off\")",
      "fast-ingest batches: unavailable (needs nats-server 2.14+ and allow_batched): batching \"auto\" acks each event");
    const ttl = (await config(`KV_${BUCKETS.auth}`))?.allow_msg_ttl === true && (await config(`KV_${BUCKETS.leases}`))?.allow_msg_ttl === true;
    feature(f.messageTtl && ttl,
      "per-message TTL: on for flex_auth and flex_leases (messageTtl): sessions, revocations and leases expire by themselves",
      "per-message TTL: off (needs nats-server 2.11+ and allow_msg_ttl on flex_auth, flex_leases): expired entries are swept");
    feature(f.batchDirectGet,
      "batch direct get: available (retried appends are found in the dedupe window)",
      "batch direct get: unavailable (before 2.11)");
  } finally {
    await nc.drain();
  }
  return checks;
}

export function register(program: Command): void {
  program
    .command("doctor")
    .description("check the server, its version's gaps, the topology and the sandbox")
    .option("--nats <url>", "server URL")
    .action(async (opts: { nats?: string }) => {
      const checks = await runChecks(opts.nats);
      for (const c of checks) process.stdout.write(`${c.level === "ok" ? "ok  " : c.level === "warn" ? "WARN" : "FAIL"}  ${c.what}\n`);
      if (checks.some((c) => c.level === "fail")) process.exitCode = 1;
    });
}
