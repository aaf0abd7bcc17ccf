// Upgrade bundles through the flex_plugin_bundles object store, on a real nats-server with
// real sandboxed plugin processes: an instance that cannot see the upgrade's bundle folder
// (another machine) runs the chosen version from the store after the lease holder stops; an
// instance without the signer's key refuses it; a tampered stored bundle is refused
// (FLEX_PLUGIN_CHECKSUM) and nothing of it is installed or started; old bundles are removed;
// neither a tenant nor a plugin can read or write the bucket.
import { mkdir, readdir, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { Objm } from "@nats-io/obj";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OBJECT_STORES } from "../streams/index.js";
import type { TestNats } from "../test/nats-server.js";
import { install, keygen, sign, SUM_FILE, verify } from "./bundle.js";
import { hasStoredBundle, installStoredBundle, pruneStoredBundles, storeBundle } from "./bundle-store.js";
import { connectAsPlugin, fixtureBundle, packFixtureBundle, permissionDenied, startSupervisorBed } from "./fixtures/harness.js";
import type { SupervisorBed } from "./fixtures/harness.js";
import { launchSpec } from "./host-config.js";
import type { ResolvedPlugins } from "./host-config.js";
import { createPluginHost } from "./host.js";
import { pluginServiceNames, startPluginSupervisor } from "./supervisor.js";
import type { PluginSupervisor } from "./supervisor.js";
import { applyPluginVersions, readPluginVersions, upgradePlugin, writePluginVersion } from "./upgrade.js";

const BUCKET = OBJECT_STORES.pluginBundles;
let bed: SupervisorBed;
let nats: TestNats;
const closers: Array<() => Promise<unknown>> = [];
const key = keygen();

beforeAll(async () => {
  bed = await startSupervisorBed("flexcore-plugin-objstore-", pluginServiceNames("obs").filter((s): s is string => s !== undefined), ["acme"]);
  nats = bed.nats;
  await writeFile(join(bed.keysDir, "ops.pub"), key.publicKeyPem, { mode: 0o644 });
}, 60_000);

afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  await bed?.close();
});

/** A packed bundle of the fixture plugin, outputs tagged `tag`; signed by the operator's key when `signed`. */
async function bundle(name: string, version: string, tag: string, signed: boolean): Promise<string> {
  const b = await fixtureBundle();
  closers.push(() => b.close());
  await writeFile(join(b.dir, "TAG"), `${tag}\n`, { mode: 0o644 });
  await packFixtureBundle(b.dir, { name, version, description: "object store fixture", tenancy: "system", kindDescription: "one Echoed per input" });
  if (signed) await sign(b.dir, key.privateKeyPem);
  return b.dir;
}

/** Another machine's folders: its own plugin store and trusted keys (`trusted`: the operator's key is among them). */
async function machine(label: string, trusted: boolean): Promise<{ storeDir: string; keysDir: string }> {
  const storeDir = join(bed.work, `${label}-store`);
  const keysDir = join(bed.work, `${label}-keys`);
  await mkdir(storeDir, { mode: 0o755 });
  await mkdir(keysDir, { mode: 0o700 });
  if (trusted) await writeFile(join(keysDir, "ops.pub"), key.publicKeyPem, { mode: 0o644 });
  return { storeDir, keysDir };
}

/** flexcore.yaml's `name` with bundle `dir` (installed into `storeDir` unsigned), `allow_unsigned: allowUnsigned`. */
async function managed(name: string, dir: string, storeDir: string, keysDir: string, allowUnsigned = true): Promise<ResolvedPlugins> {
  const installed = await install(dir, storeDir, { trustedKeysDir: keysDir, allowUnsigned: [name] });
  const entry = { name, managed: true as const, bundle: dir, allowUnsigned, instances: 1, config: { processor: true }, enabled: true, tenant: undefined };
  return { managed: [{ entry, installed, manifest: installed.manifest, spec: launchSpec(installed.manifest, installed.path, entry) }], external: [] };
}

async function supervise(plugins: ResolvedPlugins): Promise<PluginSupervisor> {
  const sup = await startPluginSupervisor({ nc: nats.nc, plugins: plugins.managed.map((m) => m.spec), natsUrl: nats.server.url, credentialsDir: bed.credentialsDir, log: () => undefined, graceMs: 1_000, leaseTtlMs: 2_000 });
  closers.push(() => sup.stop());
  return sup;
}

/** The tag of the version answering `service`'s echo kind. */
async function tagOf(service: string): Promise<string> {
  const reply = await nats.nc.request(`flexplugin.${service}.processor.echo`, JSON.stringify({ tenant: "acme", kind: "echo", options: {}, states: {}, inputs: [{ seq: 1 }] }), { timeout: 5_000 });
  return reply.json<{ outputs: Array<{ data: { tag: string } }> }>().outputs[0]!.data.tag;
}

async function fetchFolders(): Promise<string[]> {
  return (await readdir(tmpdir())).filter((n) => n.startsWith("flexcore-bundle-fetch-"));
}

async function streamState(): Promise<{ messages: number; last_seq: number; bytes: number }> {
  const s = (await (await jetstreamManager(nats.nc)).streams.info(`OBJ_${BUCKET}`)).state;
  return { messages: s.messages, last_seq: s.last_seq, bytes: s.bytes };
}


describe("upgrade bundles in the flex_plugin_bundles object store", () => {
  it("an instance that cannot see the upgrade's folder runs the chosen version from the store after a failover; one without the signer's key refuses it", async () => {
    const v1 = await bundle("obs", "1.0.0", "v1", false);
    const v2 = await bundle("obs", "2.0.0", "v2", true);
    // A stale bundle of the plugin, stored by an earlier upgrade: removed by this one.
    const stale = await verify(await bundle("obs", "0.9.0", "v0", true), { trustedKeysDir: bed.keysDir });
    await storeBundle(nats.nc, "obs", stale);
    expect(await hasStoredBundle(nats.nc, stale.digest)).toBe(true);

    // Instance A holds the lease, runs v1, upgrades to v2 from a folder only it sees.
    const a = await managed("obs", v1, bed.storeDir, bed.keysDir);
    const supA = await supervise(a);
    await supA.ready("obs", 20_000);
    const hostA = createPluginHost({ nc: nats.nc, plugins: a, supervisor: supA });
    const result = await upgradePlugin("obs", v2, { nc: nats.nc, supervisor: supA, host: hostA, storeDir: bed.storeDir, trustedKeysDir: bed.keysDir, settleMs: 100 });
    expect(result).toMatchObject({ version: "2.0.0", service: "obs--b" });
    expect(await tagOf("obs--b")).toBe("v2");
    // The chosen bundle is in the store, the stale one is gone.
    expect(await hasStoredBundle(nats.nc, result.digest)).toBe(true);
    expect(await hasStoredBundle(nats.nc, stale.digest)).toBe(false);
    const records = await readPluginVersions(nats.nc);
    expect(records.get("obs")).toMatchObject({ digest: result.digest, bundle: v2 });

    // The folder is gone (it never existed on B's machine), and A stops: B takes over.
    await rm(v2, { recursive: true, force: true });
    await supA.stop();
    const b = await machine("b", true);
    const lines: string[] = [];
    const before = await fetchFolders();
    const applied = await applyPluginVersions(await managed("obs", v1, b.storeDir, b.keysDir), records, { nc: nats.nc, ...b, trustedKeysDir: b.keysDir, log: (l) => void lines.push(l) });
    expect(applied.managed[0]!.spec).toMatchObject({ version: "2.0.0", service: "obs--b", bundleDir: join(b.storeDir, result.digest) });
    expect(lines.join("\n")).toMatch(/installed from the object store flex_plugin_bundles/u);
    expect(await fetchFolders()).toEqual(before);
    const supB = await supervise(applied);
    await supB.ready("obs", 20_000);
    expect(await tagOf("obs--b")).toBe("v2");
    await supB.stop();

    // An instance that does not trust the signer: the stored bundle is verified against its
    // own keys, refused, and flexcore.yaml's version runs under the chosen service.
    const c = await machine("c", false);
    const refused: string[] = [];
    const untrusting = await applyPluginVersions(await managed("obs", v1, c.storeDir, c.keysDir, false), records, { nc: nats.nc, storeDir: c.storeDir, trustedKeysDir: c.keysDir, log: (l) => void refused.push(l) });
    expect(untrusting.managed[0]!.spec).toMatchObject({ version: "1.0.0", service: "obs--b" });
    expect(refused.join("\n")).toMatch(/FLEX_PLUGIN_SIGNATURE/u);
    expect(existsSync(join(c.storeDir, result.digest))).toBe(false);
  }, 60_000);

  it("a tampered stored bundle is refused with FLEX_PLUGIN_CHECKSUM; nothing of it is installed or started", async () => {
    const v1 = await bundle("obt", "1.0.0", "t1", false);
    const v2dir = await bundle("obt", "2.0.0", "t2", true);
    const v2 = await verify(v2dir, { trustedKeysDir: bed.keysDir });
    await storeBundle(nats.nc, "obt", v2);
    await writePluginVersion(nats.nc, "obt", { version: "2.0.0", service: "obt--b", digest: v2.digest, bundle: "/nowhere/obt-2.0.0", previous: undefined, at: new Date().toISOString(), by: "test" });
    const records = await readPluginVersions(nats.nc);
    const os = await new Objm(nats.nc).open(BUCKET);

    // Untampered, it installs (the control).
    const ok = await machine("t-ok", true);
    expect((await installStoredBundle(nats.nc, v2.digest, ok.storeDir, { trustedKeysDir: ok.keysDir })).digest).toBe(v2.digest);

    // One byte of plugin.mjs flipped, written as a consistent object (what a writer of the
    // bucket could do; the object store's own digest matches the new bytes).
    const meta = (await os.info(v2.digest))!;
    const stored = new TextDecoder().decode((await os.getBlob(v2.digest))!).split("\n");
    const at = stored.findIndex((l) => l.startsWith('{"path":"plugin.mjs"'));
    const entry = JSON.parse(stored[at]!) as { path: string; data: string };
    const bytes = Buffer.from(entry.data, "base64");
    bytes[10] = bytes[10]! ^ 0x01;
    stored[at] = JSON.stringify({ path: entry.path, data: bytes.toString("base64") });
    await os.putBlob({ name: v2.digest, ...(meta.metadata ? { metadata: meta.metadata } : {}) }, new TextEncoder().encode(stored.join("\n")));
    const t = await machine("t-flip", true);
    const before = await fetchFolders();
    const err = await installStoredBundle(nats.nc, v2.digest, t.storeDir, { trustedKeysDir: t.keysDir }).then(() => undefined, (e: unknown) => e);
    expect((err as { code?: string }).code).toBe("FLEX_PLUGIN_CHECKSUM");
    expect(String((err as Error).message)).toMatch(/plugin\.mjs/u);
    expect(await fetchFolders()).toEqual(before);
    expect(existsSync(join(t.storeDir, v2.digest))).toBe(false);
    // At start: flexcore.yaml's version runs, not a byte of the tampered one.
    const lines: string[] = [];
    const applied = await applyPluginVersions(await managed("obt", v1, t.storeDir, t.keysDir), records, { nc: nats.nc, storeDir: t.storeDir, trustedKeysDir: t.keysDir, log: (l) => void lines.push(l) });
    expect(applied.managed[0]!.spec).toMatchObject({ version: "1.0.0" });
    expect(applied.managed[0]!.spec.bundleDir).not.toContain(v2.digest);
    expect(lines.join("\n")).toMatch(/FLEX_PLUGIN_CHECKSUM/u);
    expect(existsSync(join(t.storeDir, v2.digest))).toBe(false);

    // The sum replaced (and the file to match): its hash is not the digest, refused before any file is written.
    const sum = `${"0".repeat(64)}  flexcore-plugin.yaml\n`;
    await os.putBlob({ name: v2.digest }, new TextEncoder().encode([stored[0], JSON.stringify({ path: SUM_FILE, data: Buffer.from(sum).toString("base64") }), JSON.stringify({ path: "flexcore-plugin.yaml", data: "" }), ""].join("\n")));
    const s = await machine("t-sum", true);
    const sumErr = await installStoredBundle(nats.nc, v2.digest, s.storeDir, { trustedKeysDir: s.keysDir }).then(() => undefined, (e: unknown) => e);
    expect((sumErr as { code?: string }).code).toBe("FLEX_PLUGIN_CHECKSUM");
    expect(String((sumErr as Error).message)).toMatch(/not the digest/u);
    expect(existsSync(join(s.storeDir, v2.digest))).toBe(false);
    // Storing the bundle again (an upgrade from its source) replaces the bad object; the same bytes again write nothing.
    expect(await storeBundle(nats.nc, "obt", v2)).toMatchObject({ stored: true });
    expect(await storeBundle(nats.nc, "obt", v2)).toMatchObject({ stored: false });
    expect((await installStoredBundle(nats.nc, v2.digest, s.storeDir, { trustedKeysDir: s.keysDir })).digest).toBe(v2.digest);
    // Within this instance's bundle limits only: refused before the folder fills.
    const big = await installStoredBundle(nats.nc, v2.digest, s.storeDir, { trustedKeysDir: s.keysDir, limits: { maxBytes: 64 * 1024 } }).then(() => undefined, (e: unknown) => e);
    expect((big as { code?: string }).code).toBe("FLEX_PLUGIN_TOO_LARGE");
    const many = await installStoredBundle(nats.nc, v2.digest, s.storeDir, { trustedKeysDir: s.keysDir, limits: { maxFiles: 10 } }).then(() => undefined, (e: unknown) => e);
    expect((many as { code?: string }).code).toBe("FLEX_PLUGIN_TOO_LARGE");
    expect(await fetchFolders()).toEqual(before);
    // A digest never stored: refused the same way.
    const missing = await installStoredBundle(nats.nc, "f".repeat(64), s.storeDir, {}).then(() => undefined, (e: unknown) => e);
    expect((missing as { code?: string }).code).toBe("FLEX_PLUGIN_CHECKSUM");
  }, 30_000);

  it("keeps the bundles asked for and those of other plugins; removes the rest of the plugin's", async () => {
    const digests: string[] = [];
    for (const v of ["1.0.0", "2.0.0", "3.0.0"]) {
      const d = await verify(await bundle("obr", v, v, true), { trustedKeysDir: bed.keysDir });
      await storeBundle(nats.nc, "obr", d);
      digests.push(d.digest);
    }
    const other = await verify(await bundle("obq", "1.0.0", "q", true), { trustedKeysDir: bed.keysDir });
    await storeBundle(nats.nc, "obq", other);
    expect(await pruneStoredBundles(nats.nc, "obr", [digests[2]!, digests[1]!])).toEqual([digests[0]]);
    expect(await hasStoredBundle(nats.nc, digests[0]!)).toBe(false);
    expect(await hasStoredBundle(nats.nc, digests[1]!)).toBe(true);
    expect(await hasStoredBundle(nats.nc, digests[2]!)).toBe(true);
    expect(await hasStoredBundle(nats.nc, other.digest)).toBe(true);
    const names = (await (await new Objm(nats.nc).open(BUCKET)).list()).map((i) => i.name);
    expect(names).not.toContain(digests[0]);
  }, 30_000);

  it("neither a tenant nor a plugin can read or write the bucket: refused by the server, nothing read or written", async () => {
    const d = await verify(await bundle("obx", "1.0.0", "x", true), { trustedKeysDir: bed.keysDir });
    await storeBundle(nats.nc, "obx", d);
    const plugin = await connectAsPlugin(nats.server.url, bed.credentialsDir, "obs");
    closers.push(() => plugin.close());
    const tenant = await nats.connectAs("acme");
    const stream = `OBJ_${BUCKET}`;
    for (const [who, nc] of [["tenant", tenant], ["plugin", plugin]] as const) {
      const before = await streamState();
      // Through the object store client, as a user of @nats-io/obj would.
      await expect(new Objm(nc).open(BUCKET), who).rejects.toThrow();
      // The JetStream API of the bucket's stream: info, reads, consumers, purge, delete.
      for (const subject of [
        `$JS.API.STREAM.INFO.${stream}`, `$JS.API.STREAM.MSG.GET.${stream}`, `$JS.API.DIRECT.GET.${stream}`, `$JS.API.DIRECT.GET.${stream}.$O.${BUCKET}.M.>`,
        `$JS.API.CONSUMER.CREATE.${stream}`, `$JS.API.CONSUMER.CREATE.${stream}.spy.$O.${BUCKET}.C.>`, `$JS.API.STREAM.PURGE.${stream}`, `$JS.API.STREAM.DELETE.${stream}`,
        `$JS.API.STREAM.UPDATE.${stream}`, `$JS.API.STREAM.MSG.DELETE.${stream}`,
      ]) {
        expect(await permissionDenied(nc, () => nc.publish(subject, JSON.stringify({ seq: 1, last_by_subj: `$O.${BUCKET}.M.>` }))), `${who} ${subject}`).toMatch(/publish/iu);
      }
      // Writing objects (meta and chunks) directly on the stream's subjects.
      for (const subject of [`$O.${BUCKET}.M.${Buffer.from(d.digest).toString("base64url")}`, `$O.${BUCKET}.C.forged`]) {
        expect(await permissionDenied(nc, () => nc.publish(subject, "forged")), `${who} ${subject}`).toMatch(/publish/iu);
      }
      // Nothing it sent reached the stream.
      expect(await streamState(), who).toEqual(before);
      // Listening on the bucket's subjects: FlexCore stores a bundle meanwhile, and it sees none of it.
      const got: string[] = [];
      let subErr: string | undefined;
      for (const subject of [`$O.${BUCKET}.>`, `$O.>`]) {
        subErr = await permissionDenied(nc, () => nc.subscribe(subject, { callback: (e, m) => { if (!e) got.push(m.subject); } }));
        expect(subErr, `${who} subscribe ${subject}`).toMatch(/subscri/iu);
      }
      await storeBundle(nats.nc, "obx", await verify(await bundle("obx", "1.0.1", `${who}-probe`, true), { trustedKeysDir: bed.keysDir }));
      await nc.flush().catch(() => undefined);
      await new Promise((r) => setTimeout(r, 150));
      expect(got, who).toEqual([]);
    }
    const os = await new Objm(nats.nc).open(BUCKET);
    expect((await os.list()).some((i) => i.name.includes("forged"))).toBe(false);
    expect(await installStoredBundle(nats.nc, d.digest, (await machine("x", true)).storeDir, { trustedKeysDir: bed.keysDir }).then((i) => i.digest)).toBe(d.digest);
  }, 30_000);
});
