// A source whose lease is lost: two FlexCore instances (two startPluginEndpoints on one
// nats-server, as two `flexcore up` would run them) share one configured source of the
// TypeScript echo plugin. The holder's lease is taken by someone else and then freed; the
// source stops on the holder, goes back to standby and starts again where the lease is taken
// next (the same instance included), and the stream holds every record exactly once, with its
// deterministic id, in order, and the cursor in flex_state continues from where it was.
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUCKETS, ensureTopology, openTtlKv, STREAMS } from "../streams/index.js";
import { startPluginTestNats } from "../test/plugin-nats.js";
import type { PluginTestNats } from "../test/plugin-nats.js";
import { startPluginProcess } from "../test/plugin-process.js";
import type { PluginProcess } from "../test/plugin-process.js";
import { echoPluginCommand } from "./echo/launch.js";
import { startPluginEndpoints } from "./endpoints.js";
import type { PluginEndpoints, SourceEntry } from "./endpoints.js";
import { until } from "./fixtures/harness.js";
import type { ResolvedPlugins } from "./host-config.js";
import { sourceCursorKey } from "./source-driver.js";

const TENANT = "t-lease";
const SOURCE: SourceEntry = { name: "numbers", kind: "echo/echo", tenant: TENANT, category: "numbers", options: {}, max: 5, intervalMs: 50 };
const PLUGINS: ResolvedPlugins = { managed: [], external: [{ name: "echo", managed: false, service: "echo", enabled: true, tenant: undefined }] };
const LEASE_KEY = `source.${TENANT}.numbers`;
const TTL_MS = 900;

let nats: PluginTestNats;
let echo: PluginProcess;
const running: PluginEndpoints[] = [];

beforeAll(async () => {
  nats = await startPluginTestNats({ plugins: ["echo"] });
  await ensureTopology(nats.nc);
  // 5 records per poll, 25 ms each: about 200 records a second, for as long as the test runs.
  echo = await startPluginProcess(nats, "echo", echoPluginCommand(), { FLEXCORE_PLUGIN_CONFIG: JSON.stringify({ sourceEnd: 1_000_000, delayMs: 25 }) });
}, 30_000);

afterAll(async () => {
  for (const e of running) await e.close();
  await echo?.kill();
  await nats?.close();
});

async function instance(id: string): Promise<PluginEndpoints> {
  const e = await startPluginEndpoints(nats.nc, { sinks: [], sources: [SOURCE], plugins: PLUGINS, instanceId: id, leaseTtlMs: TTL_MS });
  running.push(e);
  return e;
}

const held = (e: PluginEndpoints): boolean => e.metrics().sources[0]!.leaseHeld;
const appended = (e: PluginEndpoints): number => e.metrics().sources[0]!.appended;

async function stored(): Promise<Array<{ id: string; n: number }>> {
  const jsm = await jetstreamManager(nats.nc);
  const info = await jsm.streams.info(STREAMS.events, { subjects_filter: `evt.${TENANT}.>` });
  const total = Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
  const out: Array<{ id: string; n: number }> = [];
  if (total === 0) return out;
  const consumer = await jetstream(nats.nc).consumers.get(STREAMS.events, { filter_subjects: `evt.${TENANT}.>` });
  const it = await consumer.consume({ max_messages: 1000 });
  for await (const m of it) {
    out.push({ id: m.headers?.get("Nats-Msg-Id") ?? "", n: m.json<{ n: number }>().n });
    if (out.length >= total) break;
  }
  await it.close();
  return out;
}

async function cursor(): Promise<number> {
  const kv = await openTtlKv(nats.nc, BUCKETS.state);
  const e = await kv.kv.get(sourceCursorKey("echo", "echo", TENANT, "numbers"));
  return Number(e!.json<{ cursor: string }>().cursor);
}

/** Another owner writes the lease key (as after a partition), valid for `ms`. */
async function steal(ms: number): Promise<void> {
  const leases = await openTtlKv(nats.nc, BUCKETS.leases);
  const e = await leases.kv.get(LEASE_KEY);
  await leases.update(LEASE_KEY, new TextEncoder().encode(JSON.stringify({ owner: "thief", expiresAt: Date.now() + ms })), e!.revision, 60_000);
}

describe("a source whose lease is lost", () => {
  it("stops on the holder, stands by, and starts again when the lease is free: every record once, in order, the cursor continuing", async () => {
    const a = await instance("inst-a");
    const b = await instance("inst-b");
    await until(() => held(a) && appended(a) >= 20, 20_000, "instance a to poll");
    expect(held(b)).toBe(false);

    // 1. a loses its lease to a thief; nobody polls until the thief's lease expires, then one of the two takes over.
    await steal(1_500);
    await until(() => !held(a), 5_000, "a to notice the lost lease");
    const atLoss = appended(a);
    await new Promise((r) => setTimeout(r, 500));
    expect(appended(a) - atLoss, "a polls no more after losing the lease").toBeLessThanOrEqual(SOURCE.max);
    expect(held(b)).toBe(false);
    await until(() => held(a) || held(b), 10_000, "an instance to take the expired lease");
    const x = held(a) ? a : b;
    const y = x === a ? b : a;
    const before = appended(x);
    await until(() => appended(x) >= before + 20, 10_000, "the new holder to poll");

    // 2. The holder loses it again and the other instance goes away: only the instance that
    // lost the lease can take it, and it does (before this fix, it stayed stopped until a restart).
    await steal(1_000);
    await until(() => !held(x), 5_000, "the holder to notice the lost lease");
    await y.close();
    await until(() => held(x), 10_000, "the instance that lost the lease to take it again");
    const again = appended(x);
    await until(() => appended(x) >= again + 20, 10_000, "polling to resume there");
    await x.close();

    // Exactly once: records 1..N, each with its deterministic id, in order; the cursor is N.
    const events = await stored();
    const n = events.length;
    expect(n).toBeGreaterThanOrEqual(60);
    expect(events.map((e) => e.n)).toEqual(Array.from({ length: n }, (_, i) => i + 1));
    expect(events.map((e) => e.id)).toEqual(Array.from({ length: n }, (_, i) => `echo:echo:${TENANT}:numbers:echo-${i + 1}`));
    expect(await cursor()).toBe(n);
    const m = [a, b].map((e) => e.metrics().sources[0]!);
    expect(m[0]!.appended + m[1]!.appended).toBe(n);
  }, 60_000);
});
