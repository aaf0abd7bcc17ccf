import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname } from "node:path";
import { promisify } from "node:util";
import { SandboxNetworkUnavailableError } from "./errors.js";
import type { ScriptLimits } from "./types.js";

const execFileAsync = promisify(execFile);

/** Where bubblewrap is looked for. */
export const BWRAP_BIN = "/usr/bin/bwrap";
/** Where `pasta` (Debian package `passt`) is looked for: it gives a networked step a network namespace of its own. */
export const PASTA_BIN = "/usr/bin/pasta";
/** `nobody`: root drops to it before running a step, so host files owned by root stay out of reach. */
export const STEP_UID = 65534;
/** Where the working directory appears inside the sandbox. */
export const SANDBOX_WORK_DIR = "/work";
/** How to fix a machine where bubblewrap cannot run, for error messages and `flexcore doctor`. */
export const BWRAP_FIX = "install bubblewrap (`apt-get install -y bubblewrap`) and allow unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`, `user.max_user_namespaces` > 0)";
/** How to fix a machine where pasta cannot give networked steps their own namespace. */
export const PASTA_FIX = "install passt (`apt-get install -y passt`) and let the step's user open /dev/net/tun (`chmod 0666 /dev/net/tun`, the usual udev default)";
/**
 * pasta's options for a networked step: its own network namespace configured like the host's
 * (`--config-net`), no port forwarded into it (`-t`/`-u none`), no port of the host's loopback
 * forwarded out of it (`-T`/`-U none`: pasta's default `auto` would make the host's NATS and
 * gateway answer on the step's 127.0.0.1), and no mapping of the gateway address to the host's
 * loopback (`--no-map-gw`). Outbound connections to other hosts go through pasta's sockets.
 */
export const PASTA_ARGS: readonly string[] = ["--config-net", "--quiet", "--foreground", "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--no-map-gw"];
// Files of /etc a Python, Bash or Node program may need; the rest (shadow, keys) is never mounted.
const ETC_ALLOW = [
  "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
  "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/mime.types", "/etc/ssl/certs", "/etc/ca-certificates",
] as const;
const NET_ETC = ["/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/gai.conf"] as const;
/** How long a probe of bubblewrap or pasta may take, in ms. */
const PROBE_TIMEOUT_MS = 5_000;

/** What this machine offers for isolating script steps; `flexcore doctor` prints it. */
export interface SandboxSupport {
  /**
   * `bwrap` when bubblewrap runs here, else `plain`: then untrusted steps are refused
   * (`FLEX_SANDBOX_UNAVAILABLE`) unless the operator chose `sandbox: "plain"`.
   */
  readonly mode: "bwrap" | "plain";
  readonly bwrapPath: string | undefined;
  readonly bwrapVersion: string | undefined;
  /** Why bubblewrap cannot run here (not installed, no user namespaces); `undefined` when it can. */
  readonly bwrapProblem: string | undefined;
  /** pasta, when it gives a sandboxed step a network namespace of its own here; else networked steps are refused. */
  readonly pastaPath: string | undefined;
  /** Why `network: true` steps are refused here (`FLEX_SANDBOX_NETWORK_UNAVAILABLE`); `undefined` when pasta works. */
  readonly pastaProblem: string | undefined;
  /** Steps run as uid 65534 (we are root and `setpriv` exists). */
  readonly dropsPrivileges: boolean;
  /** `prlimit` exists, so CPU, memory, process and file limits apply. */
  readonly rlimits: boolean;
  /** bubblewrap takes `--size` (capped private /tmp) and `--disable-userns` (0.8+). */
  readonly modernBwrap: boolean;
  /** What is weaker than the documented sandbox, for people; empty when nothing is. */
  readonly warnings: readonly string[];
}

/** Options of {@link sandboxSupport}. */
export interface SandboxProbeOptions {
  /** Probe again instead of returning the cached answer. @default false */
  readonly fresh?: boolean;
  /** bubblewrap binary to probe (tests point it at a missing or failing one). @default {@link BWRAP_BIN} */
  readonly bwrapPath?: string;
  /** pasta binary to probe. @default {@link PASTA_BIN} */
  readonly pastaPath?: string;
}

const cache = new Map<string, Promise<SandboxSupport>>();

function isRoot(): boolean {
  return typeof process.getuid === "function" && process.getuid() === 0;
}

/** First line of what a failed probe said, for people. */
function why(err: unknown): string {
  const e = err as { stderr?: string; message?: string; killed?: boolean; code?: unknown };
  if (e.killed) return `it did not finish within ${PROBE_TIMEOUT_MS} ms`;
  const said = (e.stderr ?? "").split("\n").map((l) => l.trim()).filter((l) => l.length > 0 && !l.startsWith("Failed to send"));
  return said[0] ?? (e.message ?? String(err)).split("\n")[0]!;
}

/**
 * Probes bubblewrap (it must actually start a sandbox: user namespaces can be disabled),
 * pasta (it must start a sandbox in a network namespace of its own), `setpriv` and
 * `prlimit`. The answer is cached for the process, per pair of binaries.
 */
export function sandboxSupport(options: SandboxProbeOptions = {}): Promise<SandboxSupport> {
  const bwrap = options.bwrapPath ?? BWRAP_BIN;
  const pasta = options.pastaPath ?? PASTA_BIN;
  const key = `${bwrap}\0${pasta}`;
  let found = cache.get(key);
  if (!found || options.fresh) {
    found = probe(bwrap, pasta);
    cache.set(key, found);
  }
  return found;
}

/** The smallest sandbox, as the step's user: what a probe starts. */
function probeSandbox(bwrap: string, modern: boolean, network: boolean): string[] {
  const extra = modern ? ["--size", "1048576", "--tmpfs", "/tmp", "--unshare-user", "--disable-userns"] : [];
  return [bwrap, "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--unshare-all", ...extra, ...(network ? ["--share-net"] : []), "--die-with-parent", "--new-session", "--", "/bin/true"];
}

async function probe(bwrap: string, pasta: string): Promise<SandboxSupport> {
  const warnings: string[] = [];
  const rlimits = existsSync("/usr/bin/prlimit");
  const dropsPrivileges = isRoot() && existsSync("/usr/bin/setpriv");
  const asStep = (argv: string[]): Promise<unknown> => {
    const [cmd, ...args] = dropsPrivileges ? ["/usr/bin/setpriv", ...dropArgs(STEP_UID), "--", ...argv] : argv;
    return execFileAsync(cmd!, args, { timeout: PROBE_TIMEOUT_MS, killSignal: "SIGKILL" });
  };
  let bwrapPath: string | undefined;
  let bwrapVersion: string | undefined;
  let bwrapProblem: string | undefined;
  let modernBwrap = false;
  if (existsSync(bwrap)) {
    try {
      const v = await execFileAsync(bwrap, ["--version"], { timeout: PROBE_TIMEOUT_MS });
      bwrapVersion = /(\d+\.\d+(?:\.\d+)?)/.exec(v.stdout)?.[1];
      try {
        await asStep(probeSandbox(bwrap, true, false));
        modernBwrap = true;
      } catch {
        await asStep(probeSandbox(bwrap, false, false));
        warnings.push(`bubblewrap ${bwrapVersion ?? "(unknown version)"} lacks --size/--disable-userns (0.8+): a step's private /tmp is not size-capped and it may create nested user namespaces`);
      }
      bwrapPath = bwrap;
    } catch (err) {
      bwrapProblem = `bubblewrap (${bwrap}) is installed but cannot start a sandbox (${why(err)}); are user namespaces disabled?`;
    }
  } else {
    bwrapProblem = `bubblewrap is not installed (no ${bwrap})`;
  }
  if (bwrapProblem) warnings.push(`${bwrapProblem}: untrusted script steps are refused (FLEX_SANDBOX_UNAVAILABLE) unless \`workflows.sandbox: plain\` is set, which runs them unsandboxed. Fix: ${BWRAP_FIX}`);
  let pastaPath: string | undefined;
  let pastaProblem: string | undefined;
  if (!bwrapPath) pastaProblem = "bubblewrap cannot run here, and networked steps run only inside it";
  else if (!existsSync(pasta)) pastaProblem = `pasta is not installed (no ${pasta})`;
  else {
    try {
      await asStep([pasta, ...PASTA_ARGS, "--", ...probeSandbox(bwrap, modernBwrap, true)]);
      pastaPath = pasta;
    } catch (err) {
      pastaProblem = `pasta (${pasta}) cannot start a sandbox in a network namespace of its own (${why(err)})`;
    }
  }
  if (pastaProblem) warnings.push(`${pastaProblem}: script steps with \`network: true\` are refused (FLEX_SANDBOX_NETWORK_UNAVAILABLE), since the host's network would expose NATS and the gateway on loopback. Fix: ${PASTA_FIX}`);
  if (!rlimits) warnings.push("`prlimit` (util-linux) is missing: memory, CPU, process and file-size limits of script steps are not enforced");
  if (isRoot() && !dropsPrivileges) warnings.push("running as root without `setpriv`: script steps keep root's uid");
  return { mode: bwrapPath ? "bwrap" : "plain", bwrapPath, bwrapVersion, bwrapProblem, pastaPath, pastaProblem, dropsPrivileges, rlimits, modernBwrap, warnings };
}

function dropArgs(uid: number): string[] {
  return [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--inh-caps=-all"];
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
  /**
   * Managed plugins only: keep the host's network namespace (no pasta), so the plugin reaches
   * NATS on the host's loopback; its NATS user's permissions are what confine it there.
   * Never for script steps. @default false
   */
  readonly hostNetwork?: boolean;
  /** Mount the working directory read-only (a plugin's verified bundle). @default false */
  readonly readOnlyWork?: boolean;
  /** Open files (`RLIMIT_NOFILE`); unset keeps the inherited limit. */
  readonly openFiles?: number;
  /**
   * Keep the environment bubblewrap is started with instead of `--clearenv` + `--setenv`
   * (the caller spawns it with exactly the variables the sandbox gets): a secret in `env`
   * would be on bubblewrap's command line, which every local user can read. @default false
   */
  readonly inheritEnv?: boolean;
  /**
   * The uid (and gid) the sandbox runs as when the host drops privileges. Script steps run as
   * {@link STEP_UID}; a managed plugin gets a uid of its own, so no step (nor another plugin)
   * shares its uid and could read its `/proc/<pid>/environ` (its NATS password) or use up its
   * process limit. @default STEP_UID
   */
  readonly uid?: number;
  /**
   * More host folders mounted read-only in the sandbox (bwrap mode only), e.g. the Python SDK
   * FlexCore provides to Python plugins. `sandbox` must be absolute. @default none
   */
  readonly readOnlyBinds?: readonly { readonly host: string; readonly sandbox: string }[];
}

function rlimitArgs(limits: ScriptLimits, memoryAsData: boolean, openFiles: number | undefined): string[] {
  const bytes = limits.memoryMb * 1024 * 1024;
  return [
    "/usr/bin/prlimit",
    memoryAsData ? `--data=${bytes}` : `--as=${bytes}`,
    // A long-running plugin has no CPU budget: Infinity means none.
    `--cpu=${Number.isFinite(limits.cpuSeconds) ? limits.cpuSeconds : "unlimited"}`,
    `--nproc=${limits.maxProcesses}`,
    `--fsize=${limits.maxFileBytes}`,
    ...(openFiles !== undefined ? [`--nofile=${openFiles}`] : []),
    "--core=0",
    "--",
  ];
}

/**
 * Builds the command line of a step. In `bwrap` mode: read-only `/usr` and a short list of
 * `/etc` files, the working directory read-write at `/work`, a private size-capped `/tmp`,
 * new user, PID, IPC, UTS, cgroup and network namespaces, a new session, death with the
 * parent, a cleared environment; as root, the whole sandbox runs as uid 65534. A networked
 * step runs under pasta, in a network namespace of its own with no way to the host's loopback.
 * @throws SandboxNetworkUnavailableError for a networked step in `bwrap` mode when pasta cannot run
 */
export function planCommand(p: PlanInput): CommandPlan {
  const limited = [...(p.support.rlimits ? rlimitArgs(p.limits, p.memoryAsData, p.openFiles) : []), ...p.argv];
  const outer: string[] = [];
  if (p.support.dropsPrivileges) outer.push("/usr/bin/setpriv", ...dropArgs(p.uid ?? STEP_UID), "--");
  if (p.mode === "plain") {
    // The environment is passed by spawn; the working directory is the cwd.
    const all = [...outer, ...limited];
    return { file: all[0]!, args: all.slice(1) };
  }
  if (p.network && p.hostNetwork) throw new Error("planCommand: network and hostNetwork exclude each other");
  if (p.network && !p.support.pastaPath) throw new SandboxNetworkUnavailableError(p.support.pastaProblem ?? "pasta was not probed");
  const b: string[] = [];
  // A networked step gets a network namespace of its own from pasta; bwrap then keeps it
  // (`--share-net`) instead of making an empty one. Never the host's network.
  if (p.network) b.push(p.support.pastaPath!, ...PASTA_ARGS, "--");
  b.push(p.support.bwrapPath ?? BWRAP_BIN);
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
  b.push(p.readOnlyWork ? "--ro-bind" : "--bind", p.workDir, SANDBOX_WORK_DIR, "--chdir", SANDBOX_WORK_DIR);
  for (const m of p.readOnlyBinds ?? []) b.push("--ro-bind", m.host, m.sandbox);
  b.push("--unshare-all", "--unshare-user");
  if (p.hostNetwork) {
    for (const path of NET_ETC) if (existsSync(path)) b.push("--ro-bind", path, path);
    b.push("--share-net");
  }
  if (p.network) {
    // In pasta's user namespace the step would be uid 0; keep the uid it has without network.
    const uid = p.support.dropsPrivileges ? STEP_UID : process.getuid?.() ?? STEP_UID;
    const gid = p.support.dropsPrivileges ? STEP_UID : process.getgid?.() ?? STEP_UID;
    b.push("--share-net", "--uid", String(uid), "--gid", String(gid));
  }
  if (p.support.modernBwrap) b.push("--disable-userns");
  b.push("--die-with-parent", "--new-session");
  if (!p.inheritEnv) b.push("--clearenv");
  for (const [k, v] of Object.entries(p.env)) b.push("--setenv", k, v);
  b.push("--", ...limited);
  const all = [...outer, ...b];
  return { file: all[0]!, args: all.slice(1) };
}
