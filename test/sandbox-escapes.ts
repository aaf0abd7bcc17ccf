// Escape attempts against the script-step sandbox, shared by the integration test (which
// asserts that none succeeds) and `npm run bench -- workflows` (which counts successes).
import { execFileSync } from "node:child_process";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { ScriptLanguage, ScriptResult, ScriptRunner } from "../processors/index.js";

/** Attack names, in the order they run. */
export const ATTACKS = ["read_secret", "parent_environ", "write_outside", "network", "network_loopback", "fork_bomb", "memory_bomb", "infinite_loop", "background_children"] as const;
export type Attack = (typeof ATTACKS)[number];
/** Attacks a plain child process (no bwrap) is documented to stop; the others need the sandbox. */
// A plain child cannot hide files the step's uid may read, nor the network; and a step that
// clears its environment and double-forks into a new session can outlive it (no PID namespace).
export const PLAIN_GUARANTEED: readonly Attack[] = ["parent_environ", "fork_bomb", "memory_bomb", "infinite_loop"];

/** Attacks run as steps with `network: true`: they must still not reach the host's loopback. */
export const NETWORKED: readonly Attack[] = ["network_loopback"];

/** Things of the host a step must not reach. */
export interface EscapeFixture {
  /** A fake data dir with a world-readable private key: only the sandbox's mounts hide it. */
  readonly secretFile: string;
  readonly secretMarker: string;
  /** A world-writable directory outside the step's working directory. */
  readonly outsideDir: string;
  /** Set in this process's environment: reading it from /proc/<pid>/environ is an escape. */
  readonly envMarker: string;
  readonly natsPort: number;
  close(): Promise<void>;
}

export interface EscapeOutcome {
  readonly language: ScriptLanguage;
  readonly attack: Attack;
  readonly escaped: boolean;
  /** Why it counts as escaped, or what stopped it. */
  readonly detail: string;
  readonly result: ScriptResult;
  /** Processes of the step still alive 1 s after it returned. */
  readonly leftovers: number;
}

const ENV_VAR = "FLEX_ESCAPE_TEST_SECRET";

export async function createEscapeFixture(natsPort: number): Promise<EscapeFixture> {
  const root = await mkdtemp(join(tmpdir(), "flexcore-escape-"));
  await chmod(root, 0o755);
  const keys = join(root, "data", "keys");
  await mkdir(keys, { recursive: true });
  const secretMarker = `SECRET-${Math.random().toString(36).slice(2)}`;
  const secretFile = join(keys, "gateway-private.pem");
  await writeFile(secretFile, `-----BEGIN PRIVATE KEY-----\n${secretMarker}\n-----END PRIVATE KEY-----\n`);
  await chmod(secretFile, 0o644);
  await chmod(join(root, "data"), 0o755);
  await chmod(keys, 0o755);
  const outsideDir = join(root, "outside");
  await mkdir(outsideDir);
  await chmod(outsideDir, 0o777);
  const envMarker = `ENV-${Math.random().toString(36).slice(2)}`;
  process.env[ENV_VAR] = envMarker;
  return {
    secretFile, secretMarker, outsideDir, envMarker, natsPort,
    close: async () => {
      delete process.env[ENV_VAR];
      await rm(root, { recursive: true, force: true });
    },
  };
}

interface Params {
  readonly secretFile: string;
  readonly outsideDir: string;
  readonly outsideFile: string;
  readonly natsPort: number;
  readonly hostPid: number;
  readonly sleepArg: string;
}

const JS: Record<Exclude<Attack, "network_loopback">, string> = {
  read_secret: `function main(a){ const fs=require("fs"); const got=[]; for (const p of ["/etc/shadow", a.secretFile]) { try { got.push(fs.readFileSync(p,"utf8")); } catch {} } return { got }; }`,
  parent_environ: `function main(a){ const fs=require("fs"); const got=[JSON.stringify(process.env)]; let pids=[]; try { pids=fs.readdirSync("/proc").filter(x=>/^\\d+$/.test(x)); } catch {} for (const p of [...pids, String(a.hostPid), "1"]) { try { got.push(fs.readFileSync("/proc/"+p+"/environ","latin1")); } catch {} } return { got }; }`,
  write_outside: `function main(a){ const fs=require("fs"); const done=[]; for (const p of [a.outsideFile, "/usr/flexcore-escaped", "/etc/flexcore-escaped"]) { try { fs.writeFileSync(p,"x"); done.push(p); } catch {} } return { done }; }`,
  network: `function main(a){ return new Promise((res)=>{ const s=require("net").connect(a.natsPort,"127.0.0.1"); const t=setTimeout(()=>{s.destroy(); res({connected:false, why:"timeout"})},1500); s.on("data",d=>{clearTimeout(t); s.destroy(); res({connected:true, info:String(d).slice(0,40)})}); s.on("error",e=>{clearTimeout(t); res({connected:false, why:e.code})}); }); }`,
  fork_bomb: `function main(a){ const cp=require("child_process"); for(;;){ try { cp.spawn("/bin/sh",["-c","sleep "+a.sleepArg],{detached:true,stdio:"ignore"}).unref(); } catch {} } }`,
  memory_bomb: `function main(a){ const b=[]; let mb=0; try { for(;;){ b.push(Buffer.alloc(64*1024*1024,1)); mb+=64; if (mb>=4096) break; } } catch {} return { mb }; }`,
  infinite_loop: `function main(a){ for(;;){} }`,
  background_children: `function main(a){ const cp=require("child_process"); cp.spawn("/bin/sh",["-c","sleep "+a.sleepArg],{detached:true,stdio:"ignore"}).unref(); cp.spawn("/bin/sh",["-c","setsid sleep "+a.sleepArg+" &"],{detached:true,stdio:"ignore",env:{}}).unref(); return { started: true }; }`,
};

const PY: Record<Exclude<Attack, "network_loopback">, string> = {
  read_secret: `def main(a):
    got = []
    for p in ["/etc/shadow", a["secretFile"]]:
        try:
            got.append(open(p).read())
        except Exception:
            pass
    return {"got": got}`,
  parent_environ: `import os, json
def main(a):
    got = [json.dumps(dict(os.environ))]
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except Exception:
        pids = []
    for p in pids + [str(a["hostPid"]), "1", str(os.getppid())]:
        try:
            got.append(open("/proc/%s/environ" % p, "rb").read().decode("latin1"))
        except Exception:
            pass
    return {"got": got}`,
  write_outside: `def main(a):
    done = []
    for p in [a["outsideFile"], "/usr/flexcore-escaped", "/etc/flexcore-escaped"]:
        try:
            open(p, "w").write("x")
            done.append(p)
        except Exception:
            pass
    return {"done": done}`,
  network: `import socket
def main(a):
    try:
        s = socket.create_connection(("127.0.0.1", a["natsPort"]), timeout=1.5)
        d = s.recv(64)
        return {"connected": len(d) > 0, "info": d.decode("latin1")[:40]}
    except Exception as e:
        return {"connected": False, "why": str(e)}`,
  fork_bomb: `import os, subprocess
def main(a):
    while True:
        try:
            if os.fork() == 0:
                subprocess.Popen(["/bin/sh", "-c", "sleep " + a["sleepArg"]], start_new_session=True)
        except Exception:
            pass`,
  memory_bomb: `def main(a):
    b = []
    mb = 0
    try:
        while mb < 4096:
            b.append(bytearray(64 * 1024 * 1024))
            mb += 64
    except MemoryError:
        pass
    return {"mb": mb}`,
  infinite_loop: `def main(a):
    while True:
        pass`,
  background_children: `import os, subprocess
def main(a):
    subprocess.Popen(["/bin/sh", "-c", "sleep " + a["sleepArg"]], start_new_session=True)
    subprocess.Popen(["/bin/sh", "-c", "setsid sleep " + a["sleepArg"] + " &"], env={}, start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execve("/bin/sleep", ["sleep", a["sleepArg"]], {})
        os._exit(0)
    return {"started": True}`,
};

const SH: Record<Exclude<Attack, "network_loopback">, string> = {
  read_secret: `n=0
grep -q root /etc/shadow 2>/dev/null && n=$((n+1))
grep -q SECRET "$SECRET_FILE" 2>/dev/null && n=$((n+1))
cat /etc/shadow "$SECRET_FILE" 2>/dev/null | head -c 200 | base64 -w0 > /dev/null
echo "{\\"readable\\": $n}"`,
  parent_environ: `n=$(grep -l -a FLEX_ESCAPE_TEST_SECRET /proc/[0-9]*/environ /proc/$HOST_PID/environ 2>/dev/null | wc -l)
env | grep -q -e FLEX_ESCAPE_TEST_SECRET -e NATS_URL && n=$((n+1))
echo "{\\"leaks\\": $n}"`,
  write_outside: `n=0
for p in "$OUTSIDE_FILE" /usr/flexcore-escaped /etc/flexcore-escaped; do
  (echo x > "$p") 2>/dev/null && n=$((n+1))
done
echo "{\\"written\\": $n}"`,
  network: `if (exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT && read -t 1.5 line <&3 && [ -n "$line" ]) 2>/dev/null; then echo '{"connected": true}'; else echo '{"connected": false}'; fi`,
  fork_bomb: `f(){ (sleep $SLEEP_ARG &) ; f | f & }
f
sleep 30`,
  memory_bomb: `x=$(head -c 1073741824 /dev/zero | tr '\\0' a)
echo "{\\"len\\": \${#x}}"`,
  infinite_loop: `while :; do :; done`,
  background_children: `setsid sleep $SLEEP_ARG &
nohup sleep $SLEEP_ARG >/dev/null 2>&1 &
(setsid env -i /bin/sleep $SLEEP_ARG &) &
disown -a
echo '{"started": true}'`,
};

// The same connection to NATS on 127.0.0.1, from a step that was given the network.
const SOURCES: Record<ScriptLanguage, Record<Attack, string>> = {
  javascript: { ...JS, network_loopback: JS.network },
  python: { ...PY, network_loopback: PY.network },
  bash: { ...SH, network_loopback: SH.network },
};
// Attacks that end by the timeout: a short one keeps the suite fast.
const TIMEOUT_MS: Partial<Record<Attack, number>> = { fork_bomb: 1_500, infinite_loop: 1_500, network: 5_000, network_loopback: 5_000 };
const MEMORY_MB = 128;

/** Host processes whose command line or environment carries `needle`. */
export async function processesWith(needle: string): Promise<number[]> {
  const found: number[] = [];
  for (const name of await readdir("/proc")) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      const cmd = await readFile(`/proc/${pid}/cmdline`, "latin1");
      const env = cmd.includes(needle) ? "" : await readFile(`/proc/${pid}/environ`, "latin1");
      if (cmd.includes(needle) || env.includes(needle)) found.push(pid);
    } catch {
      // gone, or a kernel thread
    }
  }
  return found;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

/** Runs one attack and judges it from the host's side. */
export async function attempt(runner: ScriptRunner, fx: EscapeFixture, language: ScriptLanguage, attack: Attack): Promise<EscapeOutcome> {
  const tag = Math.random().toString(36).slice(2, 10);
  // A unique sleep argument marks the step's stray processes even when they clear their env.
  const sleepArg = `1000.${Math.floor(Math.random() * 1e9)}`;
  const outsideFile = join(fx.outsideDir, `escaped-${language}-${attack}-${tag}`);
  const params: Params = { secretFile: fx.secretFile, outsideDir: fx.outsideDir, outsideFile, natsPort: fx.natsPort, hostPid: process.pid, sleepArg };
  const stepMark = `FLEX_STEP_MARK_${tag}`;
  const result = await runner.run(
    {
      language,
      source: SOURCES[language][attack],
      network: NETWORKED.includes(attack),
      env: {
        STEP_MARK: stepMark,
        SECRET_FILE: fx.secretFile,
        OUTSIDE_FILE: outsideFile,
        NATS_PORT: String(fx.natsPort),
        HOST_PID: String(process.pid),
        SLEEP_ARG: sleepArg,
      },
      limits: { timeoutMs: TIMEOUT_MS[attack] ?? 5_000, memoryMb: MEMORY_MB, maxProcesses: 64, cpuSeconds: 5 },
    },
    params,
  );
  await sleep(1_000);
  const leftovers = [...new Set([...(await processesWith(stepMark)), ...(await processesWith(sleepArg))])];
  for (const pid of leftovers) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
  const out = JSON.stringify(result.output ?? null);
  let escaped = false;
  let detail = result.error ?? "stopped";
  const flag = (why: string): void => {
    escaped = true;
    detail = why;
  };
  switch (attack) {
    case "read_secret":
      if (out.includes(fx.secretMarker) || /root:/.test(out) || /"readable":\s*[1-9]/.test(out)) flag(`read a secret: ${out.slice(0, 120)}`);
      break;
    case "parent_environ":
      if (out.includes(fx.envMarker) || out.includes("FLEX_ESCAPE_TEST_SECRET") || out.includes("NATS_URL") || /"leaks":\s*[1-9]/.test(out)) flag("read the host's environment");
      break;
    case "write_outside":
      if ((await exists(outsideFile)) || (await exists("/usr/flexcore-escaped")) || (await exists("/etc/flexcore-escaped"))) flag("wrote outside its working directory");
      break;
    case "network":
    case "network_loopback":
      if (/"connected":\s*true/.test(out)) flag(`connected to NATS on 127.0.0.1:${fx.natsPort}${attack === "network_loopback" ? " with network: true" : ""}`);
      break;
    case "infinite_loop":
      if (result.status === "succeeded") flag("ran to completion");
      break;
    case "memory_bomb": {
      const mb = Number((result.output as { mb?: number; len?: number } | null)?.mb ?? 0);
      const len = Number((result.output as { len?: number } | null)?.len ?? 0);
      if (mb > MEMORY_MB * 2 || len > MEMORY_MB * 2 * 1024 * 1024) flag(`allocated past its ${MEMORY_MB} MiB limit: ${out}`);
      break;
    }
    case "background_children":
      break;
  }
  if (leftovers.length > 0) flag(`${leftovers.length} process(es) of the step alive 1 s after it returned`);
  // The host must still be able to start processes.
  try {
    execFileSync("/bin/true");
  } catch (err) {
    flag(`the host could not spawn a process afterwards: ${(err as Error).message}`);
  }
  return { language, attack, escaped, detail, result, leftovers: leftovers.length };
}

/** Runs every attack in every language: one attack at a time, the three languages at once (the runner needs 3 slots). */
export async function runEscapeSuite(runner: ScriptRunner, fx: EscapeFixture, attacks: readonly Attack[] = ATTACKS): Promise<EscapeOutcome[]> {
  const out: EscapeOutcome[] = [];
  for (const attack of attacks) {
    out.push(...(await Promise.all((["javascript", "python", "bash"] as const).map((language) => attempt(runner, fx, language, attack)))));
  }
  return out;
}
