/**
 * The supervisor of managed plugins. For each plugin, the instance holding the lease
 * `plugin.<name>` in `flex_leases` launches `instances` processes in the script sandbox
 * (bubblewrap, a uid of its own (pluginUid), bundle read-only at /work, private /tmp, rlimits, die with
 * parent, new session; the host's network namespace so it reaches NATS, where its own
 * user's permissions confine it), hands each a fresh nonce in the environment, and takes
 * it as ready when `$SRV.INFO.<name>` is answered with that nonce. It restarts failed
 * processes with exponential backoff and jitter, stops after a crash loop, replaces hung
 * ones, pings them, forwards their output to the log, and publishes their lifecycle.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { hostname } from "node:os";
import { isAbsolute } from "node:path";
import type { Readable } from "node:stream";
import { createInbox } from "@nats-io/transport-node";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { DEFAULT_LEASE_TTL_MS, Lease, planCommand, sandboxSupport, SandboxUnavailableError } from "../processors/index.js";
import type { SandboxSupport, ScriptLimits } from "../processors/index.js";
import { BUCKETS, checkTenantName, InvalidOptionError, openTtlKv } from "../streams/index.js";
import type { ErrorInfo, TtlKv } from "../streams/index.js";
import { PluginCrashLoopError, PluginProtocolError, PluginStartTimeoutError, PluginUpgradeFailedError } from "./errors.js";
import type { PluginLifecycle } from "./lifecycle.js";
import { DEFAULT_PLUGIN_LIMITS, HOST_PROTOCOLS } from "./manifest.js";
import type { PluginLimits } from "./manifest.js";
import { checkPluginName, pluginCredentials } from "./nats-users.js";
import { EXIT_PROTOCOL_MISMATCH, PLUGIN_NAME_PATTERN } from "./protocol.js";
import { PYTHON_SDK_MOUNT, pythonPathWithSdk, pythonSdkDir } from "./python-sdk.js";
import { checkPluginTenant, parseServiceName, PLUGIN_TENANT_ENV, tenantServiceName } from "./tenancy.js";

/** First uid of the range managed plugins run as (one uid per plugin name, see {@link pluginUid}). */
export const PLUGIN_UID_BASE = 200_000;
/** How many uids the range has. */
export const PLUGIN_UID_RANGE = 100_000;

/**
 * The uid a managed plugin runs as: one of its own, derived from its name, never
 * `STEP_UID` (65534, script steps). A process may read another's `/proc/<pid>/environ`
 * (where the plugin's NATS password is) when it has the same uid; and `RLIMIT_NPROC`
 * counts per uid. So a script step, even one run without bubblewrap (`sandbox: plain`),
 * cannot read a plugin's credentials, and a fork bomb in one plugin cannot use up another's
 * process limit (two names may share a uid by chance; bubblewrap's PID namespaces still
 * keep them apart).
 */
export function pluginUid(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return PLUGIN_UID_BASE + (h % PLUGIN_UID_RANGE);
}

/** Size of a plugin's private /tmp and largest file it may write, in bytes. */
const PLUGIN_TMP_BYTES = 64 * 1024 * 1024;

/** What the supervisor needs to launch one managed plugin (the lead maps the manifest onto it). */
export interface PluginLaunchSpec {
  /** Plugin (and NATS service) name, `^[a-z][a-z0-9-]{1,39}$`. */
  readonly name: string;
  readonly version: string;
  /**
   * argv as seen inside the sandbox, where the bundle is the working directory `/work`:
   * `["node", "main.mjs"]`. The first word is `node` (this Node), `python3`, or an absolute path.
   */
  readonly command: readonly string[];
  /** More environment variables (the host's environment is never passed). */
  readonly env?: Readonly<Record<string, string>>;
  /** The verified, read-only bundle folder (readable by every uid: the plugin runs as its own). */
  readonly bundleDir: string;
  /** Processes in the plugin's queue group. @default 1 */
  readonly instances?: number;
  readonly limits?: Partial<PluginLimits>;
  /** The operator's options, passed as `FLEXCORE_PLUGIN_CONFIG`. @default {} */
  readonly config?: Readonly<Record<string, unknown>>;
  /**
   * The NATS service name it registers as (`FLEXCORE_PLUGIN_NAME`): `name`, or its upgrade
   * slot's name {@link upgradeServiceName} (a version started beside the running one).
   * @default name
   */
  readonly service?: string;
  /** Started only while enabled ({@link PluginSupervisor.setEnabled}). @default true */
  readonly enabled?: boolean;
  /** The manifest's `sdk`: `python` mounts FlexCore's Python SDK read-only and puts it first on `PYTHONPATH`. @default none */
  readonly sdk?: "python";
  /**
   * A `tenancy: tenant` plugin's instance set for this tenant: service, NATS user, uid and
   * log prefix `<name>_<tenant>`, lease `plugin.<name>_<tenant>`, restarts of its own,
   * lifecycle on `evt.<tenant>.plugin.<name>`, and `FLEXCORE_PLUGIN_TENANT` in the handshake.
   * The supervisor's methods name it by its key `<name>_<tenant>` ({@link pluginInstanceKey}).
   * @default none: a system-tenancy plugin
   */
  readonly tenant?: string;
}

/** How the supervisor names one instance set: `<name>`, or `<name>_<tenant>` for a tenant's. */
export function pluginInstanceKey(spec: Pick<PluginLaunchSpec, "name" | "tenant">): string {
  return spec.tenant === undefined ? spec.name : tenantServiceName(spec.name, spec.tenant);
}

/** Suffix of a plugin's second service name: the slot an upgrade starts the new version in. */
export const UPGRADE_SLOT_SUFFIX = "--b";

/**
 * The two NATS service names a managed plugin alternates between across upgrades: `<name>`
 * and `<name>--b` (each with its own NATS user, both created when FlexCore starts, so the
 * new version's user exists before it is launched). Undefined for the second when the name
 * is too long for a service name (over 37 characters): such a plugin is upgraded by a restart.
 */
export function pluginServiceNames(name: string): readonly [string, string | undefined] {
  checkPluginName(name);
  const b = `${name}${UPGRADE_SLOT_SUFFIX}`;
  return [name, PLUGIN_NAME_PATTERN.test(b) ? b : undefined];
}

/**
 * The two service names of `tenant`'s instance set of a `tenancy: tenant` plugin, one per
 * slot: `<name>_<tenant>` and `<name>--b_<tenant>` (the slot's name, then `_<tenant>`, so the
 * first `_` still splits plugin slot and tenant, and no tenant's name can produce another
 * tenant's slot: `<name>_<tenant>--b` would be tenant `<tenant>--b`'s first slot).
 */
export function tenantSlotServiceNames(name: string, tenant: string): readonly [string, string | undefined] {
  const [a, b] = pluginServiceNames(name);
  return [tenantServiceName(a, tenant), b === undefined ? undefined : tenantServiceName(b, tenant)];
}

/** The service name an upgrade of a plugin now registered as `current` starts the new version under. */
export function upgradeServiceName(name: string, current: string): string | undefined {
  const [a, b] = pluginServiceNames(name);
  return current === a ? b : a;
}

/** What {@link PluginSupervisor.upgrade} did. */
export interface PluginUpgradeResult {
  readonly plugin: string;
  readonly version: string;
  readonly service: string;
  readonly previous: { readonly version: string; readonly service: string };
}

/** Options of {@link PluginSupervisor.upgrade}. */
export interface PluginUpgradeOptions {
  /**
   * Called once the new version is ready, before the old one is drained: make callers use
   * `service` (persist the chosen version, switch the clients) and resolve once the old
   * service's calls in flight were answered. A rejection abandons the upgrade.
   */
  readonly switchTo?: (service: string) => Promise<void>;
  /** How long the new version may take to become ready. @default its limits' startTimeoutMs */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /**
   * A `tenancy: tenant` plugin whose sets run on several instances: upgrade only the enabled
   * sets whose leases this instance holds (the instances holding the others upgrade theirs in
   * the same cross-instance upgrade, see plugins/upgrade-join.ts), and leave the standby sets
   * to {@link PluginSupervisor.follow}. Without it, a set held elsewhere refuses the upgrade.
   * @default false
   */
  readonly onlyHeld?: boolean;
}

/** Options of {@link startPluginSupervisor}. */
export interface PluginSupervisorOptions {
  /** Connection of the host (service user): readiness, pings, leases. */
  readonly nc: NatsConnection;
  readonly plugins: readonly PluginLaunchSpec[];
  /** Server list the plugins connect to (`FLEXCORE_PLUGIN_NATS_URL`), reachable from the host's network. */
  readonly natsUrl: string;
  /** Folder of the plugins' NATS passwords (`<name>.pass`, 0600; see plugins/nats-users.ts). */
  readonly credentialsDir: string;
  /** Log lines of the supervisor and the plugins' output (`[plugin <name>] ...`). @default none */
  readonly log?: (line: string, level?: "warn" | "error") => void;
  /** Lifecycle publisher. @default none */
  readonly lifecycle?: PluginLifecycle;
  /** This instance's name in `flex_leases`. @default `<hostname>-<pid>-<random>` */
  readonly instanceId?: string;
  /** `flex_leases` writer. @default opened on `nc` */
  readonly leases?: TtlKv;
  /** @default {@link DEFAULT_LEASE_TTL_MS} */
  readonly leaseTtlMs?: number;
  /** SIGTERM → SIGKILL, in ms. @default 5000 */
  readonly graceMs?: number;
  /**
   * Restart delays, in ms, each plus up to 25% jitter: the n-th failure within the crash-loop
   * window waits `initialMs × 2^(n-1)`, at most `maxMs`. One exception: a process that was
   * ready and is the window's first failure (a crash after a healthy run) waits only `firstMs`,
   * so one kill -9 costs a process start, not half a second more; a second failure within the
   * window is back on the doubling sequence, so a crash loop still backs off.
   * @default { initialMs: 500, maxMs: 30000, firstMs: 25 }
   */
  readonly backoff?: { readonly initialMs: number; readonly maxMs: number; readonly firstMs?: number };
  /** Failures within `windowMs` that make a crash loop. @default { failures: 5, windowMs: 60000 } */
  readonly crashLoop?: { readonly failures: number; readonly windowMs: number };
  /** @default 10000 */
  readonly pingIntervalMs?: number;
  /** Call timeouts in a row that make a plugin hung. @default 3 */
  readonly hungAfter?: number;
  /** Longest forwarded output line, in bytes (longer ones are cut). @default 4096 */
  readonly maxLineBytes?: number;
  /** Output lines forwarded per second per plugin; the rest are counted and reported. @default 100 */
  readonly maxLinesPerSecond?: number;
  /** `FLEXCORE_VERSION`. @default "0.0.0" */
  readonly hostVersion?: string;
  /** The sandbox probe's answer (tests). @default {@link sandboxSupport}() */
  readonly sandbox?: SandboxSupport;
}

/** Where a plugin is. */
export type PluginState =
  /** Another instance holds its lease (or it was not taken yet). */
  | "standby"
  | "starting"
  /** Every instance is ready. */
  | "running"
  /** Some instance is waiting for its restart. */
  | "restarting"
  /** Crash loop or protocol mismatch: no restarts until {@link PluginSupervisor.restart}. */
  | "failed"
  | "stopped";

/** One process of a plugin. */
export interface PluginInstanceStatus {
  /** pid of the sandbox's outer process (bubblewrap), leader of its process group. */
  readonly pid: number | undefined;
  readonly ready: boolean;
  /** Services-protocol id, once ready. */
  readonly id: string | undefined;
}

export interface PluginStatus {
  /** The instance set's key: the plugin's name, or `<name>_<tenant>` for a tenant's instance set. */
  readonly name: string;
  /** The plugin's name (as `name` for a system-tenancy plugin). */
  readonly plugin?: string;
  /** The tenant a `tenancy: tenant` instance set serves; absent for a system-tenancy plugin. */
  readonly tenant?: string | undefined;
  readonly state: PluginState;
  readonly leaseHeld: boolean;
  readonly instances: readonly PluginInstanceStatus[];
  /** Processes that became ready, since the supervisor started. */
  readonly starts: number;
  /** Failures since the supervisor started. */
  readonly failures: number;
  readonly lastError: ErrorInfo | undefined;
}

export interface PluginSupervisor extends AsyncDisposable {
  status(): PluginStatus[];
  status(name: string): PluginStatus;
  /** Clears a crash loop or protocol failure and launches again (operator's `flexcore plugins restart`). */
  restart(name: string): void;
  /** A call to the plugin timed out; {@link PluginSupervisorOptions.hungAfter} in a row replace its unresponsive processes. */
  reportCallTimeout(name: string): void;
  /** A call succeeded: resets the timeout count. */
  reportCallOk(name: string): void;
  /** Resolves when every instance of `name` is ready (or rejects after `timeoutMs`). */
  ready(name: string, timeoutMs?: number): Promise<void>;
  /** Stops every plugin (SIGTERM, SIGKILL after the grace period) and releases the leases. */
  stop(): Promise<void>;
  /**
   * Disabled: its processes are stopped (SIGTERM, SIGKILL after the grace period), its lease
   * released, and it is not started again until enabled; enabled: it takes its lease again.
   */
  setEnabled(name: string, enabled: boolean): Promise<void>;
  /** The launch spec now in force for `name` (after an upgrade, the new version's). */
  spec(name: string): PluginLaunchSpec;
  /**
   * Starts `next` beside the running version under the other service name, waits until
   * it is ready, lets the callers switch ({@link PluginUpgradeOptions.switchTo}), then
   * drains the old processes (SIGTERM once the switch resolved; SIGKILL after the grace
   * period) and publishes `PluginStarted` (new version) and `PluginStopped` (old version).
   * Only on the instance holding the plugin's lease.
   * @throws PluginUpgradeFailedError when the new version never becomes ready (start timeout,
   * crash loop, protocol mismatch), the switch fails, or this instance does not run it; the
   * new processes are stopped and the old one keeps serving
   */
  upgrade(name: string, next: PluginLaunchSpec, options?: PluginUpgradeOptions): Promise<PluginUpgradeResult>;
  /**
   * The version another instance's upgrade chose for plugin `name` (`chosen.service`: its slot,
   * `<name>` or `<name>--b`): every set of it this instance does not run now (standby, or
   * switched off) is replaced by one of the chosen version under the chosen slot
   * (`<slot>_<tenant>` for a tenant's set), so a failover launches what the callers call.
   * Sets this instance runs are left alone (an upgrade here already moved them).
   * @returns the keys of the sets replaced
   */
  follow(name: string, chosen: PluginLaunchSpec): string[];
}

interface Resolved {
  readonly nc: NatsConnection;
  readonly natsUrl: string;
  readonly credentialsDir: string;
  readonly log: (line: string, level?: "warn" | "error") => void;
  readonly lifecycle: PluginLifecycle | undefined;
  readonly instanceId: string;
  readonly leases: TtlKv;
  readonly leaseTtlMs: number;
  readonly graceMs: number;
  readonly backoff: { readonly initialMs: number; readonly maxMs: number; readonly firstMs: number };
  readonly crashLoop: { readonly failures: number; readonly windowMs: number };
  readonly pingIntervalMs: number;
  readonly hungAfter: number;
  readonly maxLineBytes: number;
  readonly maxLinesPerSecond: number;
  readonly hostVersion: string;
  readonly sandbox: SandboxSupport;
}

const INTERPRETERS: Record<string, string> = { node: process.execPath, python3: "/usr/bin/python3" };
/** How often INFO is asked while a launch waits for readiness, in ms. */
const READY_POLL_MS = 100;
/** How long a stop waits for a killed sandbox's processes to be gone after its outer process exited, in ms. */
const REAP_WAIT_MS = 500;
/** Timeout of one PING, in ms. */
const PING_TIMEOUT_MS = 2_000;

function positive(field: string, v: unknown, min = 1): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) throw new InvalidOptionError(field, v, `an integer from ${min} up`);
  return v;
}

/** The pids of `root`'s descendants (not `root`), from /proc. */
export function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry));
      children.set(ppid, list);
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    for (const c of children.get(queue.shift()!) ?? []) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

/** Whether `pid` exists and is not a zombie. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat[stat.lastIndexOf(")") + 2] !== "Z";
  } catch {
    return false;
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

// C0 controls but tab, DEL and C1 controls.
const CONTROL_CHARS = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f]/g;

/** Forwards a stream line by line with a prefix, each line cut at `maxBytes`, at most `perSecond` lines a second. */
class LineForwarder {
  readonly #prefix: string;
  readonly #log: (line: string, level?: "warn" | "error") => void;
  readonly #maxBytes: number;
  readonly #perSecond: number;
  #window = 0;
  #count = 0;
  #dropped = 0;

  constructor(prefix: string, log: (line: string, level?: "warn" | "error") => void, maxBytes: number, perSecond: number) {
    this.#prefix = prefix;
    this.#log = log;
    this.#maxBytes = maxBytes;
    this.#perSecond = perSecond;
  }

  attach(stream: Readable, level: "warn" | undefined): void {
    let pending: Buffer[] = [];
    let size = 0;
    let cut = false;
    stream.on("data", (chunk: Buffer) => {
      let start = 0;
      for (;;) {
        const nl = chunk.indexOf(10, start);
        const end = nl === -1 ? chunk.length : nl;
        if (!cut) {
          const take = Math.min(end - start, this.#maxBytes - size);
          if (take > 0) {
            pending.push(chunk.subarray(start, start + take));
            size += take;
          }
          if (end - start > take) cut = true;
        }
        if (nl === -1) break;
        this.#line(Buffer.concat(pending, size).toString("utf8"), cut, level);
        pending = [];
        size = 0;
        cut = false;
        start = nl + 1;
      }
      if (cut && size > 0) {
        // A line longer than the cap: forward its head now, drop the rest up to its newline.
        this.#line(Buffer.concat(pending, size).toString("utf8"), true, level);
        pending = [];
        size = 0;
      }
    });
    stream.on("end", () => {
      if (size > 0) this.#line(Buffer.concat(pending, size).toString("utf8"), cut, level);
    });
    stream.on("error", () => undefined);
  }

  #line(text: string, cut: boolean, level: "warn" | undefined): void {
    const now = Math.floor(Date.now() / 1000);
    if (now !== this.#window) {
      if (this.#dropped > 0) this.#log(`${this.#prefix} ${this.#dropped} lines dropped (over ${this.#perSecond} lines/s)`, "warn");
      this.#window = now;
      this.#count = 0;
      this.#dropped = 0;
    }
    if (this.#count >= this.#perSecond) {
      this.#dropped += 1;
      return;
    }
    this.#count += 1;
    // Control characters (terminal escapes, carriage returns) could rewrite what an operator sees in the log.
    this.#log(`${this.#prefix} ${text.replace(CONTROL_CHARS, "\uFFFD")}${cut ? " [cut]" : ""}`, level);
  }

  /** Reports lines dropped in the current second (when the process ends). */
  flush(): void {
    if (this.#dropped > 0) this.#log(`${this.#prefix} ${this.#dropped} lines dropped (over ${this.#perSecond} lines/s)`, "warn");
    this.#dropped = 0;
  }
}

/** One launched process. */
class Instance {
  readonly nonce: string;
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  id: string | undefined;
  ready = false;
  /** Killed on purpose (stop, lease lost): the exit is not a failure. */
  retired = false;
  /** Why the supervisor killed it, when it did so as a failure. */
  reason: ErrorInfo | undefined;
  startTimer: NodeJS.Timeout | undefined;
  #killTimer: NodeJS.Timeout | undefined;
  readonly #tree = new Set<number>();

  constructor(child: ChildProcess, nonce: string) {
    this.child = child;
    this.nonce = nonce;
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, sig) => {
        if (this.#killTimer) clearTimeout(this.#killTimer);
        resolve({ code, signal: sig });
      });
      child.once("error", () => resolve({ code: null, signal: null }));
    });
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /**
   * SIGTERM to the plugin's processes inside the sandbox (the sandbox's init ignores it,
   * and bubblewrap itself would die at once and take the plugin with it, without a drain),
   * then SIGKILL to the process group after `graceMs`: bubblewrap's death kills the
   * sandbox's whole PID namespace.
   */
  terminate(graceMs: number): Promise<void> {
    const pid = this.child.pid;
    if (pid === undefined || !this.running) return this.reaped();
    const tree = descendants(pid);
    tree.forEach((p) => this.#tree.add(p));
    for (const p of tree) signal(p, "SIGTERM");
    this.#killTimer ??= setTimeout(() => this.kill(), graceMs);
    return this.reaped();
  }

  /** SIGKILL to the process group and to every process of the sandbox, by pid too (the kernel tears a PID namespace down asynchronously). */
  kill(): void {
    const pid = this.child.pid;
    if (pid === undefined) return;
    const tree = descendants(pid);
    tree.forEach((p) => this.#tree.add(p));
    signal(-pid, "SIGKILL");
    signal(pid, "SIGKILL");
    for (const p of tree) signal(p, "SIGKILL");
  }

  /** Resolves once the process has exited and every process seen in its sandbox is gone (at most {@link REAP_WAIT_MS} more). */
  async reaped(): Promise<void> {
    await this.exited;
    const end = Date.now() + REAP_WAIT_MS;
    for (;;) {
      const left = [...this.#tree].filter(alive);
      if (left.length === 0 || Date.now() > end) return;
      for (const p of left) signal(p, "SIGKILL");
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/** Who answers a lease loss: the version in force (an upgrade hands the lease on). */
interface LeaseBox {
  current: ManagedPlugin;
}

/** One managed plugin (one version of it): its lease, its processes, its restarts. */
class ManagedPlugin {
  readonly spec: PluginLaunchSpec;
  readonly limits: PluginLimits;
  /** The NATS service name its processes register. */
  readonly service: string;
  readonly #o: Resolved;
  readonly #count: number;
  readonly #lease: Lease;
  readonly #box: LeaseBox;
  /** Lifecycle events; none while it is an upgrade's candidate (the running version is what plugin_status shows). */
  #lifecycle: PluginLifecycle | undefined;
  #disabled: boolean;
  /** Replaced by an upgrade: no longer holds the lease, never launches again. */
  #handedOff = false;
  /** The upgrade under way: the new version, started beside this one. */
  #candidate: ManagedPlugin | undefined;
  #failWaiters: ((err: Error) => void)[] = [];
  readonly #slots: (Instance | undefined)[];
  readonly #restartTimers = new Set<NodeJS.Timeout>();
  readonly #forwarder: LineForwarder;
  readonly #failureTimes: number[] = [];
  #state: PluginState = "standby";
  #stopping = false;
  #blocked = false;
  #starts = 0;
  #failures = 0;
  #timeouts = 0;
  #lastError: ErrorInfo | undefined;
  #leaseTimer: NodeJS.Timeout | undefined;
  #pingTimer: NodeJS.Timeout | undefined;
  #infoSub: Subscription | undefined;
  #infoTimer: NodeJS.Timeout | undefined;
  #replacing = false;
  #waiters: (() => void)[] = [];

  /** `shared`: the lease of the running version, for an upgrade's candidate (same key, same owner). */
  constructor(spec: PluginLaunchSpec, o: Resolved, shared?: { readonly lease: Lease; readonly box: LeaseBox }) {
    this.spec = spec;
    this.#o = o;
    this.service = spec.service ?? (spec.tenant === undefined ? spec.name : tenantServiceName(spec.name, spec.tenant));
    this.limits = { ...DEFAULT_PLUGIN_LIMITS, ...spec.limits };
    this.#count = spec.instances ?? 1;
    this.#slots = Array.from({ length: this.#count }, () => undefined);
    this.#lifecycle = shared ? undefined : spec.tenant === undefined ? o.lifecycle : o.lifecycle?.forTenant(spec.tenant);
    this.#disabled = spec.enabled === false;
    this.#box = shared?.box ?? { current: this };
    const box = this.#box;
    this.#lease = shared?.lease ?? new Lease(o.leases, `plugin.${pluginInstanceKey(spec)}`, o.instanceId, o.leaseTtlMs, () => box.current.#leaseLost());
    this.#forwarder = new LineForwarder(`[plugin ${pluginInstanceKey(spec)}]`, o.log, o.maxLineBytes, o.maxLinesPerSecond);
  }

  /** Whether this version may run processes: enabled, not replaced, lease held. */
  #held(): boolean {
    return !this.#disabled && !this.#handedOff && this.#lease.held;
  }

  get leaseHeld(): boolean {
    return this.#held();
  }

  get upgrading(): boolean {
    return this.#candidate !== undefined;
  }

  /** Switched off (by the operator or, for a tenant's set, by its tenant's admin). */
  get disabled(): boolean {
    return this.#disabled;
  }

  /** The instance set's key (`<name>`, or `<name>_<tenant>`): logs, errors, the supervisor's methods. */
  get name(): string {
    return pluginInstanceKey(this.spec);
  }

  status(): PluginStatus {
    return {
      name: this.name,
      plugin: this.spec.name,
      tenant: this.spec.tenant,
      state: this.#state,
      leaseHeld: this.#held(),
      instances: this.#slots.filter((s): s is Instance => s !== undefined).map((s) => ({ pid: s.child.pid, ready: s.ready, id: s.id })),
      starts: this.#starts,
      failures: this.#failures,
      lastError: this.#lastError,
    };
  }

  start(): void {
    if (this.#disabled) {
      this.#state = "stopped";
      return;
    }
    void this.#tryLease();
  }

  async #tryLease(): Promise<void> {
    if (this.#stopping || this.#disabled || this.#handedOff) return;
    this.#leaseTimer = undefined;
    let held = false;
    try {
      held = await this.#lease.tryAcquire();
    } catch (err) {
      this.#o.log(`plugin ${this.name}: lease: ${(err as Error).message}`, "warn");
    }
    if (this.#stopping || this.#disabled || this.#handedOff) {
      if (held && !this.#handedOff) await this.#lease.release();
      return;
    }
    if (!held) {
      this.#leaseTimer = setTimeout(() => void this.#tryLease(), Math.max(100, Math.floor(this.#o.leaseTtlMs / 3)));
      return;
    }
    this.#o.log(`plugin ${this.name}: lease held by ${this.#o.instanceId}; launching ${this.#count} instance(s)`);
    await this.#lifecycle?.loaded({ plugin: this.spec.name, version: this.spec.version });
    this.#begin();
  }

  /** Launches the processes (the lease is held). */
  #begin(): void {
    this.#watchInfo();
    this.#pingTimer = setInterval(() => void this.#ping(), this.#o.pingIntervalMs);
    this.#pingTimer.unref();
    for (let i = 0; i < this.#count; i++) void this.#launch(i);
  }

  #leaseLost(): void {
    this.#o.log(`plugin ${this.name}: lease lost; stopping its processes`, "warn");
    if (this.#candidate) void this.dropCandidate(new Error("the lease was lost during the upgrade"));
    void this.#retireAll().then(() => {
      this.#state = "standby";
      if (!this.#stopping) void this.#tryLease();
    });
  }

  async #retireAll(): Promise<void> {
    for (const t of this.#restartTimers) clearTimeout(t);
    this.#restartTimers.clear();
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#stopInfo();
    const exits: Promise<void>[] = [];
    for (const s of this.#slots) {
      if (!s) continue;
      s.retired = true;
      if (s.startTimer) clearTimeout(s.startTimer);
      exits.push(s.terminate(this.#o.graceMs));
    }
    await Promise.all(exits);
    // Gone processes are not instances any more (status, a later launch starts afresh).
    for (let i = 0; i < this.#slots.length; i++) if (this.#slots[i]?.retired) this.#slots[i] = undefined;
  }

  /** Asks every instance of the service for INFO while a launch waits, and matches replies to nonces. */
  #watchInfo(): void {
    if (this.#infoSub) return;
    const inbox = createInbox();
    this.#infoSub = this.#o.nc.subscribe(inbox, {
      callback: (err, m) => {
        if (err) return;
        let info: { metadata?: Record<string, string>; id?: string; name?: string; type?: string };
        try {
          info = m.json();
        } catch {
          return;
        }
        if (info?.type !== "io.nats.micro.v1.info_response" || info.name !== this.service) return;
        const nonce = info.metadata?.["flexcore.nonce"];
        const inst = this.#slots.find((s) => s && !s.ready && s.running && s.nonce === nonce);
        if (inst && typeof info.id === "string") this.#ready(inst, info.id);
      },
    });
    this.#infoTimer = setInterval(() => {
      if (this.#slots.some((s) => s && !s.ready && s.running && !s.retired)) this.#o.nc.publish(`$SRV.INFO.${this.service}`, undefined, { reply: inbox });
    }, READY_POLL_MS);
    this.#infoTimer.unref();
  }

  #stopInfo(): void {
    if (this.#infoTimer) clearInterval(this.#infoTimer);
    this.#infoTimer = undefined;
    this.#infoSub?.unsubscribe();
    this.#infoSub = undefined;
  }

  #ready(inst: Instance, id: string): void {
    if (inst.startTimer) clearTimeout(inst.startTimer);
    inst.ready = true;
    inst.id = id;
    // One PluginStarted per start of the plugin (its first ready process) and one per
    // replacement, so plugin_status counts restarts, not the instances of one start.
    const fresh = !this.#slots.some((s) => s && s !== inst && s.ready);
    const replacement = this.#starts >= this.#count;
    this.#starts += 1;
    this.#o.log(`plugin ${this.name}: instance ${id} ready (pid ${inst.child.pid})`);
    if (this.#slots.every((s) => s?.ready)) {
      this.#state = "running";
      for (const w of this.#waiters.splice(0)) w();
    } else if (this.#state !== "failed") this.#state = "starting";
    if (fresh || replacement) void this.#lifecycle?.started({ plugin: this.spec.name, version: this.spec.version, instance: id, attempt: this.#failureTimes.length + 1 });
  }

  #env(nonce: string, password: string, user: string): Record<string, string> {
    return {
      PATH: "/usr/local/bin:/usr/bin:/bin",
      HOME: "/work",
      TMPDIR: "/tmp",
      LANG: "C.UTF-8",
      ...this.spec.env,
      ...(this.spec.sdk === "python" ? { PYTHONPATH: pythonPathWithSdk(PYTHON_SDK_MOUNT, this.spec.env?.PYTHONPATH) } : {}),
      FLEXCORE_PLUGIN_NAME: this.service,
      FLEXCORE_PLUGIN_NATS_URL: this.#o.natsUrl,
      FLEXCORE_PLUGIN_NATS_USER: user,
      FLEXCORE_PLUGIN_NATS_PASSWORD: password,
      FLEXCORE_PLUGIN_PROTOCOLS: HOST_PROTOCOLS.join(","),
      FLEXCORE_PLUGIN_NONCE: nonce,
      FLEXCORE_VERSION: this.#o.hostVersion,
      FLEXCORE_PLUGIN_CONCURRENCY: String(this.limits.concurrency),
      FLEXCORE_PLUGIN_CONFIG: JSON.stringify(this.spec.config ?? {}),
      ...(this.spec.tenant === undefined ? {} : { [PLUGIN_TENANT_ENV]: this.spec.tenant }),
    };
  }

  async #launch(slot: number): Promise<void> {
    if (this.#stopping || this.#blocked || !this.#held()) return;
    if (this.#state !== "running") this.#state = "starting";
    const creds = await pluginCredentials(this.#o.credentialsDir, this.service);
    if (this.#stopping || this.#blocked || !this.#held()) return;
    const [first, ...rest] = this.spec.command;
    const argv = [INTERPRETERS[first!] ?? first!, ...rest];
    const limits: ScriptLimits = {
      timeoutMs: 0,
      memoryMb: this.limits.memoryMb,
      cpuSeconds: Number.POSITIVE_INFINITY,
      maxProcesses: this.limits.maxProcesses,
      maxOutputBytes: 0,
      maxLogBytes: 0,
      maxFileBytes: PLUGIN_TMP_BYTES,
    };
    const nonce = randomBytes(18).toString("base64url");
    const env = this.#env(nonce, creds.password, creds.user);
    // The environment goes through spawn, not bwrap's --setenv: a command line is world-readable in /proc.
    const plan = planCommand({ mode: "bwrap", support: this.#o.sandbox, workDir: this.spec.bundleDir, argv, env: {}, limits, memoryAsData: true, network: false, hostNetwork: true, readOnlyWork: true, openFiles: this.limits.openFiles, inheritEnv: true, uid: pluginUid(this.service), readOnlyBinds: this.spec.sdk === "python" ? [{ host: pythonSdkDir(), sandbox: PYTHON_SDK_MOUNT }] : [] });
    const child = spawn(plan.file, plan.args, { cwd: "/", env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    const inst = new Instance(child, nonce);
    this.#slots[slot] = inst;
    this.#forwarder.attach(child.stdout!, undefined);
    this.#forwarder.attach(child.stderr!, "warn");
    inst.startTimer = setTimeout(() => {
      if (inst.ready || !inst.running) return;
      inst.reason = toInfo(new PluginStartTimeoutError(this.name, this.limits.startTimeoutMs));
      inst.kill();
    }, this.limits.startTimeoutMs);
    const { code, signal: sig } = await inst.exited;
    if (inst.startTimer) clearTimeout(inst.startTimer);
    this.#forwarder.flush();
    if (inst.retired || this.#stopping) return;
    await this.#exited(slot, inst, code, sig);
  }

  async #exited(slot: number, inst: Instance, code: number | null, sig: NodeJS.Signals | null): Promise<void> {
    this.#failures += 1;
    const how = sig ? `killed by ${sig}` : `exited with code ${code}`;
    if (!inst.ready && code === EXIT_PROTOCOL_MISMATCH && !inst.reason) {
      const err = new PluginProtocolError(this.name, how);
      this.#block(err);
      this.#o.log(`plugin ${this.name}: ${err.message}`, "error");
      await this.#lifecycle?.failed({ plugin: this.spec.name, error: toInfo(err), willRestart: false, exitCode: code, signal: sig, attempt: 1 });
      return;
    }
    const error: ErrorInfo = inst.reason ?? { message: `plugin ${this.name} ${how}${inst.ready ? "" : " before it was ready"}` };
    this.#lastError = error;
    const now = Date.now();
    this.#failureTimes.push(now);
    while (this.#failureTimes.length > 0 && this.#failureTimes[0]! <= now - this.#o.crashLoop.windowMs) this.#failureTimes.shift();
    const attempt = this.#failureTimes.length;
    if (attempt >= this.#o.crashLoop.failures) {
      const err = new PluginCrashLoopError(this.name, attempt, this.#o.crashLoop.windowMs, error.message);
      this.#block(err);
      this.#o.log(`plugin ${this.name}: ${err.message}`, "error");
      await this.#lifecycle?.failed({ plugin: this.spec.name, error: toInfo(err), willRestart: false, exitCode: code, signal: sig, attempt });
      return;
    }
    const delay = restartDelay(this.#o.backoff, attempt, inst.ready);
    this.#state = "restarting";
    this.#o.log(`plugin ${this.name}: ${error.message}; restart ${attempt} in ${delay} ms`, "warn");
    const timer = setTimeout(() => {
      this.#restartTimers.delete(timer);
      if (this.#slots[slot] === inst) void this.#launch(slot);
    }, delay);
    this.#restartTimers.add(timer);
    await this.#lifecycle?.failed({ plugin: this.spec.name, error, willRestart: true, exitCode: code, signal: sig, attempt, nextRestartAt: new Date(now + delay).toISOString(), nextRestartInMs: delay });
  }

  #block(err: PluginProtocolError | PluginCrashLoopError): void {
    this.#blocked = true;
    this.#state = "failed";
    this.#lastError = toInfo(err);
    for (const t of this.#restartTimers) clearTimeout(t);
    this.#restartTimers.clear();
    for (const w of this.#failWaiters.splice(0)) w(err);
  }

  restart(): void {
    if (this.#stopping) return;
    this.#blocked = false;
    this.#failureTimes.length = 0;
    if (!this.#held()) return;
    for (let i = 0; i < this.#count; i++) {
      const s = this.#slots[i];
      if (!s || !s.running) void this.#launch(i);
    }
  }

  reportCallOk(): void {
    this.#timeouts = 0;
  }

  reportCallTimeout(): void {
    this.#timeouts += 1;
    if (this.#timeouts < this.#o.hungAfter || this.#replacing) return;
    this.#timeouts = 0;
    this.#replacing = true;
    void this.#replaceHung().finally(() => (this.#replacing = false));
  }

  /** Kills the ready processes that do not answer a PING; if all answer (their handlers hang, not their loop), all of them. */
  async #replaceHung(): Promise<void> {
    const ready = this.#slots.filter((s): s is Instance => s !== undefined && s.ready && s.running);
    const answered = await Promise.all(ready.map((s) => this.#pingOne(s).then(() => true, () => false)));
    let hung = ready.filter((_, i) => !answered[i]);
    if (hung.length === 0) hung = ready;
    for (const s of hung) {
      s.reason = { message: `plugin ${this.name} is hung: ${this.#o.hungAfter} calls in a row timed out` };
      this.#o.log(`plugin ${this.name}: ${s.reason.message}; replacing pid ${s.child.pid}`, "warn");
      void s.terminate(this.#o.graceMs);
    }
  }

  async #pingOne(s: Instance): Promise<number> {
    const t0 = performance.now();
    await this.#o.nc.request(`$SRV.PING.${this.service}.${s.id}`, undefined, { timeout: PING_TIMEOUT_MS });
    return performance.now() - t0;
  }

  async #ping(): Promise<void> {
    // Health starts with the first ready process: a plugin still starting is not unhealthy yet.
    if (this.#starts === 0) return;
    const ready = this.#slots.filter((s): s is Instance => s !== undefined && s.ready && s.running);
    const results = await Promise.all(ready.map((s) => this.#pingOne(s).then((ms) => ms, () => undefined)));
    const answered = results.filter((r): r is number => r !== undefined);
    const ok = answered.length === this.#count;
    const latencyMs = answered.length > 0 ? Math.max(...answered) : undefined;
    await this.#lifecycle?.health({ plugin: this.spec.name, ok, detail: `${answered.length} of ${this.#count} instance(s) answered PING`, ...(latencyMs !== undefined ? { latencyMs: Math.round(latencyMs * 100) / 100 } : {}) });
  }

  ready(timeoutMs: number): Promise<void> {
    // `ready` of the plugin as a whole; a candidate's readiness is awaited by trial().
    if (this.#state === "running") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`plugin ${this.name} not ready within ${timeoutMs} ms (state ${this.#state})`)), timeoutMs);
      this.#waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    if (this.#leaseTimer) clearTimeout(this.#leaseTimer);
    const held = this.#held();
    await this.dropCandidate(new Error("the host is stopping"));
    await this.#retireAll();
    this.#state = "stopped";
    if (held) {
      await this.#lifecycle?.stopped({ plugin: this.spec.name, version: this.spec.version, reason: "host stopping" });
      await this.#lease.release();
    }
  }

  /** Disabled: stops the processes and releases the lease; enabled: takes the lease again. */
  async setEnabled(enabled: boolean): Promise<void> {
    if (this.#stopping || this.#handedOff || enabled === !this.#disabled) return;
    if (enabled) {
      this.#disabled = false;
      this.#state = "standby";
      this.#o.log(`plugin ${this.name}: enabled; taking its lease`);
      void this.#tryLease();
      return;
    }
    const held = this.#lease.held;
    this.#disabled = true;
    if (this.#leaseTimer) clearTimeout(this.#leaseTimer);
    this.#leaseTimer = undefined;
    this.#o.log(`plugin ${this.name}: disabled; stopping its processes`);
    await this.dropCandidate(new Error("the plugin was disabled"));
    await this.#retireAll();
    this.#state = "stopped";
    if (held) {
      await this.#lifecycle?.stopped({ plugin: this.spec.name, version: this.spec.version, reason: "disabled" });
      if (this.#disabled) await this.#lease.release();
    }
  }

  /**
   * Starts `next` beside this version, sharing the lease, without lifecycle events; resolves
   * once all its processes are ready, rejects when it is blocked (crash loop, protocol) or
   * not ready within `timeoutMs` (its processes are then stopped).
   */
  async trial(next: PluginLaunchSpec, timeoutMs: number, signal?: AbortSignal): Promise<ManagedPlugin> {
    const candidate = new ManagedPlugin(next, this.#o, { lease: this.#lease, box: this.#box });
    this.#candidate = candidate;
    try {
      if (!this.#held()) throw new Error("this instance does not run it (another holds its lease, or it is disabled)");
      candidate.#state = "starting";
      candidate.#begin();
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new PluginStartTimeoutError(this.name, timeoutMs)), timeoutMs);
        const done = (err?: Error): void => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          if (err) reject(err);
          else resolve();
        };
        const onAbort = (): void => done(new Error("aborted"));
        signal?.addEventListener("abort", onAbort, { once: true });
        candidate.#waiters.push(() => done());
        candidate.#failWaiters.push((err) => done(err));
      });
      if (candidate.#stopping) throw new Error("the upgrade was abandoned");
      return candidate;
    } catch (err) {
      await this.dropCandidate(err as Error);
      throw err;
    }
  }

  /**
   * Stops the upgrade's candidate and forgets it, so that a failed upgrade does not leave
   * this version looking mid-upgrade (which would refuse every later upgrade).
   */
  async dropCandidate(why: Error): Promise<void> {
    const candidate = this.#candidate;
    this.#candidate = undefined;
    await candidate?.abandon(why);
  }

  /** Stops an upgrade's candidate that will not be promoted. */
  async abandon(why: Error): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#o.log(`plugin ${this.name}: version ${this.spec.version} (service ${this.service}) abandoned: ${why.message}`, "warn");
    for (const w of this.#failWaiters.splice(0)) w(why);
    await this.#retireAll();
    this.#state = "stopped";
  }

  /**
   * Makes the ready candidate the version in force (it answers lease losses and publishes
   * lifecycle events from now on), then drains this version's processes: SIGTERM (a plugin
   * answers its calls in flight, then exits), SIGKILL after the grace period.
   */
  async handOver(candidate: ManagedPlugin): Promise<void> {
    this.#candidate = undefined;
    this.#handedOff = true;
    if (this.#leaseTimer) clearTimeout(this.#leaseTimer);
    this.#box.current = candidate;
    candidate.#lifecycle = this.#lifecycle;
    // Restarts and failures of the new version count from its own start.
    const first = candidate.#slots.find((s) => s?.ready);
    await candidate.#lifecycle?.started({ plugin: this.spec.name, version: candidate.spec.version, ...(first?.id ? { instance: first.id } : {}), attempt: 1 });
    await this.#retireAll();
    this.#state = "stopped";
    await this.#lifecycle?.stopped({ plugin: this.spec.name, version: this.spec.version, reason: `upgraded to ${candidate.spec.version}` });
  }
}

/** First restart delay after a healthy run, in ms (see {@link PluginSupervisorOptions.backoff}). */
export const DEFAULT_FIRST_RESTART_MS = 25;

function resolveBackoff(b: PluginSupervisorOptions["backoff"]): Resolved["backoff"] {
  if (b === undefined) return { initialMs: 500, maxMs: 30_000, firstMs: DEFAULT_FIRST_RESTART_MS };
  return { initialMs: positive("backoff.initialMs", b.initialMs, 0), maxMs: positive("backoff.maxMs", b.maxMs, 0), firstMs: positive("backoff.firstMs", b.firstMs ?? Math.min(DEFAULT_FIRST_RESTART_MS, b.initialMs), 0) };
}

/**
 * The delay before restart number `attempt` (failures within the crash-loop window, this one
 * included), with up to 25% jitter so instances restarted together do not start in lockstep.
 * Exported for its unit test.
 */
export function restartDelay(backoff: { readonly initialMs: number; readonly maxMs: number; readonly firstMs: number }, attempt: number, wasReady: boolean): number {
  const base = attempt === 1 && wasReady ? backoff.firstMs : Math.min(backoff.maxMs, backoff.initialMs * 2 ** (attempt - 1));
  return Math.round(base * (1 + Math.random() * 0.25));
}

function toInfo(err: Error & { code?: string }): ErrorInfo {
  return err.code ? { message: err.message, code: err.code } : { message: err.message };
}

/**
 * Starts supervising `plugins`; returns at once (launches follow the leases). Refuses to run
 * without bubblewrap: a managed plugin is never started unsandboxed.
 * @throws InvalidOptionError for a bad spec, naming the field
 * @throws SandboxUnavailableError when bubblewrap cannot run here
 */
/** @throws InvalidOptionError naming `<at>.<field>` */
function checkSpec(p: PluginLaunchSpec, at: string): void {
  checkPluginName(p.name, `${at}.name`);
  if (typeof p.version !== "string" || p.version.length === 0) throw new InvalidOptionError(`${at}.version`, p.version, "a version string");
  if (!Array.isArray(p.command) || p.command.length === 0 || p.command.some((a) => typeof a !== "string")) throw new InvalidOptionError(`${at}.command`, p.command, "a non-empty argv of strings");
  if (!(p.command[0]! in INTERPRETERS) && !isAbsolute(p.command[0]!)) throw new InvalidOptionError(`${at}.command[0]`, p.command[0], "`node`, `python3` or an absolute path");
  if (typeof p.bundleDir !== "string" || !isAbsolute(p.bundleDir)) throw new InvalidOptionError(`${at}.bundleDir`, p.bundleDir, "an absolute path");
  if (p.instances !== undefined) positive(`${at}.instances`, p.instances);
  if (p.service !== undefined && p.tenant === undefined && !pluginServiceNames(p.name).includes(p.service)) throw new InvalidOptionError(`${at}.service`, p.service, `one of the plugin's service names (${pluginServiceNames(p.name).filter(Boolean).join(", ")})`);
  if (p.tenant !== undefined) {
    checkPluginTenant(p.tenant, `${at}.tenant`);
    checkTenantName(p.tenant, `${at}.tenant`);
    const slots = tenantSlotServiceNames(p.name, p.tenant).filter((x): x is string => x !== undefined);
    if (p.service !== undefined && !slots.includes(p.service)) throw new InvalidOptionError(`${at}.service`, p.service, `absent or one of ${slots.join(", ")} (a tenant's instance set registers as <name>_<tenant>, or <name>--b_<tenant> after an upgrade)`);
  }
  if (p.enabled !== undefined && typeof p.enabled !== "boolean") throw new InvalidOptionError(`${at}.enabled`, p.enabled, "a boolean");
  if (p.sdk !== undefined && p.sdk !== "python") throw new InvalidOptionError(`${at}.sdk`, p.sdk, "`python` or absent");
  for (const [k, v] of Object.entries(p.limits ?? {})) {
    if (!(k in DEFAULT_PLUGIN_LIMITS)) throw new InvalidOptionError(`${at}.limits.${k}`, v, `one of ${Object.keys(DEFAULT_PLUGIN_LIMITS).join(", ")}`);
    positive(`${at}.limits.${k}`, v);
  }
}

export async function startPluginSupervisor(options: PluginSupervisorOptions): Promise<PluginSupervisor> {
  const names = new Set<string>();
  options.plugins.forEach((p, i) => {
    checkSpec(p, `plugins[${i}]`);
    const key = pluginInstanceKey(p);
    if (names.has(key)) throw new InvalidOptionError(`plugins[${i}].${p.tenant === undefined ? "name" : "tenant"}`, p.tenant ?? p.name, "a plugin (and tenant) not used by another spec");
    names.add(key);
  });
  // A plugin is either system-tenancy (one set) or tenant-tenancy (sets by tenant), never both.
  options.plugins.forEach((p, i) => {
    if (p.tenant === undefined && options.plugins.some((q) => q.name === p.name && q.tenant !== undefined)) throw new InvalidOptionError(`plugins[${i}].tenant`, p.tenant, `a tenant: plugin ${p.name} has tenant instance sets in other specs`);
  });
  const sandbox = options.sandbox ?? (await sandboxSupport());
  if (sandbox.mode !== "bwrap") throw new SandboxUnavailableError(sandbox.bwrapProblem ?? "bubblewrap is not available");
  const o: Resolved = {
    nc: options.nc,
    natsUrl: options.natsUrl,
    credentialsDir: options.credentialsDir,
    log: options.log ?? (() => undefined),
    lifecycle: options.lifecycle,
    instanceId: options.instanceId ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`,
    leases: options.leases ?? (await openTtlKv(options.nc, BUCKETS.leases)),
    leaseTtlMs: positive("leaseTtlMs", options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS, 100),
    graceMs: positive("graceMs", options.graceMs ?? 5_000, 0),
    backoff: resolveBackoff(options.backoff),
    crashLoop: options.crashLoop ?? { failures: 5, windowMs: 60_000 },
    pingIntervalMs: positive("pingIntervalMs", options.pingIntervalMs ?? 10_000, 10),
    hungAfter: positive("hungAfter", options.hungAfter ?? 3),
    maxLineBytes: positive("maxLineBytes", options.maxLineBytes ?? 4_096, 16),
    maxLinesPerSecond: positive("maxLinesPerSecond", options.maxLinesPerSecond ?? 100),
    hostVersion: options.hostVersion ?? "0.0.0",
    sandbox,
  };
  const plugins = new Map(options.plugins.map((p) => [pluginInstanceKey(p), new ManagedPlugin(p, o)]));
  const get = (name: string): ManagedPlugin => {
    const p = plugins.get(name);
    if (!p) throw new InvalidOptionError("name", name, `a managed plugin (${[...plugins.keys()].join(", ") || "none"})`);
    return p;
  };
  // An instance set by its key; a tenant-tenancy plugin's bare name means all its tenants' sets.
  const every = (name: string): ManagedPlugin[] => {
    const p = plugins.get(name);
    if (p) return [p];
    const sets = [...plugins.values()].filter((x) => x.spec.name === name && x.spec.tenant !== undefined);
    return sets.length > 0 ? sets : [get(name)];
  };
  for (const p of plugins.values()) p.start();
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopped ??= Promise.all([...plugins.values()].map((p) => p.stop())).then(() => o.lifecycle?.close()));
  function status(): PluginStatus[];
  function status(name: string): PluginStatus;
  function status(name?: string): PluginStatus | PluginStatus[] {
    return name === undefined ? [...plugins.values()].map((p) => p.status()) : get(name).status();
  }
  /** What any upgrade checks first: the supervisor runs, and `next` is a valid spec of plugin `name`. */
  const checkNext = (name: string, next: PluginLaunchSpec, fail: (reason: string, cause?: unknown) => never): void => {
    if (stopped) fail("the supervisor is stopping");
    try {
      checkSpec(next, "next");
    } catch (err) {
      fail((err as Error).message, err);
    }
    if (next.name !== name) fail(`the new bundle is plugin ${JSON.stringify(next.name)}, not ${JSON.stringify(name)}`);
  };
  const upgrade = async (name: string, next: PluginLaunchSpec, opts: PluginUpgradeOptions = {}): Promise<PluginUpgradeResult> => {
    const fail = (reason: string, cause?: unknown): never => {
      throw new PluginUpgradeFailedError(name, typeof next?.version === "string" ? next.version : undefined, reason, cause === undefined ? undefined : { cause });
    };
    const key = plugins.get(name);
    if (key?.spec.tenant !== undefined) fail(`it is one tenant's instance set of a \`tenancy: tenant\` plugin; upgrade the plugin, ${key!.spec.name}, and every tenant's set follows`);
    if (!key && [...plugins.values()].some((x) => x.spec.name === name && x.spec.tenant !== undefined)) return upgradeTenantSets(name, next, opts, fail);
    const old = get(name);
    checkNext(name, next, fail);
    if (old.upgrading) fail("another upgrade of it is under way");
    if (!old.leaseHeld) fail("this instance does not run it (another instance holds its lease, or it is disabled)");
    const service = upgradeServiceName(name, old.service);
    if (!service) fail(`its name is too long for a second service name (${name}${UPGRADE_SLOT_SUFFIX}); upgrade it by a restart`);
    const spec: PluginLaunchSpec = { ...next, service: service!, enabled: true };
    const timeoutMs = opts.timeoutMs ?? spec.limits?.startTimeoutMs ?? DEFAULT_PLUGIN_LIMITS.startTimeoutMs;
    o.log(`plugin ${name}: upgrading ${old.spec.version} (service ${old.service}) to ${spec.version} (service ${service}); starting it beside the running one`);
    let candidate: ManagedPlugin | undefined;
    try {
      candidate = await old.trial(spec, timeoutMs, opts.signal);
    } catch (err) {
      fail(`version ${spec.version} did not become ready: ${(err as Error).message}`, err);
    }
    try {
      await opts.switchTo?.(service!);
    } catch (err) {
      await old.dropCandidate(err as Error);
      fail(`the callers could not be switched: ${(err as Error).message}`, err);
    }
    plugins.set(name, candidate!);
    await old.handOver(candidate!);
    o.log(`plugin ${name}: upgraded to ${spec.version}; version ${old.spec.version} drained and stopped`);
    return { plugin: name, version: spec.version, service: service!, previous: { version: old.spec.version, service: old.service } };
  };
  /**
   * A `tenancy: tenant` plugin: every tenant's set, together, through the same protocol. All
   * new sets start beside the old ones (under `<name>--b_<tenant>`, or back under
   * `<name>_<tenant>`); only when every one is ready do the callers switch, once for all
   * tenants (one stored choice), then every old set drains. If one tenant's new set never
   * becomes ready, every new set is stopped and every tenant keeps its old set serving.
   */
  const upgradeTenantSets = async (name: string, next: PluginLaunchSpec, opts: PluginUpgradeOptions, fail: (reason: string, cause?: unknown) => never): Promise<PluginUpgradeResult> => {
    const sets = [...plugins.values()].filter((x) => x.spec.name === name && x.spec.tenant !== undefined);
    checkNext(name, next, fail);
    if (next.tenant !== undefined) fail(`next.tenant is ${JSON.stringify(next.tenant)}: the upgrade applies to every tenant's set, the supervisor sets each tenant`);
    if (sets.some((x) => x.upgrading)) fail("another upgrade of it is under way");
    // One slot for the whole plugin: every set is registered under it, and one stored choice names it.
    const slots = new Set(sets.map((x) => parseServiceName(x.service).plugin));
    if (slots.size !== 1) fail(`its tenants' sets are under different slots (${[...slots].join(", ")}); restart FlexCore to bring them under the stored one`);
    const current = [...slots][0]!;
    const slot = upgradeServiceName(name, current);
    if (!slot) fail(`its name is too long for a second service name (${name}${UPGRADE_SLOT_SUFFIX}_<tenant>); upgrade it by a restart`);
    const enabled = sets.filter((x) => !x.disabled);
    if (enabled.length === 0) fail("every tenant's set is disabled; enable the plugin first");
    // With onlyHeld, the sets held elsewhere are upgraded there; the standby ones here follow the stored choice.
    const live = opts.onlyHeld ? enabled.filter((x) => x.leaseHeld) : enabled;
    if (live.length === 0) fail("this instance holds none of its tenants' sets");
    const elsewhere = live.filter((x) => !x.leaseHeld).map((x) => x.name);
    if (elsewhere.length > 0) fail(`this instance does not run the sets ${elsewhere.join(", ")} (another instance holds their leases); a tenant plugin is upgraded by the instance running all its enabled sets`);
    const specOf = (x: ManagedPlugin): PluginLaunchSpec => ({ ...next, tenant: x.spec.tenant!, service: tenantServiceName(slot!, x.spec.tenant!), enabled: !x.disabled });
    const timeoutMs = opts.timeoutMs ?? next.limits?.startTimeoutMs ?? DEFAULT_PLUGIN_LIMITS.startTimeoutMs;
    const previous = { version: live[0]!.spec.version, service: current };
    o.log(`plugin ${name}: upgrading ${previous.version} (service ${current}_<tenant>) to ${next.version} (service ${slot}_<tenant>) for tenants ${(opts.onlyHeld ? live : sets).map((x) => x.spec.tenant).join(", ")}${opts.onlyHeld ? " (the sets this instance holds)" : ""}; starting the new sets beside the running ones`);
    const trials = await Promise.allSettled(live.map((x) => x.trial(specOf(x), timeoutMs, opts.signal)));
    const candidates = trials.flatMap((t) => (t.status === "fulfilled" ? [t.value] : []));
    const failedAt = trials.findIndex((t) => t.status === "rejected");
    if (failedAt !== -1) {
      await Promise.all(live.map((x) => x.dropCandidate(new Error("another tenant's new set did not become ready"))));
      const err = (trials[failedAt] as PromiseRejectedResult).reason as Error;
      fail(`version ${next.version} did not become ready for tenant ${live[failedAt]!.spec.tenant}: ${err.message}`, err);
    }
    try {
      await opts.switchTo?.(slot!);
    } catch (err) {
      await Promise.all(live.map((x) => x.dropCandidate(err as Error)));
      fail(`the callers could not be switched: ${(err as Error).message}`, err);
    }
    // A set its tenant disabled starts nothing now; it runs the new version when enabled.
    for (const x of sets.filter((y) => y.disabled)) {
      const replaced = new ManagedPlugin(specOf(x), o);
      plugins.set(x.name, replaced);
      replaced.start();
    }
    live.forEach((x, i) => plugins.set(x.name, candidates[i]!));
    await Promise.all(live.map((x, i) => x.handOver(candidates[i]!)));
    o.log(`plugin ${name}: upgraded to ${next.version} for every tenant; version ${previous.version}'s sets drained and stopped`);
    return { plugin: name, version: next.version, service: slot!, previous };
  };
  const follow = (name: string, chosen: PluginLaunchSpec): string[] => {
    checkPluginName(name);
    if (chosen.name !== name) throw new InvalidOptionError("chosen.name", chosen.name, `plugin ${name}`);
    const replaced: string[] = [];
    if (stopped) return replaced;
    for (const [key, x] of [...plugins]) {
      if (x.spec.name !== name || x.leaseHeld || x.upgrading) continue;
      const slot = chosen.service ?? name;
      const service = x.spec.tenant === undefined ? slot : tenantServiceName(slot, x.spec.tenant);
      if (x.service === service && x.spec.version === chosen.version && x.spec.bundleDir === chosen.bundleDir) continue;
      const spec: PluginLaunchSpec = { ...chosen, service, enabled: !x.disabled, ...(x.spec.tenant === undefined ? {} : { tenant: x.spec.tenant }) };
      checkSpec(spec, "chosen");
      const next = new ManagedPlugin(spec, o);
      plugins.set(key, next);
      replaced.push(key);
      o.log(`plugin ${key}: following the chosen version ${spec.version} (service ${service}) for when this instance takes it over`);
      // The standby version stops trying for the lease first, so only the chosen one takes it.
      void x.stop().then(() => {
        if (!stopped && plugins.get(key) === next) next.start();
      });
    }
    return replaced;
  };
  return {
    status,
    upgrade,
    follow,
    setEnabled: async (name, enabled) => {
      await Promise.all(every(name).map((p) => p.setEnabled(enabled)));
    },
    spec: (name) => get(name).spec,
    restart: (name) => {
      for (const p of every(name)) p.restart();
    },
    reportCallTimeout: (name) => get(name).reportCallTimeout(),
    reportCallOk: (name) => get(name).reportCallOk(),
    ready: async (name, timeoutMs = 30_000) => {
      await Promise.all(every(name).map((p) => p.ready(timeoutMs)));
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
