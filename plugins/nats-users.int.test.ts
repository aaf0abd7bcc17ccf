import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { generatePluginUsers, pluginCredentials, pluginUserName } from "./nats-users.js";
import { connectAsPlugin, permissionDenied } from "./fixtures/harness.js";

let nats: TestNats;
let dir: string;
let plugin: NatsConnection;
const opened: NatsConnection[] = [];

async function asPlugin(service: string): Promise<NatsConnection> {
  const nc = await connectAsPlugin(nats.server.url, dir, service);
  opened.push(nc);
  return nc;
}


beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-plugin-users-"));
  const users = await generatePluginUsers({ services: ["echo", "other"], dir });
  nats = await startTestNats({ extraUsers: users.entries });
  plugin = await asPlugin("echo");
});

afterAll(async () => {
  for (const nc of opened) await nc.close().catch(() => undefined);
  await nats?.close();
  await rm(dir, { recursive: true, force: true });
});

describe("plugin NATS users", () => {
  it("keeps one random password per plugin in a 0600 file, reused on the next run", async () => {
    const a = await pluginCredentials(dir, "echo");
    const b = await pluginCredentials(dir, "echo");
    const other = await pluginCredentials(dir, "other");
    expect(a.user).toBe("plugin-echo");
    expect(a.password).toBe(b.password);
    expect(a.password).not.toBe(other.password);
    expect(a.password.length).toBeGreaterThanOrEqual(32);
    expect((await stat(a.file)).mode & 0o777).toBe(0o600);
    expect(() => pluginUserName("Bad_name")).toThrow(/plugin name/);
  });

  it("refuses a wrong password", async () => {
    await expect(connect({ servers: nats.server.url, user: "plugin-echo", pass: "not-it", maxReconnectAttempts: 0 })).rejects.toThrow(/Authorization/i);
  });

  it("serves its own $SRV and flexplugin.<service>.> subjects and answers requests", async () => {
    plugin.subscribe("flexplugin.echo.processor.echo", { queue: "q", callback: (_e, m) => void m.respond(m.data) });
    plugin.subscribe("$SRV.INFO.echo", { callback: (_e, m) => void m.respond("info") });
    plugin.subscribe("$SRV.PING", { callback: (_e, m) => void m.respond("pong") });
    await plugin.flush();
    expect((await nats.nc.request("flexplugin.echo.processor.echo", "hi", { timeout: 2000 })).string()).toBe("hi");
    expect((await nats.nc.request("$SRV.INFO.echo", "", { timeout: 2000 })).string()).toBe("info");
    expect((await nats.nc.request("$SRV.PING", "", { timeout: 2000 })).string()).toBe("pong");
  });

  it("cannot publish events, derived events, JetStream or KV API calls, or to another plugin", async () => {
    const spy = await nats.connect();
    const got: string[] = [];
    for (const s of ["evt.>", "drv.>", "$JS.API.>", "$KV.>", "flexplugin.other.>", "_INBOX.>"]) spy.subscribe(s, { callback: (_e, m) => void got.push(m.subject) });
    await spy.flush();
    for (const subject of ["evt.acme.orders.1", "drv.acme.anomaly.k", "$JS.API.STREAM.LIST", "$KV.flex_auth.x", "flexplugin.other.processor.echo", "_INBOX.steal"]) {
      expect(await permissionDenied(plugin, () => plugin.publish(subject, "forged")), subject).toMatch(/publish/i);
    }
    await expect(plugin.request("$JS.API.INFO", "", { timeout: 500 })).rejects.toThrow();
    await spy.flush();
    expect(got).toEqual([]);
  });

  it("cannot subscribe to another plugin's subjects, to inboxes or to events", async () => {
    const probe = await asPlugin("echo");
    for (const subject of ["flexplugin.other.>", "$SRV.INFO.other", "_INBOX.>", "evt.>", "drv.>", ">"]) {
      expect(await permissionDenied(probe, () => probe.subscribe(subject)), subject).toMatch(/subscri/i);
    }
  });

  it("answers a request only once (allow_responses), not a later publish to the same reply", async () => {
    const reply = `_INBOX.once.${Date.now()}`;
    const got: string[] = [];
    const spy = await nats.connect();
    spy.subscribe(reply, { callback: (_e, m) => void got.push(m.string()) });
    await spy.flush();
    const p2 = await asPlugin("echo");
    let first = true;
    p2.subscribe("flexplugin.echo.once", {
      callback: (_e, m) => {
        m.respond("one");
        if (first) {
          first = false;
          p2.publish(m.reply!, "two");
        }
      },
    });
    await p2.flush();
    spy.publish("flexplugin.echo.once", "", { reply });
    await new Promise((r) => setTimeout(r, 300));
    expect(got).toEqual(["one"]);
  });
});
