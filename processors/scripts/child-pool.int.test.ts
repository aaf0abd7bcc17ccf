import { spawn } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { processesWith } from "../../test/sandbox-escapes.js";
import { createScriptRunner } from "../index.js";
import type { ScriptLanguage } from "../index.js";
import { supervisorThreads } from "./child-pool.js";

const HOST = fileURLToPath(new URL("../../test/script-host-child.ts", import.meta.url));
// Both modes, always: where bubblewrap cannot run, the bwrap cases fail (FLEX_SANDBOX_UNAVAILABLE) instead of being left out.
const MODES = ["bwrap", "plain"] as const;

/** A unique `sleep` argument: it marks a step's processes on the host's /proc. */
const marker = (): string => `1000.${Math.floor(Math.random() * 1e9)}`;

// Steps that leave children in their process group (and Bash one in a new session) and then
// wait: only a kill of the whole group and of the marked processes (or of the PID namespace) ends them.
const LINGER: Record<ScriptLanguage, (arg: string) => string> = {
  bash: (arg) => `sleep ${arg} &\nsetsid sleep ${arg} &\nsleep ${arg}`,
  python: (arg) => `import subprocess, time\ndef main(a):\n    subprocess.Popen(["/bin/sleep", "${arg}"])\n    time.sleep(${arg})`,
  javascript: (arg) => `function main() { require("child_process").spawn("/bin/sleep", ["${arg}"], { stdio: "ignore" }); return new Promise(() => setTimeout(() => {}, 1e9)); }`,
};

/** Which steps (marked `<tag>:<i>:`) have a process on the host now. */
async function stepsAlive(tag: string): Promise<Set<string>> {
  const seen = new Set<string>();
  const re = new RegExp(`${tag}:(\\d+):`);
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const m = re.exec(await readFile(`/proc/${name}/environ`, "latin1")) ?? re.exec(await readFile(`/proc/${name}/cmdline`, "latin1"));
      if (m) seen.add(m[1]!);
    } catch {
      // gone
    }
  }
  return seen;
}

async function until(what: string, check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

it("threads × tasks per thread is exactly the configured concurrency", () => {
  expect(supervisorThreads(1, 2)).toBe(1);
  expect(supervisorThreads(4, 2)).toBe(2);
  expect(supervisorThreads(3, 2)).toBe(1);
  expect(supervisorThreads(12, 8)).toBe(6);
  expect(supervisorThreads(2, 64)).toBe(2);
});

describe.each(MODES)("child-process steps in Piscina supervisor threads (%s)", (sandbox) => {
  it("cancel kills the whole process group within 1 s, in every language", async () => {
    await using runner = await createScriptRunner({ sandbox, maxConcurrent: 3 });
    const steps = (["bash", "python", "javascript"] as const).map((language) => {
      const arg = marker();
      const ctrl = new AbortController();
      const result = runner.run({ language, source: LINGER[language](arg), limits: { timeoutMs: 60_000 } }, {}, { signal: ctrl.signal });
      return { language, arg, ctrl, result };
    });
    // Cancel once the step's child is running beside the interpreter.
    for (const s of steps) await until(`${s.language}'s children`, async () => (await processesWith(s.arg)).length >= 1);
    for (const s of steps) s.ctrl.abort();
    const results = await Promise.all(steps.map((s) => s.result));
    await sleep(1_000);
    for (const [i, s] of steps.entries()) {
      expect(results[i]!.status, s.language).toBe("timeout");
      expect(results[i]!.error, s.language).toContain("aborted");
      expect(await processesWith(s.arg), `${s.language}: processes left 1 s after the cancel`).toEqual([]);
    }
  }, 60_000);

  it("runs no more steps at once than maxConcurrent; a step cancelled in the queue never starts", async () => {
    await using runner = await createScriptRunner({ sandbox, maxConcurrent: 2 });
    const tag = `FLEX_POOL_${Math.random().toString(36).slice(2, 10)}`;
    let most = 0;
    const ever = new Set<string>();
    let polling = true;
    const poll = (async () => {
      while (polling) {
        const now = await stepsAlive(tag);
        most = Math.max(most, now.size);
        for (const i of now) ever.add(i);
        await sleep(10);
      }
    })();
    const queued = new AbortController();
    const runs = Array.from({ length: 5 }, (_, i) =>
      runner.run({ language: "bash", source: "sleep 0.6; echo '{\"ok\": true}'", env: { STEP_MARK: `${tag}:${i}:` } }, {}, i === 4 ? { signal: queued.signal } : {}));
    queued.abort();
    const results = await Promise.all(runs);
    polling = false;
    await poll;
    expect(results.slice(0, 4).map((r) => r.status)).toEqual(["succeeded", "succeeded", "succeeded", "succeeded"]);
    expect(results[4]!.error).toBe("aborted before it started");
    expect(most).toBeGreaterThanOrEqual(1);
    expect(most).toBeLessThanOrEqual(2);
    expect(ever.has("4")).toBe(false);
  }, 60_000);

  it("a SIGKILLed host leaves no process of its running step after 1 s", async () => {
    // Bash: one child in the group, one in a new session (found by its FLEX_STEP_RUN mark).
    for (const language of ["bash"] as const) {
      const arg = marker();
      const host = spawn(process.execPath, ["--import", "tsx", HOST, sandbox, language, LINGER[language](arg)], { stdio: ["ignore", "pipe", "pipe"] });
      let stderr = "";
      host.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
      let exited: number | null | undefined;
      const gone = new Promise((r) => host.once("exit", (code) => r((exited = code))));
      try {
        await until(`${language}'s children`, async () => {
          if (exited !== undefined) throw new Error(`the host exited (${exited}) before its step started: ${stderr}`);
          return (await processesWith(arg)).length >= 2;
        }, 60_000);
      } finally {
        host.kill("SIGKILL");
        await gone;
      }
      await sleep(1_000);
      expect(await processesWith(arg), `${language}: processes left 1 s after the host died`).toEqual([]);
    }
  }, 90_000);
});
