// The plugins: section of flexcore.yaml, bundles to launch specs, and processors of kind
// <plugin>/<kind> checked against manifests: every mistake named by its path, a tampered or
// unsigned bundle refused before anything starts.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chmod, cp, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { ConfigError, parseConfig, pipelineSections } from "../processors/index.js";
import { keygen, pack, sign, writeKeyPair } from "./bundle.js";
import { ChecksumError, SignatureError } from "./errors.js";
import { checkPluginProcessors, pluginsSection, resolvePlugins } from "./host-config.js";

let dir: string;
let keys: string;
let store: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-host-config-"));
  await chmod(dir, 0o755);
  keys = join(dir, "keys");
  await mkdir(keys, { mode: 0o755 });
  store = join(dir, "store");
  const pair = keygen();
  await writeKeyPair(pair, join(dir, "private"), "op");
  await writeFile(join(keys, "op.pub"), pair.publicKeyPem, { mode: 0o644 });
  // A signed echo bundle (the main file need not run here).
  const bundle = join(dir, "echo");
  await mkdir(bundle);
  await cp(join(import.meta.dirname, "echo", "flexcore-plugin.yaml"), join(bundle, "flexcore-plugin.yaml"));
  await writeFile(join(bundle, "main.js"), "// stand-in\n");
  await pack(bundle);
  await sign(bundle, pair.privateKeyPem);
  // The same, unsigned.
  const unsigned = join(dir, "unsigned", "echo");
  await mkdir(unsigned, { recursive: true });
  await cp(join(bundle, "flexcore-plugin.yaml"), join(unsigned, "flexcore-plugin.yaml"));
  await writeFile(join(unsigned, "main.js"), "// stand-in\n");
  await pack(unsigned);
});
afterAll(async () => {
  if (dir) {
    execFileSync("chmod", ["-R", "u+w", dir]);
    await rm(dir, { recursive: true, force: true });
  }
});

const sections = { ...pipelineSections({ threads: 1 }), plugins: pluginsSection() };

function issues(yaml: string): string[] {
  try {
    parseConfig(yaml, sections);
  } catch (err) {
    return (err as ConfigError).issues.map((i) => `${i.path}: ${i.message}`);
  }
  return [];
}

describe("plugins: in flexcore.yaml", () => {
  it("maps names to managed or external entries with defaults", () => {
    const c = parseConfig("plugins:\n  echo:\n    bundle: ./echo\n  pii:\n    external: pii-redact\n    tenant: acme\n", sections);
    expect(c.plugins).toEqual([
      { name: "echo", managed: true, bundle: "./echo", allowUnsigned: false, instances: 1, config: {}, enabled: true, tenant: undefined },
      { name: "pii", managed: false, service: "pii-redact", enabled: true, tenant: "acme" },
    ]);
  });

  it("names every mistake by its path", () => {
    const found = issues(`plugins:
  Bad_Name: { bundle: ./x }
  both: { bundle: ./x, external: y }
  neither: { instances: 2 }
  typo: { bundle: ./x, instanse: 2 }
  ext: { external: y, instances: 2 }
  cfg: { bundle: ./x, config: [1], instances: 0 }
`).join("\n");
    expect(found).toMatch(/plugins.*Bad_Name/u);
    expect(found).toMatch(/plugins\.both/u);
    expect(found).toMatch(/plugins\.neither/u);
    expect(found).toMatch(/plugins\.typo\.instanse/u);
    expect(found).toMatch(/plugins\.cfg\.config/u);
    expect(found).toMatch(/plugins\.cfg\.instances/u);
    expect(issues("plugins:\n  ext: { external: y, instances: 2 }\n").join("\n")).toMatch(/plugins\.ext\.instances: only for managed plugins/u);
  });

  it("refuses a plugin named as another's upgrade service name (<name>--b)", () => {
    expect(issues("plugins:\n  echo: { bundle: ./x }\n  echo--b: { bundle: ./y }\n").join("\n")).toMatch(/plugins\.echo--b: .*upgrade service name of plugin echo/u);
    expect(issues("plugins:\n  echo--b: { bundle: ./y }\n")).toEqual([]);
  });
});

describe("resolvePlugins and checkPluginProcessors", () => {
  it("installs a signed bundle into the store and maps its manifest onto a launch spec", async () => {
    const r = await resolvePlugins(parseConfig("plugins:\n  echo:\n    bundle: ./echo\n    instances: 2\n    config: { delayMs: 1 }\n", sections).plugins, { baseDir: dir, storeDir: store, trustedKeysDir: keys });
    const m = r.managed[0]!;
    expect(m.installed.signer).toBeDefined();
    expect(m.spec).toMatchObject({ name: "echo", version: "1.0.0", command: ["node", "main.js"], bundleDir: m.installed.path, instances: 2, config: { delayMs: 1 } });
    expect(m.spec.bundleDir.startsWith(store)).toBe(true);
    expect(m.spec.limits).toMatchObject({ callTimeoutMs: 5000, maxProcesses: 32 });
  });

  it("refuses an unsigned bundle unless allowed by name, a tampered one always, and a bundle under another name", async () => {
    const entries = (yaml: string) => parseConfig(yaml, sections).plugins;
    const opts = { baseDir: dir, storeDir: store, trustedKeysDir: keys };
    await expect(resolvePlugins(entries("plugins:\n  echo:\n    bundle: ./unsigned/echo\n"), opts)).rejects.toBeInstanceOf(SignatureError);
    await expect(resolvePlugins(entries("plugins:\n  echo:\n    bundle: ./unsigned/echo\n    allow_unsigned: true\n"), opts)).resolves.toMatchObject({ managed: [{ installed: { signer: undefined } }] });
    const tampered = join(dir, "tampered", "echo");
    await cp(join(dir, "echo"), tampered, { recursive: true });
    await writeFile(join(tampered, "main.js"), "process.exit(0) // changed after signing\n");
    await expect(resolvePlugins(entries("plugins:\n  echo:\n    bundle: ./tampered/echo\n"), opts)).rejects.toBeInstanceOf(ChecksumError);
    const err = await resolvePlugins(entries("plugins:\n  other:\n    bundle: ./echo\n"), opts).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).issues[0]!.path).toBe("plugins.other.bundle");
  });

  it("checks processors of kind <plugin>/<kind> against the plugins and the kind's options schema", async () => {
    const c = parseConfig(`plugins:
  echo: { bundle: ./echo }
  ext: { external: ext-svc }
  mine: { external: mine-svc, tenant: acme }
processors:
  - { name: a, kind: echo/echo, subjects: ["evt.*.x.*"] }
  - { name: b, kind: echo/shout, subjects: ["evt.*.x.*"] }
  - { name: c, kind: nope/echo, subjects: ["evt.*.x.*"] }
  - { name: d, kind: echo/echo, subjects: ["evt.*.x.*"], options: { loud: true } }
  - { name: e, kind: ext/anything, subjects: ["evt.*.x.*"], options: { any: 1 } }
  - { name: f, kind: mine/x, subjects: ["evt.acme.x.*", "evt.*.y.*", "evt.globex.z.*"] }
  - { name: g, kind: mine/x, subjects: ["evt.acme.>"] }
`, sections);
    const resolved = await resolvePlugins(c.plugins, { baseDir: dir, storeDir: store, trustedKeysDir: keys });
    let err: unknown;
    try {
      checkPluginProcessors(c.processors, resolved);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const paths = (err as ConfigError).issues.map((i) => i.path);
    expect(paths).toEqual(["processors[1].kind", "processors[2].kind", "processors[3].options.loud", "processors[5].subjects[1]", "processors[5].subjects[2]"]);
    expect((err as ConfigError).issues[0]!.message).toContain("echo/echo");
  });
});
