// The sandbox fails closed: where bubblewrap cannot run, untrusted steps are refused with a
// coded error unless the operator chose `sandbox: "plain"`; nothing of a refused step runs.
import { chmod, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidOptionError } from "../../streams/index.js";
import { createScriptRunner, SandboxUnavailableError, sandboxSupport } from "../index.js";
import type { ScriptLanguage, ScriptRunner } from "../index.js";

let workRoot: string;
/** World-writable: a step that runs, sandboxed or not, as whatever uid, could drop a file here... */
let outside: string;

beforeAll(async () => {
  workRoot = await mkdtemp(join(tmpdir(), "flexcore-failclosed-"));
  await chmod(workRoot, 0o755);
  outside = await mkdtemp(join(tmpdir(), "flexcore-failclosed-out-"));
  await chmod(outside, 0o777);
});
afterAll(async () => {
  await rm(workRoot, { recursive: true, force: true });
  await rm(outside, { recursive: true, force: true });
});

// ...and this step does, in every language, whatever isolation it would get.
const MARK: Record<ScriptLanguage, (file: string) => string> = {
  bash: (file) => `echo ran > ${file}; echo '{}'`,
  python: (file) => `def main(a):\n    open(${JSON.stringify(file)}, "w").write("ran")\n    return {}`,
  javascript: (file) => `function main() { require("fs").writeFileSync(${JSON.stringify(file)}, "ran"); return {}; }`,
};

const exists = (path: string): Promise<boolean> => stat(path).then(() => true, () => false);

async function stepDirs(): Promise<string[]> {
  const names: string[] = [];
  for (const base of await readdir(workRoot)) names.push(...(await readdir(join(workRoot, base)).catch(() => [])));
  return names;
}

/** bubblewrap binaries that cannot start a sandbox: missing, and one that fails. */
const BROKEN = [
  ["/nonexistent/bwrap", "is not installed (no /nonexistent/bwrap)"],
  ["/bin/false", "cannot start a sandbox"],
] as const;

describe.each(BROKEN)("where bubblewrap cannot run (%s)", (bwrapPath, reason) => {
  it("sandboxSupport says why, and what to do", async () => {
    const s = await sandboxSupport({ bwrapPath, fresh: true });
    expect(s.mode).toBe("plain");
    expect(s.bwrapPath).toBeUndefined();
    expect(s.bwrapProblem).toContain(reason);
    expect(s.pastaProblem).toBeDefined();
    const text = s.warnings.join("\n");
    expect(text).toContain("FLEX_SANDBOX_UNAVAILABLE");
    expect(text).toContain("apt-get install -y bubblewrap");
    expect(text).toContain("sandbox: plain");
  });

  it("sandbox: auto refuses every untrusted step with FLEX_SANDBOX_UNAVAILABLE, and nothing runs", async () => {
    let runner: ScriptRunner | undefined;
    try {
      runner = await createScriptRunner({ bwrapPath, workRoot, maxConcurrent: 2 });
      expect(runner.isolation).toBe("none");
      for (const language of ["bash", "python", "javascript"] as const) {
        for (const network of [false, true]) {
          const marker = join(outside, `${language}-${network}-${Math.random().toString(36).slice(2)}`);
          const err = await runner.run({ language, source: MARK[language](marker), network }, {}).catch((e: unknown) => e);
          expect(err, `${language} network=${network}`).toBeInstanceOf(SandboxUnavailableError);
          const e = err as SandboxUnavailableError;
          expect(e.code).toBe("FLEX_SANDBOX_UNAVAILABLE");
          expect(e.reason).toContain(reason);
          expect(e.message).toContain("apt-get install -y bubblewrap");
          expect(e.message).toContain("sandbox: plain");
          expect(await exists(marker), `${language} network=${network} ran`).toBe(false);
        }
      }
      expect(await stepDirs()).toEqual([]);
      // Trusted JavaScript is the operator's own code, in worker threads: not affected.
      const trusted = await runner.run({ language: "javascript", trusted: true, source: "function main(a) { return a; }" }, { n: 1 });
      expect(trusted).toMatchObject({ status: "succeeded", output: { n: 1 }, isolation: "worker" });
    } finally {
      await runner?.close();
    }
  });

  it("sandbox: bwrap refuses to create the runner", async () => {
    const err = await createScriptRunner({ sandbox: "bwrap", bwrapPath, workRoot }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxUnavailableError);
    expect((err as SandboxUnavailableError).code).toBe("FLEX_SANDBOX_UNAVAILABLE");
  });

  it("sandbox: plain, chosen explicitly, still runs steps as plain child processes", async () => {
    await using runner = await createScriptRunner({ sandbox: "plain", bwrapPath, workRoot, maxConcurrent: 2 });
    expect(runner.isolation).toBe("plain");
    const marker = join(outside, `plain-${Math.random().toString(36).slice(2)}`);
    const r = await runner.run({ language: "bash", source: MARK.bash(marker) }, {});
    expect(r).toMatchObject({ status: "succeeded", isolation: "plain" });
    // The marker shows a step that runs is seen: the refusals above are real.
    expect(await exists(marker)).toBe(true);
  });
});

describe("bwrapPath and pastaPath", () => {
  it("must be absolute paths", async () => {
    for (const [field, value] of [["bwrapPath", "bwrap"], ["pastaPath", ""], ["bwrapPath", 3]] as const) {
      const err = await createScriptRunner({ [field]: value, workRoot } as never).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidOptionError);
      expect((err as InvalidOptionError).field).toBe(field);
    }
  });
});
