import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname } from "node:path";
import { promisify } from "node:util";
import type { ScriptLimits } from "./types.js";

const execFileAsync = promisify(execFile);

/** Where bubblewrap is looked for. */
export const BWRAP_BIN = "/usr/bin/bwrap";
/** `nobody`: root drops to it before running a step, so host files owned by root stay out of reach. */
export const STEP_UID = 65534;
/** Where the working directory appears inside the sandbox. */
export const SANDBOX_WORK_DIR = "/work";
// Files of /etc a Python, Bash or Node program may need; the rest (shadow, keys) is never mounted.
const ETC_ALLOW = [
  "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
  "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/mime.types", "/etc/ssl/certs", "/etc/ca-certificates",
] as const;
const NET_ETC = ["/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/gai.conf"] as const;

/** What this machine offers for isolating script steps; `flexcore doctor` prints it. */
export interface SandboxSupport {
  /** `bwrap` when bubblewrap runs here, else `plain`. */
  readonly mode: "bwrap" | "plain";
  readonly bwrapPath: string | undefined;
  readonly bwrapVersion: string | undefined;
  /** Steps run as uid 65534 (we are root and `setpriv` exists). */
  readonly dropsPrivileges: boolean;
  /** `prlimit` exists, so CPU, memory, process and file limits apply. */
  readonly rlimits: boolean;
  /** bubblewrap takes `--size` (capped private /tmp) and `--disable-userns` (0.8+). */
  readonly modernBwrap: boolean;
  /** What is weaker than the documented sandbox, for people; empty when nothing is. */
  readonly warnings: readonly string[];
}

let cached: Promise<SandboxSupport> | undefined;

function isRoot(): boolean {
  return typeof process.getuid === "function" && process.getuid() === 0;
}

/**
 * Probes bubblewrap (it must actually start a sandbox: user namespaces can be disabled),
 * `setpriv` and `prlimit`. The answer is cached for the process.
 */
export function sandboxSupport(options: { readonly fresh?: boolean } = {}): Promise<SandboxSupport> {
  if (!cached || options.fresh) cached = probe();
  return cached;
}

async function probe(): Promise<SandboxSupport> {
  const warnings: string[] = [];
  const rlimits = existsSync("/usr/bin/prlimit");
  const dropsPrivileges = isRoot() && existsSync("/usr/bin/setpriv");
  let bwrapPath: string | undefined;
  let bwrapVersion: string | undefined;
  let modernBwrap = false;
  if (existsSync(BWRAP_BIN)) {
    try {
      const v = await execFileAsync(BWRAP_BIN, ["--version"]);
      bwrapVersion = /(\d+\.\d+(?:\.\d+)?)/.exec(v.stdout)?.[1];
      const probe = async (modern: boolean): Promise<void> => {
        const extra = modern ? ["--size", "1048576", "--tmpfs", "/tmp", "--unshare-user", "--disable-userns"] : [];
        const probeCmd = [BWRAP_BIN, "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--unshare-all", ...extra, "--die-with-parent", "--new-session", "--", "/bin/true"];
        const [cmd, ...args] = dropsPrivileges ? ["/usr/bin/setpriv", ...dropArgs(), "--", ...probeCmd] : probeCmd;
        await execFileAsync(cmd!, args, { timeout: 5_000 });
      };
      try {
        await probe(true);
        modernBwrap = true;
      } catch {
        await probe(false);
        warnings.push(`bubblewrap ${bwrapVersion ?? "(unknown version)"} lacks --size/--disable-userns (0.8+): a step's private /tmp is not size-capped and it may create nested user namespaces`);
      }
      bwrapPath = BWRAP_BIN;
    } catch (err) {
      warnings.push(`bubblewrap is installed but cannot start a sandbox (${(err as Error).message.split("\n")[0]}); are user namespaces disabled?`);
    }
  } else {
    warnings.push("bubblewrap (`bwrap`) is not installed: script steps run as plain child processes with rlimits, which can read files the user can read and reach the network. Install it: `apt-get install -y bubblewrap`");
  }
  if (!rlimits) warnings.push("`prlimit` (util-linux) is missing: memory, CPU, process and file-size limits of script steps are not enforced");
  if (isRoot() && !dropsPrivileges) warnings.push("running as root without `setpriv`: script steps keep root's uid");
  return { mode: bwrapPath ? "bwrap" : "plain", bwrapPath, bwrapVersion, dropsPrivileges, rlimits, modernBwrap, warnings };
}

function dropArgs(): string[] {
  return [`--reuid=${STEP_UID}`, `--regid=${STEP_UID}`, "--clear-groups", "--inh-caps=-all"];
}

/** How to start one step: the argv and the environment the interpreter sees. */
export interface CommandPlan {
  readonly file: string;
  readonly args: readonly string[];
}

export interface PlanInput {
  readonly mode: "bwrap" | "plain";
  readonly support: SandboxSupport;
  /** Host path of the fresh working directory. */
  readonly workDir: string;
  /** Interpreter and its arguments, with paths as seen by the step. */
  readonly argv: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly limits: ScriptLimits;
  /** Whether the memory limit is the data segment (Node: V8 reserves address space) instead of the address space. */
  readonly memoryAsData: boolean;
  readonly network: boolean;
}

function rlimitArgs(limits: ScriptLimits, memoryAsData: boolean): string[] {
  const bytes = limits.memoryMb * 1024 * 1024;
  return [
    "/usr/bin/prlimit",
    memoryAsData ? `--data=${bytes}` : `--as=${bytes}`,
    `--cpu=${limits.cpuSeconds}`,
    `--nproc=${limits.maxProcesses}`,
    `--fsize=${limits.maxFileBytes}`,
    "--core=0",
    "--",
  ];
}

/**
 * Builds the command line of a step. In `bwrap` mode: read-only `/usr` and a short list of
 * `/etc` files, the working directory read-write at `/work`, a private size-capped `/tmp`,
 * new user, PID, IPC, UTS, cgroup and network namespaces, a new session, death with the
 * parent, a cleared environment; as root, the whole sandbox runs as uid 65534.
 */
export function planCommand(p: PlanInput): CommandPlan {
  const limited = [...(p.support.rlimits ? rlimitArgs(p.limits, p.memoryAsData) : []), ...p.argv];
  const outer: string[] = [];
  if (p.support.dropsPrivileges) outer.push("/usr/bin/setpriv", ...dropArgs(), "--");
  if (p.mode === "plain") {
    // The environment is passed by spawn; the working directory is the cwd.
    const all = [...outer, ...limited];
    return { file: all[0]!, args: all.slice(1) };
  }
  const b: string[] = [p.support.bwrapPath ?? BWRAP_BIN];
  b.push("--ro-bind", "/usr", "/usr");
  for (const [link, target] of [["/bin", "usr/bin"], ["/sbin", "usr/sbin"], ["/lib", "usr/lib"], ["/lib64", "usr/lib64"], ["/lib32", "usr/lib32"]] as const) {
    if (existsSync(link)) b.push("--symlink", target, link);
  }
  for (const path of [...ETC_ALLOW, ...(p.network ? NET_ETC : [])]) if (existsSync(path)) b.push("--ro-bind", path, path);
  for (const bin of p.argv.slice(0, 1)) {
    // An interpreter outside /usr (nvm, pyenv): mount its folder read-only.
    const dir = dirname(dirname(bin));
    if (!bin.startsWith("/usr/") && !bin.startsWith("/bin/") && dir !== "/") b.push("--ro-bind", dir, dir);
  }
  b.push("--proc", "/proc", "--dev", "/dev");
  if (p.support.modernBwrap) b.push("--size", String(p.limits.maxFileBytes));
  b.push("--tmpfs", "/tmp");
  b.push("--bind", p.workDir, SANDBOX_WORK_DIR, "--chdir", SANDBOX_WORK_DIR);
  b.push("--unshare-all", "--unshare-user");
  if (p.network) b.push("--share-net");
  if (p.support.modernBwrap) b.push("--disable-userns");
  b.push("--die-with-parent", "--new-session", "--clearenv");
  for (const [k, v] of Object.entries(p.env)) b.push("--setenv", k, v);
  b.push("--", ...limited);
  const all = [...outer, ...b];
  return { file: all[0]!, args: all.slice(1) };
}
