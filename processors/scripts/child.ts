import { spawn } from "node:child_process";
import type { Readable } from "node:stream";
import { chown, lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { EXIT_NO_MAIN, FILES, JS_WRAPPER, PY_WRAPPER } from "./wrappers.js";
import { planCommand, SANDBOX_WORK_DIR, STEP_UID } from "./sandbox.js";
import type { SandboxSupport } from "./sandbox.js";
import type { ScriptLanguage, ScriptLimits, ScriptResult } from "./types.js";

/** Largest `$FLEX_INPUT` given to Bash steps; bigger inputs come on stdin only. */
export const MAX_ENV_INPUT_BYTES = 64 * 1024;
/** Marks a step's processes, to find the ones that left the process group (plain mode) or outlived a killed host. */
export const RUN_MARK_VAR = "FLEX_STEP_RUN";

export interface ChildRun {
  readonly language: ScriptLanguage;
  readonly source: string;
  readonly input: unknown;
  readonly env: Readonly<Record<string, string>>;
  readonly limits: ScriptLimits;
  readonly network: boolean;
  readonly mode: "bwrap" | "plain";
  readonly support: SandboxSupport;
  readonly workRoot: string;
  readonly interpreters: { readonly python: string; readonly node: string; readonly bash: string };
  readonly signal: AbortSignal | undefined;
  /** Told the step's process group id once it exists and once it is killed (the watchdog's list). */
  readonly groups?: { started(pgid: number): void; ended(pgid: number): void };
  /** Start of the step's `FLEX_STEP_RUN` mark, so a watchdog can find the steps of its thread. @default "" */
  readonly markPrefix?: string;
}

/** A byte sink that keeps the first `cap` bytes and counts the rest. */
class Capture {
  readonly #chunks: Buffer[] = [];
  #kept = 0;
  #tail = Buffer.alloc(0);
  truncated = false;
  constructor(readonly cap: number, readonly tailCap = 0) {}
  push(chunk: Buffer): void {
    if (this.#kept < this.cap) {
      const room = this.cap - this.#kept;
      const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
      this.#chunks.push(part);
      this.#kept += part.length;
      if (part.length < chunk.length) this.truncated = true;
    } else if (chunk.length > 0) this.truncated = true;
    if (this.tailCap > 0) {
      const joined = Buffer.concat([this.#tail, chunk]);
      this.#tail = joined.length > this.tailCap ? joined.subarray(joined.length - this.tailCap) : joined;
    }
  }
  text(): string {
    return Buffer.concat(this.#chunks).toString("utf8");
  }
  tail(): string {
    return this.#tail.toString("utf8");
  }
}

function lastLine(text: string): string | undefined {
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l.length > 0);
  return lines[lines.length - 1];
}

/** Kills a process group, ignoring one that is gone. */
function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // already gone
  }
}

/** Scans of /proc after a plain step ends, at most: each kills what the one before missed. */
const MAX_KILL_SCANS = 10;

// Plain mode only: processes that called setsid() left the group; find them by the mark in
// their environment (as set at exec) or by ancestry. A process that left the group can fork
// while /proc is read (`sh -c` forking its command): its child is not in that listing, and
// once the parent is killed its ancestry is gone. So scan again until a scan finds none.
async function killMarked(mark: string, rootPid: number, uid: number | undefined): Promise<void> {
  for (let scan = 0; scan < MAX_KILL_SCANS; scan++) if ((await killMarkedOnce(mark, rootPid, uid)) === 0) return;
}

/** One scan of {@link killMarked}; returns how many processes it killed. */
async function killMarkedOnce(mark: string, rootPid: number, uid: number | undefined): Promise<number> {
  let entries: string[];
  try {
    entries = await readdir("/proc");
  } catch {
    return 0;
  }
  const needle = `${RUN_MARK_VAR}=${mark}`;
  const parents = new Map<number, number>();
  const marked: number[] = [];
  for (const name of entries) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      // Only processes of the step's user can be the step's: skip the rest without reading them.
      if (uid !== undefined && (await lstat(`/proc/${pid}`)).uid !== uid) continue;
      const stat = await readFile(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // Dead already (a zombie waits for its parent): nothing to kill, nor to count.
      if (fields[0] === "Z" || fields[0] === "X") continue;
      const ppid = Number(fields[1]);
      parents.set(pid, ppid);
      const env = await readFile(`/proc/${pid}/environ`, "latin1");
      if (env.split("\0").includes(needle)) marked.push(pid);
    } catch {
      // exited or not ours to read
    }
  }
  const doomed = new Set(marked);
  for (const pid of parents.keys()) {
    for (let p: number | undefined = pid, hops = 0; p && p > 1 && hops < 64; p = parents.get(p), hops++) {
      if (p === rootPid) doomed.add(pid);
    }
  }
  let killed = 0;
  for (const pid of doomed) {
    try {
      process.kill(pid, "SIGKILL");
      killed += 1;
    } catch {
      // gone
    }
  }
  return killed;
}

/** Runs one step as a child process (sandboxed or plain) in a fresh working directory, deleted afterwards. */
export async function runChild(run: ChildRun): Promise<ScriptResult> {
  const started = performance.now();
  if (run.signal?.aborted) {
    const none = { exitCode: null, signal: null, stdout: "", stderr: "", truncated: { stdout: false, stderr: false }, isolation: run.mode } as const;
    return { ...none, durationMs: performance.now() - started, status: "timeout", output: null, error: "aborted before it started" };
  }
  const workDir = await mkdtemp(join(run.workRoot, "flexcore-step-"));
  try {
    return await runIn(workDir, run, started);
  } finally {
    await rm(workDir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined);
  }
}

async function runIn(workDir: string, run: ChildRun, started: number): Promise<ScriptResult> {
  const inputJson = JSON.stringify(run.input ?? null);
  await writeFile(join(workDir, FILES.input), inputJson);
  const inner = run.mode === "bwrap" ? SANDBOX_WORK_DIR : workDir;
  let argv: string[];
  switch (run.language) {
    case "javascript":
      await writeFile(join(workDir, FILES.js), run.source);
      await writeFile(join(workDir, FILES.jsWrapper), JS_WRAPPER);
      argv = [run.interpreters.node, `--max-old-space-size=${run.limits.memoryMb}`, "--disable-proto=delete", join(inner, FILES.jsWrapper)];
      break;
    case "python":
      await writeFile(join(workDir, FILES.py), run.source);
      await writeFile(join(workDir, FILES.pyWrapper), PY_WRAPPER);
      argv = [run.interpreters.python, "-I", "-B", join(inner, FILES.pyWrapper)];
      break;
    case "bash":
      await writeFile(join(workDir, FILES.sh), run.source);
      argv = [run.interpreters.bash, "--noprofile", "--norc", join(inner, FILES.sh)];
      break;
  }
  const tmp = join(workDir, ".tmp");
  if (run.mode === "plain") await mkdir(tmp);
  if (run.support.dropsPrivileges) {
    for (const name of await readdir(workDir)) await chown(join(workDir, name), STEP_UID, STEP_UID);
    await chown(workDir, STEP_UID, STEP_UID);
  }
  const mark = `${run.markPrefix ?? ""}${randomBytes(12).toString("hex")}`;
  const env: Record<string, string> = {
    PATH: "/usr/local/bin:/usr/bin:/bin",
    HOME: inner,
    TMPDIR: run.mode === "bwrap" ? "/tmp" : tmp,
    LANG: "C.UTF-8",
    ...(run.language === "bash" && Buffer.byteLength(inputJson) <= MAX_ENV_INPUT_BYTES ? { FLEX_INPUT: inputJson } : {}),
    ...run.env,
    [RUN_MARK_VAR]: mark,
  };
  const plan = planCommand({
    mode: run.mode,
    support: run.support,
    workDir,
    argv,
    env,
    limits: run.limits,
    memoryAsData: run.language === "javascript",
    network: run.network,
  });

  const child = spawn(plan.file, plan.args, {
    cwd: workDir,
    env: run.mode === "plain" ? env : {},
    detached: true,
    stdio: ["pipe", "pipe", "pipe", "pipe"],
  });
  if (child.pid !== undefined) run.groups?.started(child.pid);
  const stdout = new Capture(run.limits.maxLogBytes, run.language === "bash" ? run.limits.maxOutputBytes : 0);
  const stderr = new Capture(run.limits.maxLogBytes);
  const result = new Capture(run.limits.maxOutputBytes);
  let timedOut = false;
  let aborted = false;
  let limitHit: string | undefined;
  const kill = (): void => {
    if (child.pid !== undefined) killGroup(child.pid);
  };
  child.stdout!.on("data", (c: Buffer) => stdout.push(c));
  child.stderr!.on("data", (c: Buffer) => stderr.push(c));
  const fd3 = child.stdio[3] as NodeJS.ReadableStream | null;
  fd3?.on("data", (c: Buffer) => {
    result.push(c);
    if (result.truncated && !limitHit) {
      limitHit = `the result is over maxOutputBytes (${run.limits.maxOutputBytes})`;
      kill();
    }
  });
  fd3?.on("error", () => undefined);
  child.stdin!.on("error", () => undefined);
  child.stdin!.end(run.language === "bash" ? inputJson : "");

  const timer = setTimeout(() => {
    timedOut = true;
    kill();
  }, run.limits.timeoutMs);
  const onAbort = (): void => {
    aborted = true;
    kill();
  };
  run.signal?.addEventListener("abort", onAbort, { once: true });
  if (run.signal?.aborted) onAbort();

  const { code, signal, spawnError } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; spawnError?: Error }>((resolve) => {
    child.once("error", (err) => resolve({ code: null, signal: null, spawnError: err }));
    child.once("exit", (code, sig) => resolve({ code, signal: sig }));
  });
  clearTimeout(timer);
  run.signal?.removeEventListener("abort", onAbort);
  // Nothing of the step outlives it: background children included.
  kill();
  if (run.mode === "plain" && child.pid !== undefined) await killMarked(mark, child.pid, run.support.dropsPrivileges ? STEP_UID : process.getuid?.());
  if (child.pid !== undefined) run.groups?.ended(child.pid);
  // Streams still held open by a process that escaped are cut after a short grace.
  await Promise.race([
    Promise.all([child.stdout, child.stderr, fd3 as Readable | null].map((s) => (s && !s.readableEnded && !s.destroyed ? new Promise((r) => s.once("close", r)) : undefined))),
    new Promise((r) => setTimeout(r, 250).unref()),
  ]);
  for (const s of [child.stdout, child.stderr]) s?.destroy();
  (fd3 as unknown as { destroy?: () => void } | null)?.destroy?.();

  const durationMs = performance.now() - started;
  const base = {
    exitCode: code,
    signal: signal ?? null,
    durationMs,
    stdout: stdout.text(),
    stderr: stderr.text(),
    truncated: { stdout: stdout.truncated, stderr: stderr.truncated },
    isolation: run.mode,
  } as const;
  if (spawnError) return { ...base, status: "failed", output: null, error: `could not start the step: ${spawnError.message}` };
  if (timedOut) return { ...base, status: "timeout", output: null, error: `timed out after ${run.limits.timeoutMs} ms; the process group was killed` };
  if (aborted) return { ...base, status: "timeout", output: null, error: "aborted; the process group was killed" };
  if (limitHit) return { ...base, status: "killed", output: null, error: limitHit };
  if (signal) {
    const why = signal === "SIGXCPU" ? `CPU time limit (${run.limits.cpuSeconds} s)` : signal === "SIGXFSZ" ? `file size limit (${run.limits.maxFileBytes} bytes)` : `signal ${signal}`;
    return { ...base, status: "killed", output: null, error: `killed by ${why}` };
  }
  if (code !== 0) {
    const why = code === EXIT_NO_MAIN && run.language !== "bash" ? "the step defines no main(args) function" : `exited with status ${code}`;
    return { ...base, status: "failed", output: null, error: why };
  }
  let text: string | undefined;
  if (run.language === "bash") text = lastLine(stdout.tail());
  else text = result.text();
  if (text === undefined || text.length === 0) {
    if (run.language === "bash") return { ...base, status: "succeeded", output: null };
    return { ...base, status: "failed", output: null, error: "the step returned no result" };
  }
  try {
    return { ...base, status: "succeeded", output: JSON.parse(text) as unknown };
  } catch {
    const what = run.language === "bash" ? "the last line of stdout" : "the result";
    return { ...base, status: "failed", output: null, error: `${what} is not JSON: ${text.slice(0, 200)}` };
  }
}
