// A `tenancy: tenant` plugin under a real `flexcore up` (embedded nats-server, real sandbox,
// the gateway on port 0): the TypeScript echo bundled as `techo` with `tenants: [acme, globex]`
// runs one instance set per tenant (`techo_acme`, `techo_globex`); each tenant's events are
// served by its own set; GET /v1/plugins shows each tenant its own set and never another's;
// a tenant admin's disable switches only its own set (its events wait, the other tenant's go
// on, nothing is dead-lettered); the lifecycle is on each tenant's own subject;
// `flexcore plugins upgrade techo <dir>` moves every tenant's set to 2.0.0 under
// `techo--b_<tenant>` without losing an event.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile, execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { pluginUid } from "../plugins/index.js";
import { encodeEvent, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import type { UpProcess } from "../test/flexcore-up.js";
import { pidsOfUid } from "../test/plugin-process.js";
import { echoBundle, preparePluginUpStore, startPluginUp, waitForUp } from "./testing.js";
import type { PluginUp } from "./testing.js";

const PROCESSOR = "tenanted";
const here = dirname(fileURLToPath(import.meta.url));
const execFileAsync = promisify(execFile);

let plugins: PluginUp;
let dir: string;
let data: string;
let up: UpProcess;
let nc: NatsConnection;
let publisher: Publisher;
let token: PluginUp["token"];
let privateKeyPem: string;

async function api(bearer: string, method: string, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(`${up.gatewayUrl}${path}`, { method, headers: { authorization: `Bearer ${bearer}` } });
  const text = await r.text();
  return { status: r.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

async function readAll(filter: string, stream: string = STREAMS.derived): Promise<Array<{ subject: string; type: string; data: Record<string, unknown> }>> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(stream, { subjects_filter: filter }).catch(() => undefined);
  const total = Object.values(info?.state.subjects ?? {}).reduce((a, b) => a + b, 0);
  if (total === 0) return [];
  const out: Array<{ subject: string; type: string; data: Record<string, unknown> }> = [];
  const iter = await (await jetstream(nc).consumers.get(stream, { filter_subjects: filter })).fetch({ max_messages: total, expires: 5_000 });
  for await (const m of iter) {
    out.push({ subject: m.subject, type: m.headers?.get("Flex-Type") ?? "", data: m.json() });
    if (m.info.pending === 0) break;
  }
  return out;
}

async function count(stream: string, filter: string): Promise<number> {
  const info = await (await jetstreamManager(nc)).streams.info(stream, { subjects_filter: filter }).catch(() => undefined);
  return Object.values(info?.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

const waitFor = (check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> => waitForUp(up, check, timeoutMs, what);

async function publish(tenant: string, from: number, n: number): Promise<void> {
  const pending: Promise<unknown>[] = [];
  for (let i = from; i < from + n; i++) {
    const e = encodeEvent({ id: `${tenant}-r-${i}`, type: "Reading", data: { i } });
    pending.push(publisher.publish(`evt.${tenant}.reading.k${i % 3}`, e.data, { headers: e.headers }));
  }
  await Promise.all(pending);
}

beforeAll(async () => {
  const store = await preparePluginUpStore("flexcore-plugins-tenant-");
  ({ dir, data, privateKeyPem } = store);
  // The TypeScript echo as one file, its manifest renamed `techo` with `tenancy: tenant`.
  let manifest = "";
  await echoBundle(join(dir, "techo"), {
    privateKeyPem: store.privateKeyPem,
    manifest: (yaml) => (manifest = yaml.replace(/^name: echo$/mu, "name: techo").replace(/^tenancy: system$/mu, "tenancy: tenant")),
  });
  expect(manifest).toMatch(/^tenancy: tenant$/mu);
  plugins = await startPluginUp(store, `
runtime:
  threads: 1
plugins:
  techo:
    bundle: ./techo
    tenants: [acme, globex]
    config: { servedBy: true }
# One processor per tenant: a processor's batch waits for all its tenants' calls (docs/plugins.md).
processors:
  - name: ${PROCESSOR}-acme
    kind: techo/echo
    subjects: ["evt.acme.reading.*"]
    batch_size: 16
    backoff: [50ms, 200ms]
  - name: ${PROCESSOR}-globex
    kind: techo/echo
    subjects: ["evt.globex.reading.*"]
    batch_size: 16
    backoff: [50ms, 200ms]
`);
  ({ up, nc, publisher, token } = plugins);
}, 180_000);

afterAll(async () => {
  await plugins?.close();
}, 60_000);

describe("a tenancy: tenant plugin under flexcore up", () => {
  it("serves each tenant's events by that tenant's own instance set, with its own NATS user and lifecycle subject", async () => {
    // Two NATS users per set (its two slots, so an upgrade's new sets have theirs before they start), none for the bare name.
    const passes = execFileSync("ls", [join(data, "plugin-credentials")]).toString().split("\n").filter(Boolean).sort();
    expect(passes).toEqual(["techo--b_acme.pass", "techo--b_globex.pass", "techo_acme.pass", "techo_globex.pass"]);
    await publish("acme", 0, 40);
    await publish("globex", 0, 40);
    await waitFor(async () => (await count(STREAMS.derived, "drv.>")) === 80, 60_000, "80 derived events");
    for (const tenant of ["acme", "globex"]) {
      const out = await readAll(`drv.${tenant}.${PROCESSOR}-${tenant}.>`);
      expect(out).toHaveLength(40);
      for (const o of out) expect(o.data.servedBy).toEqual({ service: `techo_${tenant}`, tenant });
      const lifecycle = await readAll(`evt.${tenant}.plugin.techo`, STREAMS.events);
      expect(lifecycle.map((e) => e.type)).toEqual(expect.arrayContaining(["PluginLoaded", "PluginStarted"]));
    }
    expect(await count(STREAMS.events, "evt._system.plugin.techo")).toBe(0);
    expect(await count(STREAMS.dlq, "dlq.>")).toBe(0);
  }, 90_000);

  it("GET /v1/plugins shows each tenant its own instance set, never another tenant's", async () => {
    for (const [tenant, other] of [["acme", "globex"], ["globex", "acme"]] as const) {
      const r = await api(await token(tenant, ["reader"]), "GET", "/v1/plugins");
      expect(r.status).toBe(200);
      const views = (r.body.plugins as Array<Record<string, unknown>>).filter((p) => p.name === "techo");
      expect(views).toEqual([expect.objectContaining({ name: "techo", tenant, instance: `techo_${tenant}`, enabled: true })]);
      expect(JSON.stringify(r.body)).not.toContain(other);
    }
    const initech = await api(await token("initech", ["reader"]), "GET", "/v1/plugins");
    expect((initech.body.plugins as unknown[]).length).toBe(0);
  });

  it("a tenant admin's disable switches only its own set: its events wait, the other tenant's go on, nothing dead-lettered", async () => {
    const acmeAdmin = await token("acme");
    // Another tenant cannot switch it at all (it does not exist for them).
    expect((await api(await token("initech"), "POST", "/v1/plugins/techo/disable")).status).toBe(404);
    expect((await api(await token("acme", ["reader"]), "POST", "/v1/plugins/techo/disable")).status).toBe(403);
    const off = await api(acmeAdmin, "POST", "/v1/plugins/techo/disable");
    expect(off).toMatchObject({ status: 200, body: { plugin: "techo", enabled: false } });
    await waitFor(async () => {
      const views = (await api(acmeAdmin, "GET", "/v1/plugins")).body.plugins as Array<Record<string, unknown>>;
      return views.some((v) => v.name === "techo" && v.enabled === false);
    }, 10_000, "acme's set disabled");
    // The supervisor follows the switch: acme's processes stop, globex's keep running.
    if (process.getuid?.() === 0) {
      await waitFor(async () => pidsOfUid(pluginUid("techo_acme")).length === 0, 15_000, "acme's processes gone");
      expect(pidsOfUid(pluginUid("techo_globex")).length).toBeGreaterThan(0);
    }
    const globexViews = (await api(await token("globex", ["reader"]), "GET", "/v1/plugins")).body.plugins as Array<Record<string, unknown>>;
    expect(globexViews).toEqual([expect.objectContaining({ tenant: "globex", enabled: true })]);
    await publish("acme", 40, 20);
    await publish("globex", 40, 20);
    await waitFor(async () => (await count(STREAMS.derived, `drv.globex.${PROCESSOR}-globex.>`)) === 60, 30_000, "globex's 60 derived events");
    await new Promise((r) => setTimeout(r, 1_000));
    expect(await count(STREAMS.derived, `drv.acme.${PROCESSOR}-acme.>`)).toBe(40);
    const on = await api(acmeAdmin, "POST", "/v1/plugins/techo/enable");
    if (process.getuid?.() === 0) await waitFor(async () => pidsOfUid(pluginUid("techo_acme")).length > 0, 30_000, "acme's processes back");
    expect(on).toMatchObject({ status: 200, body: { plugin: "techo", enabled: true } });
    await waitFor(async () => (await count(STREAMS.derived, `drv.acme.${PROCESSOR}-acme.>`)) === 60, 60_000, "acme's 60 derived events after enable");
    const out = await readAll(`drv.acme.${PROCESSOR}-acme.>`);
    for (const o of out) expect(o.data.servedBy).toEqual({ service: "techo_acme", tenant: "acme" });
    expect(await count(STREAMS.dlq, "dlq.>")).toBe(0);
  }, 120_000);

  it("flexcore plugins upgrade techo: every tenant's set moves to 2.0.0 under techo--b_<tenant> under load; nothing lost, each tenant still served by its own set", async () => {
    const v2 = join(dir, "techo-2");
    await echoBundle(v2, { privateKeyPem, manifest: (yaml) => yaml.replace(/^name: echo$/mu, "name: techo").replace(/^tenancy: system$/mu, "tenancy: tenant").replace(/^version: 1\.0\.0$/mu, "version: 2.0.0") });
    await execFileAsync("chmod", ["-R", "a+rX", v2]);
    const before = await Promise.all(["acme", "globex"].map((t) => count(STREAMS.derived, `drv.${t}.${PROCESSOR}-${t}.>`)));
    let loading = true;
    let sent = 0;
    const load = (async () => {
      while (loading) {
        await Promise.all([publish("acme", 1_000 + sent, 8), publish("globex", 1_000 + sent, 8)]);
        sent += 8;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const out = await execFileAsync(process.execPath, ["--import", "tsx", join(here, "main.ts"), "plugins", "upgrade", "techo", v2], { env: { ...process.env, NATS_URL: "", FLEXCORE_DATA: data }, encoding: "utf8", timeout: 60_000 });
    await new Promise((r) => setTimeout(r, 500));
    loading = false;
    await load;
    const answer = JSON.parse(out.stdout.trim()) as { upgraded: Record<string, unknown> };
    expect(answer.upgraded).toMatchObject({ plugin: "techo", version: "2.0.0", service: "techo--b", previous: { version: "1.0.0", service: "techo" } });
    for (const [i, t] of (["acme", "globex"] as const).entries()) {
      await waitFor(async () => (await count(STREAMS.derived, `drv.${t}.${PROCESSOR}-${t}.>`)) === before[i]! + sent, 60_000, `${t}'s ${sent} outputs across the upgrade`);
      const mine = await readAll(`drv.${t}.${PROCESSOR}-${t}.>`);
      // Every event once (no duplicate id), each served by its own tenant's set of either slot, the last ones by the new one.
      expect(new Set(mine.map((o) => o.data.i)).size).toBe(mine.length);
      for (const o of mine) expect([`techo_${t}`, `techo--b_${t}`]).toContain((o.data.servedBy as { service: string }).service);
      for (const o of mine) expect(o.data.servedBy).toMatchObject({ tenant: t });
      expect((mine.at(-1)!.data.servedBy as { service: string }).service).toBe(`techo--b_${t}`);
      const views = (await api(await token(t, ["reader"]), "GET", "/v1/plugins")).body.plugins as Array<Record<string, unknown>>;
      expect(views).toEqual([expect.objectContaining({ name: "techo", tenant: t, version: "2.0.0" })]);
      if (process.getuid?.() === 0) {
        await waitFor(async () => pidsOfUid(pluginUid(`techo_${t}`)).length === 0, 15_000, `${t}'s 1.0.0 processes gone`);
        expect(pidsOfUid(pluginUid(`techo--b_${t}`)).length).toBeGreaterThan(0);
      }
    }
    expect(await count(STREAMS.dlq, "dlq.>")).toBe(0);
    expect(up.stderr()).toMatch(/plugin techo: upgraded to 2\.0\.0 for every tenant/u);
  }, 120_000);
});
