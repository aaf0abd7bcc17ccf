/** Helpers shared by the processors' integration tests and benches. */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createPublisher, encodeEvent, ensureTopology, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { startTestNats } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { parseConfig, pipelineSections } from "./config.js";
import { definitions as fixtureDefinitions } from "./fixtures/faulty.js";
import { startProcessorRuntime } from "./runtime.js";
import type { ProcessorRuntime } from "./runtime.js";

/** What a processors integration test file shares: a server with the topology, a publisher, a temp directory. */
export interface ProcessorTestEnv {
  readonly nats: TestNats;
  readonly publisher: Publisher;
  /** A fresh temporary directory (removed by `close`), or "" when none was asked for. */
  readonly dir: string;
  close(): Promise<void>;
}

/** Starts the environment of one test file (`beforeAll`); `close` it in `afterAll`. */
export async function openProcessorTestEnv(options: { readonly tempDirPrefix?: string } = {}): Promise<ProcessorTestEnv> {
  const nats = await startTestNats();
  await ensureTopology(nats.nc);
  const publisher = createPublisher(nats.nc);
  const dir = options.tempDirPrefix ? await mkdtemp(join(tmpdir(), options.tempDirPrefix)) : "";
  return {
    nats,
    publisher,
    dir,
    async close() {
      await publisher.close();
      await nats.close();
      if (dir) await rm(dir, { recursive: true, force: true });
    },
  };
}

/** URL of the test-only processor kinds (`counter`, `faulty`). */
export const FIXTURE_MODULE = new URL(import.meta.url.endsWith(".ts") ? "./fixtures/faulty.ts" : "./fixtures/faulty.js", import.meta.url).href;

/** A processor of one of the fixture kinds (`flaky`, `faulty`, `counter`) on `subjects`. */
export interface FixtureProcessor {
  readonly name: string;
  readonly kind: "flaky" | "faulty" | "counter";
  readonly subjects: readonly string[];
}

/**
 * A one-thread processor runtime on `nc` running `processors` with the fixture kinds of
 * fixtures/faulty.ts, each given up after 2 deliveries 10 ms apart, so a poison event is
 * dead-lettered at once. Reports metrics every `metricsIntervalMs` (0: never).
 */
export async function startFixtureRuntime(nc: NatsConnection, processors: readonly FixtureProcessor[], options: { readonly metricsIntervalMs: number }): Promise<ProcessorRuntime> {
  const yaml = `processors:\n${processors.map((p) => `  - name: ${p.name}\n    kind: ${p.kind}\n    subjects: ${JSON.stringify(p.subjects)}\n    max_deliver: 2\n    backoff: [10ms]\n`).join("")}`;
  return startProcessorRuntime(nc, {
    processors: parseConfig(yaml, pipelineSections({ threads: 1, extra: fixtureDefinitions })).processors,
    threads: 1,
    modules: [FIXTURE_MODULE],
    definitions: fixtureDefinitions,
    metricsIntervalMs: options.metricsIntervalMs,
    log: () => undefined,
  });
}

/** Publishes events `{ value }` round-robin over keys; returns nothing until all are acked. */
export async function publishSeries(publisher: Publisher, tenant: string, category: string, keys: readonly string[], values: (i: number, key: string) => unknown, count: number, idPrefix = `${tenant}-e`): Promise<void> {
  const pending: Promise<unknown>[] = [];
  for (let i = 0; i < count; i++) {
    const key = keys[i % keys.length]!;
    const e = encodeEvent({ id: `${idPrefix}-${i}`, type: "Reading", data: values(i, key), time: new Date(Date.UTC(2026, 0, 1) + i * 1000) });
    pending.push(publisher.publish(`evt.${tenant}.${category}.${key}`, e.data, { headers: e.headers }));
    if (pending.length >= 2048) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
}

/** A stored message as the tests compare it. */
export interface ReadMessage {
  readonly subject: string;
  readonly seq: number;
  readonly msgId: string;
  readonly data: string;
  readonly headers: Record<string, string>;
}

/** Messages of a stream under a filter, in stream order (an ordered consumer). */
export async function readStream(nc: NatsConnection, stream: string, filter: string): Promise<ReadMessage[]> {
  const total = await countMessages(nc, stream, filter);
  if (total === 0) return [];
  const consumer = await jetstream(nc).consumers.get(stream, { filter_subjects: filter });
  const messages = await consumer.consume({ max_messages: 1_000 });
  const out: ReadMessage[] = [];
  const dec = new TextDecoder();
  for await (const m of messages) {
    const headers: Record<string, string> = {};
    for (const k of m.headers?.keys() ?? []) headers[k] = m.headers!.get(k);
    out.push({ subject: m.subject, seq: m.seq, msgId: m.headers?.get("Nats-Msg-Id") ?? "", data: dec.decode(m.data), headers });
    if (m.info.pending === 0 || out.length >= total) break;
  }
  await messages.close().catch(() => undefined);
  return out;
}

/** Waits until `check` returns true, polling; throws after `timeoutMs`. */
export async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Counts messages of a stream under a filter (server-side, without reading them). */
export async function countMessages(nc: NatsConnection, stream: string, filter: string): Promise<number> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(stream, { subjects_filter: filter });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

export { createPublisher, STREAMS };

/** A processor host (`fixtures/host.ts`) running as a child process, for kill -9 tests. */
export interface HostProcess {
  readonly child: ChildProcess;
  /** Resolves when the host prints `ready`; rejects if it exits first. */
  readonly ready: Promise<void>;
  readonly exited: Promise<number | null>;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
}

// From the sources (tests, through tsx) or from dist/ (benches, compiled).
const FROM_SOURCE = import.meta.url.endsWith(".ts");
const HOST = fileURLToPath(new URL(FROM_SOURCE ? "./fixtures/host.ts" : "./fixtures/host.js", import.meta.url));

/** Starts the fixture host with `env` added to this process's environment. */
export function startHost(env: Readonly<Record<string, string>>, options: { readonly cpus?: string } = {}): HostProcess {
  const argv = [process.execPath, ...(FROM_SOURCE ? ["--import", "tsx"] : []), HOST];
  // `cpus`: run the host on these CPUs only (taskset), as if it had a machine of its own.
  const [file, ...args] = options.cpus === undefined ? argv : ["taskset", "-c", options.cpus, ...argv];
  const child = spawn(file!, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      if (out.includes("ready")) resolve();
    });
    child.stderr!.on("data", (b: Buffer) => void (out += b.toString()));
    child.once("exit", (code) => reject(new Error(`host exited (${code}) before ready: ${out}`)));
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  ready.catch(() => undefined);
  return { child, ready, exited, output: () => out };
}
