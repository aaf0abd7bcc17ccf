import { spawn, execFile } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { NatsServerError } from "./errors.js";
import type { ResolvedNatsServer } from "../scripts/nats-server-pin.mjs";

export type { NatsServerSource, ResolvedNatsServer } from "../scripts/nats-server-pin.mjs";

const execFileAsync = promisify(execFile);

/** Binary name looked up on PATH when neither `NATS_SERVER_BIN` nor the pinned server is there. */
export const DEFAULT_NATS_SERVER_BIN = "nats-server";
/** How long to wait for a starting server to listen. */
export const DEFAULT_READY_TIMEOUT_MS = 15_000;

type Pin = typeof import("../scripts/nats-server-pin.mjs");

let pin: Promise<Pin> | undefined;
/**
 * scripts/nats-server-pin.mjs: the pinned version, the minimum and where the binary is found,
 * shared with scripts/ensure-nats-server.mjs (which runs before the build). Loaded from the
 * package's root, from the sources (tests, tsx) as from dist/.
 */
async function loadPin(): Promise<Pin> {
  const fromSource = import.meta.url.endsWith(".ts");
  pin ??= import(new URL(fromSource ? "../scripts/nats-server-pin.mjs" : "../../scripts/nats-server-pin.mjs", import.meta.url).href) as Promise<Pin>;
  return pin;
}

/** The nats-server FlexCore runs (`2.15.1`) and the oldest it accepts (`2.12.0`). */
export async function natsServerPin(): Promise<{ pinned: string; minimum: string; pinnedBinary: string; installHint: string }> {
  const p = await loadPin();
  return { pinned: p.PINNED_VERSION, minimum: p.MIN_VERSION, pinnedBinary: p.pinnedBinary(), installHint: p.installHint() };
}

/**
 * The binary {@link startNatsServer} runs by default: `NATS_SERVER_BIN` when set, else the
 * pinned server in the per-user cache (`${XDG_CACHE_HOME:-~/.cache}/flexcore/nats-server/<version>/`,
 * put there by `npm test`/`npm start`), else a `nats-server` on PATH at the minimum or newer.
 */
export async function resolveNatsServerBinary(env: NodeJS.ProcessEnv = process.env): Promise<ResolvedNatsServer> {
  return (await loadPin()).resolveNatsServer(env);
}

/** Options of {@link startNatsServer}. */
export interface NatsServerOptions {
  /** JetStream store directory. @default a fresh `mkdtemp` directory, deleted on close */
  readonly storeDir?: string;
  /** Client port; `-1` picks a free one. @default -1 */
  readonly port?: number;
  /** Address to listen on. @default "127.0.0.1" */
  readonly host?: string;
  /** A `nats.conf` the configuration starts from. */
  readonly configFile?: string;
  /** Configuration text used instead of `configFile` (e.g. `max_payload: 65536` in a test). */
  readonly config?: string;
  /** Appended to the configuration (from `configFile`, `config` or none), e.g. an `authorization` block or an `include`. */
  readonly extraConfig?: string;
  /** Files the configuration includes (e.g. the users), read again on {@link NatsServer.reload}. */
  readonly include?: readonly string[];
  /** Path of the binary. @default {@link resolveNatsServerBinary}: $NATS_SERVER_BIN, the pinned server, or a recent enough one on PATH */
  readonly binary?: string;
  /** Extra command-line arguments. */
  readonly args?: readonly string[];
  /** @default 15000 */
  readonly readyTimeoutMs?: number;
  /**
   * Runs the server in a process group (and session) of its own, so the signals a terminal
   * sends to the whole foreground group (Ctrl-C, a hang-up) reach only its owner, which
   * stops it after what still needs it. @default false
   */
  readonly detached?: boolean;
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
  /** Server version without the `v`, e.g. `2.15.1`. */
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

/**
 * Returns the version (`2.15.1`) of `binary` (default: {@link resolveNatsServerBinary}), or
 * throws {@link NatsServerError} with how to get the pinned server.
 */
export async function natsServerVersion(binary?: string): Promise<string> {
  const bin = binary ?? (await resolveNatsServerBinary()).binary;
  try {
    const { stdout, stderr } = await execFileAsync(bin, ["--version"]);
    const match = /v?(\d+\.\d+\.\d+)/.exec(stdout + stderr);
    if (!match?.[1]) throw new NatsServerError(`\`${bin} --version\` printed no version: ${stdout}${stderr}`);
    return match[1];
  } catch (err) {
    if (err instanceof NatsServerError) throw err;
    throw new NatsServerError(`nats-server is not installed (could not run \`${bin}\`); ${(await natsServerPin()).installHint}`, { cause: err });
  }
}

/**
 * Throws {@link NatsServerError} naming the version found, the minimum and how to get the
 * pinned server when `version` is older than the minimum FlexCore supports.
 * @param where what runs it, e.g. the binary's path or a server URL
 */
export async function checkNatsServerVersion(version: string, where: string): Promise<void> {
  const p = await natsServerPin();
  if (compareVersions(version, p.minimum) >= 0) return;
  throw new NatsServerError(
    `nats-server ${version} (${where}) is too old: FlexCore needs ${p.minimum} or newer and runs ${p.pinned}; ${p.installHint}`,
  );
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

/**
 * What a server version can do that FlexCore uses. Every supported server (2.12+) has
 * `sync_interval: always`, multi-filter consumers, atomic batches, per-message TTL and batch
 * direct get; fast-ingest batches came with 2.14.
 */
export interface ServerFeatures {
  /** `jetstream.sync_interval: always` (fsync before every ack). */
  readonly syncAlways: boolean;
  /** Multiple subject filters per consumer. */
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

/** Human-readable gaps of a supported server version, for `flexcore doctor`. */
export function missingFeatures(version: string): string[] {
  const f = serverFeatures(version);
  const gaps: string[] = [];
  if (!f.fastIngest) gaps.push("no fast-ingest batches (before 2.14): with `batching: \"auto\"` the publisher falls back to one ack per event");
  return gaps;
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
  const binary = options.binary ?? (await resolveNatsServerBinary()).binary;
  const version = await natsServerVersion(binary);
  await checkNatsServerVersion(version, binary);
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
    await writeFile(configPath, withStoreDir([text, options.extraConfig ?? "", ...includes, ""].join("\n"), storeDir));
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
    const proc = spawn(binary, args, { stdio: ["ignore", "pipe", "pipe"], detached: options.detached ?? false });
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
