import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createProjectionEngine, pluginStatusProjection } from "../projections/index.js";
import { createEventStore, ensureTopology, PLUGIN_CATEGORY, SYSTEM_TENANT } from "../streams/index.js";
import type { EventStore } from "../streams/index.js";
import { startTestNats } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { fixtureBundle, until } from "./fixtures/harness.js";
import { createPluginLifecycle } from "./lifecycle.js";
import { generatePluginUsers } from "./nats-users.js";
import { startPluginSupervisor } from "./supervisor.js";

let nats: TestNats;
let store: EventStore;
let bundle: { dir: string; close(): Promise<void> };
let credentialsDir: string;
const read = async (plugin: string) => (await store.read({ tenant: SYSTEM_TENANT, category: PLUGIN_CATEGORY, id: plugin }).catch(() => [])).map((e) => ({ type: e.type, data: e.data as Record<string, unknown> }));

beforeAll(async () => {
  credentialsDir = await mkdtemp(join(tmpdir(), "flexcore-plugin-creds-"));
  const users = await generatePluginUsers({ services: ["flaky"], dir: credentialsDir });
  nats = await startTestNats({ extraUsers: users.entries });
  await ensureTopology(nats.nc);
  store = await createEventStore(nats.nc);
  bundle = await fixtureBundle();
}, 60_000);

afterAll(async () => {
  await nats?.close();
  await bundle?.close();
  await rm(credentialsDir, { recursive: true, force: true });
});

describe("plugin lifecycle events", () => {
  it("publishes health on change only, at most once per interval, and the latest state when the interval ends", async () => {
    const lifecycle = createPluginLifecycle({ store, healthIntervalMs: 400 });
    expect(await lifecycle.health({ plugin: "healthy", ok: true, latencyMs: 1 })).toBe(true);
    expect(await lifecycle.health({ plugin: "healthy", ok: true })).toBe(false);
    expect(await lifecycle.health({ plugin: "healthy", ok: false, detail: "0 of 1" })).toBe(false);
    expect(await read("healthy")).toHaveLength(1);
    await until(async () => (await read("healthy")).length === 2, 2_000, "the held change");
    expect((await read("healthy")).map((e) => e.data.ok)).toEqual([true, false]);
    // A flap that is back to the published state when the interval ends publishes nothing.
    await lifecycle.health({ plugin: "healthy", ok: true });
    await lifecycle.health({ plugin: "healthy", ok: false });
    await new Promise((r) => setTimeout(r, 600));
    expect(await read("healthy")).toHaveLength(2);
    lifecycle.close();
  });

  it("refuses an event that breaks its schema and stores nothing", async () => {
    const lifecycle = createPluginLifecycle({ store });
    await expect(lifecycle.failed({ plugin: "broken", error: "boom" as never })).rejects.toMatchObject({ code: "FLEX_INVALID_EVENT" });
    await expect(lifecycle.loaded({ plugin: "../evil", version: "1" })).rejects.toMatchObject({ code: "FLEX_INVALID_OPTION" });
    expect(await read("broken")).toEqual([]);
  });

  it("a crash and restart under the supervisor shows in plugin_status as one failure, one restart, running and healthy", async () => {
    const lifecycle = createPluginLifecycle({ store, healthIntervalMs: 100 });
    const sup = await startPluginSupervisor({
      nc: nats.nc,
      plugins: [{ name: "flaky", version: "2.1.0", command: ["node", "plugin.mjs"], bundleDir: bundle.dir, config: { fault: "crash-after", after: 0 } }],
      natsUrl: nats.server.url,
      credentialsDir,
      lifecycle,
      pingIntervalMs: 200,
      backoff: { initialMs: 50, maxMs: 50 },
      leaseTtlMs: 2_000,
    });
    const dataDir = await mkdtemp(join(tmpdir(), "flexcore-plugin-status-"));
    const engine = createProjectionEngine(nats.nc, { dataDir, projections: [pluginStatusProjection()], log: () => undefined });
    try {
      await sup.ready("flaky", 20_000);
      await expect(nats.nc.request("flexplugin.flaky.processor.echo", "x", { timeout: 1_000 })).rejects.toThrow();
      await until(() => sup.status("flaky").starts === 2 && sup.status("flaky").state === "running", 10_000, "the restart");
      await new Promise((r) => setTimeout(r, 500));
      await engine.start();
      let row: Record<string, unknown> | undefined;
      await until(async () => {
        row = (await engine.query("plugin_status", { tenant: SYSTEM_TENANT, filter: { plugin: "flaky" } })).rows[0];
        return row?.restarts === 1 && row.healthy === 1;
      }, 10_000, `plugin_status to show the restart (${JSON.stringify(row)})`);
      expect(row).toMatchObject({ tenant: SYSTEM_TENANT, plugin: "flaky", state: "running", version: "2.1.0", restarts: 1, failures: 1, healthy: 1 });
      expect(String(row!.last_error)).toMatch(/exited with code 4/);
      const types = (await read("flaky")).map((e) => e.type).filter((t) => t !== "PluginHealth");
      expect(types.slice(0, 4)).toEqual(["PluginLoaded", "PluginStarted", "PluginFailed", "PluginStarted"]);
      const failed = (await read("flaky")).find((e) => e.type === "PluginFailed")!.data;
      expect(failed).toMatchObject({ plugin: "flaky", exitCode: 4, willRestart: true, attempt: 1 });
      expect(typeof failed.nextRestartAt).toBe("string");
    } finally {
      await sup.stop();
      await engine.close();
      await rm(dataDir, { recursive: true, force: true });
    }
    expect((await read("flaky")).at(-1)?.type).toBe("PluginStopped");
  }, 60_000);
});
