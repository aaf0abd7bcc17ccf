import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";

/** Options of {@link startUp}. */
export interface UpProcessOptions {
  /** Added to this process's environment (NATS_URL and credentials, FLEXCORE_DATA, ...). */
  readonly env: Readonly<Record<string, string>>;
  /** `flexcore.yaml` to run (`--config`). */
  readonly config: string;
  /** How long to wait for `flexcore: up`, in ms. @default 90000 */
  readonly timeoutMs?: number;
  /**
   * Run it as the leader of a process group of its own, as a shell runs a foreground job,
   * so {@link UpProcess.interrupt} can signal the whole group as a terminal's Ctrl-C does.
   * @default false
   */
  readonly processGroup?: boolean;
}

/** A `flexcore up` child process. */
export interface UpProcess extends AsyncDisposable {
  readonly child: ChildProcess;
  /** The gateway's base URL, as it logged it (`http://127.0.0.1:<port>`). */
  readonly gatewayUrl: string;
  readonly exited: Promise<number | null>;
  /** Everything it wrote to stderr so far. */
  stderr(): string;
  /** When (epoch ms) a stderr line matching `re` arrived; waits for it up to `timeoutMs`. */
  lineAt(re: RegExp, timeoutMs?: number): Promise<number>;
  /** SIGKILL, resolved once it exited. */
  kill(): Promise<void>;
  /** SIGTERM (a clean stop), resolved with its exit code. */
  stop(): Promise<number | null>;
  /** SIGINT to its whole process group (needs `processGroup`), as Ctrl-C in a terminal; resolved with its exit code. */
  interrupt(): Promise<number | null>;
}

// The source entry point under tsx, or the built one when this file runs from dist/.
const CLI = import.meta.url.endsWith(".ts") ? fileURLToPath(new URL("../cli/main.ts", import.meta.url)) : fileURLToPath(new URL("../cli/main.js", import.meta.url));

/**
 * Spawns `flexcore up --config <file>` with `env` (give it FLEXCORE_GATEWAY_PORT=0 and a
 * FLEXCORE_DATA of its own) and waits until it reports `flexcore: up`; throws with its
 * output if it exits or times out first.
 */
export async function startUp(options: UpProcessOptions): Promise<UpProcess> {
  const args = CLI.endsWith(".ts") ? ["--import", "tsx", CLI] : [CLI];
  const child = spawn(process.execPath, [...args, "up", "--config", options.config], {
    env: { ...process.env, FLEXCORE_TEST: "1", ...options.env },
    stdio: ["ignore", "ignore", "pipe"],
    detached: options.processGroup ?? false,
  });
  let stderr = "";
  let partial = "";
  const lines: Array<{ readonly at: number; readonly text: string }> = [];
  child.stderr!.on("data", (b: Buffer) => {
    const at = Date.now();
    stderr += b.toString();
    const parts = (partial + b.toString()).split("\n");
    partial = parts.pop()!;
    for (const text of parts) lines.push({ at, text });
  });
  const exited = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
  const deadline = Date.now() + (options.timeoutMs ?? 90_000);
  while (!/flexcore: up/u.test(stderr) && child.exitCode === null && child.signalCode === null && Date.now() < deadline) await sleep(100);
  const gateway = /gateway at (http:\/\/\S+) /u.exec(stderr)?.[1];
  if (!/flexcore: up/u.test(stderr) || !gateway) {
    if (child.exitCode === null) child.kill("SIGKILL");
    await exited;
    throw new Error(`flexcore up did not start:\n${stderr}`);
  }
  const kill = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  };
  const stop = async (): Promise<number | null> => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    return exited;
  };
  const interrupt = async (): Promise<number | null> => {
    if (!options.processGroup) throw new Error("interrupt() needs startUp({ processGroup: true })");
    if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, "SIGINT");
    return exited;
  };
  const lineAt = async (re: RegExp, timeoutMs = 60_000): Promise<number> => {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const hit = lines.find((l) => re.test(l.text));
      if (hit) return hit.at;
      if (Date.now() > until) throw new Error(`flexcore up wrote no line matching ${re} within ${timeoutMs} ms:\n${stderr}`);
      await sleep(20);
    }
  };
  return { child, gatewayUrl: gateway, exited, stderr: () => stderr, lineAt, kill, stop, interrupt, [Symbol.asyncDispose]: async () => void (await kill()) };
}

/**
 * When the first message under `filter` stored at or after `sinceMs` (epoch ms) was stored, by
 * the stream's clock; undefined when none arrives within `timeoutMs`.
 */
export async function firstStoredAfter(nc: NatsConnection, stream: string, filter: string, sinceMs: number, timeoutMs = 60_000): Promise<number | undefined> {
  const consumer = await jetstream(nc).consumers.get(stream, { filter_subjects: filter, deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(sinceMs).toISOString() });
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const m = await consumer.next({ expires: 2_000 }).catch(() => null);
    if (m) return Math.floor(m.info.timestampNanos / 1e6);
  }
  return undefined;
}
