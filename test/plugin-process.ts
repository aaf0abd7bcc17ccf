import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import type { ChildProcess } from "node:child_process";
import { discoverPlugins, pythonSdkDir } from "../plugins/index.js";
import type { PluginTestNats } from "./plugin-nats.js";

/** A plugin child process launched with the handshake environment, as the supervisor would. */
export interface PluginProcess extends AsyncDisposable {
  readonly child: ChildProcess;
  readonly nonce: string;
  /** stderr so far (the plugin's JSON log lines). */
  stderr(): string;
  readonly exit: Promise<number | null>;
  /** SIGKILL if still running, then wait for the exit. */
  kill(): Promise<void>;
}

/**
 * Starts `command args` as plugin `service` (a user of `nats`, see startPluginTestNats) and
 * resolves once its INFO with the launch's nonce answers (or rejects after `timeoutMs`).
 */
export async function startPluginProcess(
  nats: PluginTestNats,
  service: string,
  launch: { readonly command: string; readonly args: readonly string[] },
  more: Record<string, string> = {},
  timeoutMs = 20_000,
): Promise<PluginProcess> {
  const env = nats.pluginEnv(service, more);
  // PYTHONPATH: a Python plugin imports FlexCore's SDK, which the sandbox mounts for `sdk: python`.
  const child = spawn(launch.command, [...launch.args], { env: { PATH: process.env.PATH ?? "", PYTHONPATH: pythonSdkDir(), ...env }, stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr!.on("data", (d: Buffer) => {
    err += d.toString();
  });
  const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const kill = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exit;
  };
  const nonce = env.FLEXCORE_PLUGIN_NONCE!;
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void exit.then(() => {
    exited = true;
  });
  for (;;) {
    if (exited) throw new Error(`plugin ${service} exited before it was ready: ${err}`);
    if ((await discoverPlugins(nats.nc, { name: service, nonce, timeoutMs: 200, limit: 1 })).length) break;
    if (Date.now() > deadline) {
      await kill();
      throw new Error(`plugin ${service} not ready within ${timeoutMs} ms: ${err}`);
    }
  }
  return { child, nonce, stderr: () => err, exit, kill, [Symbol.asyncDispose]: kill };
}

/** Pids of the live (not zombie) processes running as `uid` (a plugin's sandbox uid), from /proc. */
export function pidsOfUid(uid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/u.test(e)) continue;
    try {
      const status = readFileSync(`/proc/${e}/status`, "utf8");
      if (/State:\s+Z/u.test(status)) continue;
      if (new RegExp(`^Uid:\\s+${uid}\\s`, "mu").test(status)) out.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}
