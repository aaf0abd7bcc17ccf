import { spawn, execFile } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { NatsServerError } from "./errors.js";

const execFileAsync = promisify(execFile);

/** Binary used when `NATS_SERVER_BIN` is unset. */
export const DEFAULT_NATS_SERVER_BIN = "nats-server";
/** How long to wait for a starting server to listen. */
export const DEFAULT_READY_TIMEOUT_MS = 15_000;
/** How to install the server, for error messages. */
export const INSTALL_HINT = "install it with `apt-get install -y nats-server` (Debian/Ubuntu), `brew install nats-server` (macOS), or download a release from the NATS project and put it on PATH (or set NATS_SERVER_BIN)";

/** Options of {@link startNatsServer}. */
export interface NatsServerOptions {
  /** JetStream store directory. @default a fresh `mkdtemp` directory, deleted on close */
  readonly storeDir?: string;
  /** Client port; `-1` picks a free one. @default -1 */
  readonly port?: number;
  /** Address to listen on. @default "127.0.0.1" */
  readonly host?: string;
  /** A `nats.conf` to derive the configuration from (see {@link deriveConfig}). */
  readonly configFile?: string;
  /** Configuration text used instead of `configFile` (e.g. `max_payload: 65536` in a test). */
  readonly config?: string;
  /** Appended to the configuration (from `configFile`, `config` or none), e.g. an `authorization` block or an `include`. */
  readonly extraConfig?: string;
  /** Files the configuration includes (e.g. the users), read again on {@link NatsServer.reload}. */
  readonly include?: readonly string[];
  /** Path of the binary. @default $NATS_SERVER_BIN or "nats-server" */
  readonly binary?: string;
  /** Extra command-line arguments. */
  readonly args?: readonly string[];
  /** @default 15000 */
  readonly readyTimeoutMs?: number;
  /** Lines of the server's log go here (e.g. `process.stderr.write`). */
  readonly log?: (line: string) => void;
}

/** A running `nats-server` child process. */
export interface NatsServer {
  /** `nats://host:port` */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly storeDir: string;
  /** Server version without the `v`, e.g. `2.9.10`. */
  readonly version: string;
  readonly pid: number | undefined;
  /** Sends `signal` (default SIGKILL) and waits for the process to exit; the store is kept. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts the server again on the same port and store (after {@link kill}). */
  restart(): Promise<void>;
  /** Makes the server read its configuration again (SIGHUP), e.g. after new users were written to an included file. */
  reload(): void;
  /** Stops the server (SIGTERM, then SIGKILL) and deletes a temporary store. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Returns the installed server's version (`2.9.10`), or throws {@link NatsServerError} with how to install it. */
export async function natsServerVersion(binary = process.env.NATS_SERVER_BIN ?? DEFAULT_NATS_SERVER_BIN): Promise<string> {
  try {
    const { stdout, stderr } = await execFileAsync(binary, ["--version"]);
    const match = /v?(\d+\.\d+\.\d+)/.exec(stdout + stderr);
    if (!match?.[1]) throw new NatsServerError(`\`${binary} --version\` printed no version: ${stdout}${stderr}`);
    return match[1];
  } catch (err) {
    if (err instanceof NatsServerError) throw err;
    throw new NatsServerError(`nats-server is not installed (could not run \`${binary}\`); ${INSTALL_HINT}`, { cause: err });
  }
}

/** Compares dotted versions: negative when `a < b`. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map((x) => Number.parseInt(x, 10) || 0);
  const pb = b.split(".").map((x) => Number.parseInt(x, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** What a server version can do that FlexCore uses or would use. */
export interface ServerFeatures {
  /** `jetstream.sync_interval: always` (fsync before every ack); 2.10+. */
  readonly syncAlways: boolean;
  /** Multiple subject filters per consumer; 2.10+. */
  readonly multiFilterConsumers: boolean;
  /** Atomic batch publish (`Nats-Batch-*` headers, `allow_atomic`); 2.12+. */
  readonly atomicBatch: boolean;
  /** Per-message TTL (`Nats-TTL`, `allow_msg_ttl`, subject delete markers); 2.11+. */
  readonly messageTtl: boolean;
  /** Batch direct get (`$JS.API.DIRECT.GET` with `batch`, `multi_last`, `up_to_seq`); 2.11+. */
  readonly batchDirectGet: boolean;
  /** Fast-ingest batch publishing (`allow_batched`, flow-controlled acks per batch); 2.14+. */
  readonly fastIngest: boolean;
}

export function serverFeatures(version: string): ServerFeatures {
  return {
    syncAlways: compareVersions(version, "2.10.0") >= 0,
    multiFilterConsumers: compareVersions(version, "2.10.0") >= 0,
    atomicBatch: compareVersions(version, "2.12.0") >= 0,
    messageTtl: compareVersions(version, "2.11.0") >= 0,
    batchDirectGet: compareVersions(version, "2.11.0") >= 0,
    fastIngest: compareVersions(version, "2.14.0") >= 0,
  };
}

/** Human-readable gaps of a server version, for `flexcore doctor`. */
export function missingFeatures(version: string): string[] {
  const f = serverFeatures(version);
  const gaps: string[] = [];
  if (!f.syncAlways) gaps.push("no `sync_interval: always` (before 2.10): the store is fsynced every 2 minutes, so an acked event survives a process crash but not a power loss");
  if (!f.multiFilterConsumers) gaps.push("no multi-filter consumers (before 2.10): one consumer per subject filter");
  if (!f.atomicBatch) gaps.push("no atomic batch publish (before 2.12): a multi-event append is stored event by event; a retry with the same event ids completes it");
  if (!f.messageTtl) gaps.push("no per-message TTL (before 2.11): expired sessions, revocations and leases stay in their buckets until overwritten or swept");
  if (!f.batchDirectGet) gaps.push("no batch direct get (before 2.11): aggregates are read with a consumer");
  if (!f.fastIngest) gaps.push("no fast-ingest batches (before 2.14): with `batching: \"auto\"` the publisher falls back to one ack per event");
  return gaps;
}

/**
 * Derives a server configuration from a `nats.conf` text for `version`: lines written as
 * `#@2.10 <setting>` are enabled when the server is at least that version, so one file
 * serves 2.9.10 (which rejects settings it does not know) and newer servers.
 */
export function deriveConfig(text: string, version: string): string {
  return text.replace(/^(\s*)#@(\d+\.\d+(?:\.\d+)?)\s+(.*)$/gmu, (line, indent: string, since: string, setting: string) =>
    compareVersions(version, since) >= 0 ? `${indent}${setting}` : line,
  );
}

/**
 * Puts the store directory into the configuration's `jetstream` block (one is added when
 * there is none). Given with `-sd` instead, a configuration reload (SIGHUP, new users) is
 * refused: the server sees the file's empty store_dir as a change it cannot make live.
 */
export function withStoreDir(config: string, storeDir: string): string {
  const line = `store_dir: ${JSON.stringify(storeDir)}`;
  const block = /^(\s*)jetstream\s*:?\s*\{/mu;
  if (block.test(config)) return config.replace(block, (open, indent: string) => `${open}\n${indent}  ${line}`);
  return `${config}\njetstream {\n  ${line}\n}\n`;
}

/** Starts `nats-server` with JetStream and waits until it accepts clients. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const binary = options.binary ?? process.env.NATS_SERVER_BIN ?? DEFAULT_NATS_SERVER_BIN;
  const version = await natsServerVersion(binary);
  const host = options.host ?? "127.0.0.1";
  const tempStore = options.storeDir === undefined;
  const storeDir = tempStore ? await mkdtemp(join(tmpdir(), "flexcore-nats-")) : resolve(options.storeDir!);
  await mkdir(storeDir, { recursive: true });
  const runDir = await mkdtemp(join(tmpdir(), "flexcore-nats-run-"));
  let configPath: string | undefined;
  if (options.configFile !== undefined || options.config !== undefined || options.extraConfig !== undefined || options.include !== undefined) {
    configPath = join(runDir, "nats.conf");
    const text = options.config ?? (options.configFile === undefined ? "" : await readFile(options.configFile, "utf8"));
    // nats-server resolves an include against the including file's folder, even an absolute path.
    const includes = (options.include ?? []).map((f) => `include ${JSON.stringify(relative(runDir, resolve(f)))}`);
    await writeFile(configPath, withStoreDir(deriveConfig([text, options.extraConfig ?? "", ...includes, ""].join("\n"), version), storeDir));
  }

  let port = options.port ?? -1;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  const launch = async (): Promise<void> => {
    for (const f of await readdir(runDir)) if (f.endsWith(".ports")) await rm(join(runDir, f), { force: true });
    const args = [
      ...(configPath ? ["-c", configPath] : []),
      "-a", host, "-p", String(port), "-js", ...(configPath ? [] : ["-sd", storeDir]), "--ports_file_dir", runDir,
      ...(options.args ?? []),
    ];
    const proc = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"] });
    child = proc;
    const logLines: string[] = [];
    const onData = (buf: Buffer): void => {
      for (const line of buf.toString().split("\n")) {
        if (!line) continue;
        if (logLines.length < 200) logLines.push(line);
        options.log?.(line);
      }
    };
    proc.stdout?.on("data", onData);
    proc.stderr?.on("data", onData);
    exited = new Promise<void>((res) => proc.once("exit", () => res()));
    let failed: Error | undefined;
    proc.once("error", (err) => (failed = err));
    proc.once("exit", (code, signal) => (failed ??= new Error(`exited with ${code ?? signal}`)));

    const deadline = Date.now() + (options.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS);
    while (Date.now() < deadline) {
      if (failed) break;
      const portsFile = (await readdir(runDir)).find((f) => f.endsWith(`_${proc.pid}.ports`));
      if (portsFile) {
        try {
          const ports = JSON.parse(await readFile(join(runDir, portsFile), "utf8")) as { nats?: string[] };
          const url = ports.nats?.[0];
          if (url) {
            port = Number(new URL(url).port);
            return;
          }
        } catch {
          // the file is being written; read it again
        }
      }
      await sleep(20);
    }
    proc.kill("SIGKILL");
    throw new NatsServerError(`nats-server did not start (${failed?.message ?? "timed out"}): ${logLines.slice(-5).join(" | ")}`, { cause: failed });
  };

  await launch();

  const kill = async (signal: NodeJS.Signals = "SIGKILL"): Promise<void> => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill(signal);
      await exited;
    }
  };
  const close = async (): Promise<void> => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const stopped = await Promise.race([exited.then(() => true), sleep(5_000).then(() => false)]);
      if (!stopped) await kill("SIGKILL");
    }
    await rm(runDir, { recursive: true, force: true });
    if (tempStore) await rm(storeDir, { recursive: true, force: true });
  };
  return {
    get url() { return `nats://${host}:${port}`; },
    host,
    get port() { return port; },
    storeDir,
    version,
    get pid() { return child?.pid; },
    kill,
    restart: async () => {
      await kill();
      await launch();
    },
    reload: () => {
      if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGHUP");
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** Whether a process with this pid exists (also when it belongs to another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
