import { chmod, mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidOptionError } from "../../streams/index.js";
import { createScriptRunner, sandboxSupport } from "../index.js";
import type { ScriptRunner } from "../index.js";

let runner: ScriptRunner;
let workRoot: string;

beforeAll(async () => {
  workRoot = await mkdtemp(join(tmpdir(), "flexcore-runner-test-"));
  await chmod(workRoot, 0o755);
  runner = await createScriptRunner({ workRoot, maxConcurrent: 4 });
  process.env.FLEX_TEST_ALLOWED = "yes";
  process.env.FLEX_TEST_HIDDEN = "no";
  process.env.NATS_URL ??= "nats://127.0.0.1:4222";
});
afterAll(async () => {
  await runner?.close();
  await rm(workRoot, { recursive: true, force: true });
  delete process.env.FLEX_TEST_ALLOWED;
  delete process.env.FLEX_TEST_HIDDEN;
});

// The runner keeps its working directories in one folder per process under workRoot.
async function stepDirs(): Promise<string[]> {
  const [base, ...others] = await readdir(workRoot);
  expect(others).toEqual([]);
  return readdir(join(workRoot, base!));
}

const PY_ENV = "import os, json\ndef main(a):\n    print('log line')\n    return {'n': a['n'] * 2, 'env': sorted(os.environ.keys()), 'allowed': os.environ.get('FLEX_TEST_ALLOWED'), 'cwd': os.getcwd()}";

describe("script contract", () => {
  it("Python: main(args) returns JSON; logs, exit status and duration are recorded; only allowlisted env passes", async () => {
    const r = await runner.run({ language: "python", source: PY_ENV, envAllow: ["FLEX_TEST_ALLOWED"], env: { GREETING: "hi" } }, { n: 21 });
    expect(r.status).toBe("succeeded");
    expect(r.exitCode).toBe(0);
    expect(r.durationMs).toBeGreaterThan(0);
    expect(r.stdout).toBe("log line\n");
    const out = r.output as { n: number; env: string[]; allowed: string };
    expect(out.n).toBe(42);
    expect(out.allowed).toBe("yes");
    expect(out.env).toContain("GREETING");
    expect(out.env).not.toContain("FLEX_TEST_HIDDEN");
    expect(out.env).not.toContain("NATS_URL");
    expect(r.isolation).toBe((await sandboxSupport()).mode);
  });

  it("JavaScript: main may be async and use require", async () => {
    const r = await runner.run({ language: "javascript", source: "const os = require('node:os');\nasync function main(a) { console.error('warn'); return { sum: a.xs.reduce((s, x) => s + x, 0), envKeys: Object.keys(process.env) }; }" }, { xs: [1, 2, 3] });
    expect(r.status).toBe("succeeded");
    expect((r.output as { sum: number }).sum).toBe(6);
    expect((r.output as { envKeys: string[] }).envKeys).not.toContain("NATS_URL");
    expect(r.stderr).toBe("warn\n");
  });

  it("Bash: input on stdin and in $FLEX_INPUT, JSON result on the last stdout line", async () => {
    const r = await runner.run({ language: "bash", source: 'read -r line\necho "got $line"\necho "{\\"same\\": $([ "$line" = "$FLEX_INPUT" ] && echo true || echo false)}"' }, { a: 1 });
    expect(r.status).toBe("succeeded");
    expect(r.stdout.split("\n")[0]).toBe('got {"a":1}');
    expect(r.output).toEqual({ same: true });
  });

  it("records failures: non-zero exit, an exception, no main, a last line that is not JSON", async () => {
    const exit = await runner.run({ language: "bash", source: "echo oops >&2; exit 3" }, {});
    expect([exit.status, exit.exitCode, exit.stderr]).toEqual(["failed", 3, "oops\n"]);
    const thrown = await runner.run({ language: "python", source: "def main(a):\n    raise ValueError('bad input')" }, {});
    expect(thrown.status).toBe("failed");
    expect(thrown.stderr).toContain("ValueError: bad input");
    const noMain = await runner.run({ language: "javascript", source: "const x = 1;" }, {});
    expect(noMain.error).toBe("the step defines no main(args) function");
    const notJson = await runner.run({ language: "bash", source: "echo done" }, {});
    expect(notJson.status).toBe("failed");
    expect(notJson.error).toContain("not JSON");
  });

  it("caps logs and the result, and deletes every working directory", async () => {
    const logs = await runner.run({ language: "python", source: "def main(a):\n    print('x' * 100000)\n    return 1", limits: { maxLogBytes: 1000 } }, {});
    expect(logs.status).toBe("succeeded");
    expect(logs.stdout).toHaveLength(1000);
    expect(logs.truncated.stdout).toBe(true);
    const big = await runner.run({ language: "javascript", source: "function main() { return 'y'.repeat(200000); }", limits: { maxOutputBytes: 10000 } }, {});
    expect(big.status).toBe("killed");
    expect(big.error).toContain("maxOutputBytes");
    expect(await stepDirs()).toEqual([]);
  });

  it("rejects a bad spec with the field named, and runs nothing", async () => {
    const bad = [
      [{ language: "ruby", source: "x" }, "script.language"],
      [{ language: "bash", source: "" }, "script.source"],
      [{ language: "python", source: "x", trusted: true }, "script.trusted"],
      [{ language: "bash", source: "x", limits: { timeoutMs: 0 } }, "script.limits.timeoutMs"],
      [{ language: "bash", source: "x", limits: { wallMs: 5 } }, "script.limits.wallMs"],
      [{ language: "bash", source: "x", env: { "BAD-NAME": "1" } }, "script.env.BAD-NAME"],
    ] as const;
    for (const [spec, field] of bad) {
      const err = await runner.run(spec as never, {}).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidOptionError);
      expect((err as InvalidOptionError).field).toBe(field);
    }
    expect(await stepDirs()).toEqual([]);
  });
});

describe("working directories", () => {
  it("a folder left by a killed process is swept by the next runner; close removes the runner's own", async () => {
    const { spawnSync } = await import("node:child_process");
    const dead = spawnSync("/bin/true").pid!;
    const stale = join(workRoot, `flexcore-steps-${dead}-abc123`);
    await mkdir(join(stale, "flexcore-step-x"), { recursive: true });
    const second = await createScriptRunner({ workRoot });
    expect((await readdir(workRoot)).filter((n) => n.includes(`-${dead}-`))).toEqual([]);
    expect(await readdir(workRoot)).toHaveLength(2);
    await second.close();
    expect(await readdir(workRoot)).toHaveLength(1);
  });
});

describe("network", () => {
  it("is off by default; network: true gives outbound network but not the host's loopback", async () => {
    const { createServer } = await import("node:net");
    let accepted = 0;
    const server = createServer((sock) => {
      accepted += 1;
      sock.end("hello\n");
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    const source = `(exec 3<>/dev/tcp/127.0.0.1/${port} && read -t 2 line <&3 && echo "{\\"got\\": \\"$line\\"}") 2>/dev/null || echo '{"got": null}'`;
    try {
      expect(runner.isolation).toBe("bwrap");
      const off = await runner.run({ language: "bash", source }, {});
      const on = await runner.run({ language: "bash", source, network: true }, {});
      expect(off.output).toEqual({ got: null });
      // A networked step has a namespace of its own (pasta): the host's 127.0.0.1 is not its 127.0.0.1.
      expect(on.output).toEqual({ got: null });
      expect(accepted).toBe(0);
      // Only an explicitly plain runner shares the host's network (documented; doctor warns).
      await using plain = await createScriptRunner({ sandbox: "plain", workRoot });
      const bare = await plain.run({ language: "bash", source, network: true }, {});
      expect(bare.output).toEqual({ got: "hello" });
      expect(accepted).toBe(1);
    } finally {
      server.close();
    }
  });
});

describe("trusted JavaScript in worker threads", () => {
  it("runs main(args) with captured console, and terminates an endless step at its timeout", async () => {
    const ok = await runner.run({ language: "javascript", trusted: true, source: "function main(a, ctx) { console.log('hello', a.n); return { n: a.n + 1, env: ctx.env.K, host: typeof process.env.NATS_URL }; }", env: { K: "v" } }, { n: 1 });
    expect(ok).toMatchObject({ status: "succeeded", output: { n: 2, env: "v", host: "undefined" }, stdout: "hello 1\n", isolation: "worker" });
    const loop = await runner.run({ language: "javascript", trusted: true, source: "function main() { for (;;) {} }", limits: { timeoutMs: 300 } }, {});
    expect(loop.status).toBe("timeout");
    expect(loop.durationMs).toBeLessThan(2_000);
    const after = await runner.run({ language: "javascript", trusted: true, source: "function main(a) { return a; }" }, [1]);
    expect(after.output).toEqual([1]);
  });
});
