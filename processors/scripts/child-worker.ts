// A Piscina worker thread that starts and supervises child-process steps: it spawns the
// step's process group, enforces its timeout and output caps, and kills the group when the
// host sends a cancel message on the task's port. Piscina's own abort would terminate this
// thread and leave the group running, so the host never uses it (see child-pool.ts).
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import type { ChildProcess } from "node:child_process";
import { receiveMessageOnPort } from "node:worker_threads";
import type { MessagePort } from "node:worker_threads";
import { RUN_MARK_VAR, runChild } from "./child.js";
import type { ChildRun } from "./child.js";
import type { ScriptResult } from "./types.js";

/** What the host sends on a task's port. */
export const CANCEL = "cancel";

export interface ChildTask {
  readonly run: Omit<ChildRun, "signal" | "groups" | "markPrefix">;
  /** The host posts {@link CANCEL} on it to kill the step's process group. */
  readonly port: MessagePort;
  /** Bash that runs the watchdog. */
  readonly bash: string;
}

// The watchdog outlives this process: it reads "+<pgid>" when a step's group starts and
// "-<pgid>" when it is gone; at end of input (this thread or the whole process died, even by
// SIGKILL, since the kernel closes the socket) it kills every group still listed, then every
// process marked with this thread's prefix in FLEX_STEP_RUN (a step that left its group, or
// whose group was not yet listed when the host died). Without it a plain step would outlive a
// killed host (bubblewrap also dies with the thread that started it: --die-with-parent).
const WATCHDOG = `trap '' HUP INT TERM PIPE
declare -A g
while IFS= read -r l; do
  case "$l" in
    +*) g["\${l#+}"]=1 ;;
    -*) unset "g[\${l#-}]" ;;
  esac
done
for p in "\${!g[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
for pass in 1 2 3; do
  for f in $(grep -la -- "${RUN_MARK_VAR}=$1" /proc/[0-9]*/environ 2>/dev/null); do
    p=\${f#/proc/}; kill -KILL "\${p%/environ}" 2>/dev/null
  done
done
`;
/** Start of the marks of the steps this thread supervises. */
const MARK_PREFIX = randomBytes(8).toString("hex");

let watchdog: ChildProcess | undefined;

function watch(bash: string): (line: string) => void {
  if (!watchdog || watchdog.exitCode !== null || watchdog.signalCode !== null) {
    // Its own session: a signal to the host's process group (Ctrl-C) does not take it down first.
    watchdog = spawn(bash, ["--noprofile", "--norc", "-c", WATCHDOG, "flexcore-watchdog", MARK_PREFIX], { detached: true, stdio: ["pipe", "ignore", "ignore"], env: { PATH: "/usr/bin:/bin" } });
    watchdog.stdin!.on("error", () => undefined);
    watchdog.on("error", () => undefined);
    watchdog.unref();
    (watchdog.stdin as unknown as { unref?: () => void }).unref?.();
  }
  const w = watchdog;
  return (line) => {
    w.stdin!.write(`${line}\n`);
  };
}

export default async function superviseChild(task: ChildTask): Promise<ScriptResult> {
  const ctrl = new AbortController();
  // A cancel sent while the task waited in the queue is already on the port.
  if (receiveMessageOnPort(task.port)?.message === CANCEL) ctrl.abort();
  task.port.on("message", (m) => {
    if (m === CANCEL) ctrl.abort();
  });
  try {
    const tell = watch(task.bash);
    return await runChild({
      ...task.run,
      signal: ctrl.signal,
      markPrefix: MARK_PREFIX,
      groups: { started: (pgid) => tell(`+${pgid}`), ended: (pgid) => tell(`-${pgid}`) },
    });
  } finally {
    task.port.close();
  }
}
