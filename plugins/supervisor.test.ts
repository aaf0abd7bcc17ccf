import { describe, expect, it } from "vitest";
import { definePlugin, readHandshake } from "./sdk.js";
import { DEFAULT_FIRST_RESTART_MS, restartDelay, tenantSlotServiceNames } from "./supervisor.js";
import { parseServiceName, PLUGIN_SERVICE_PATTERN } from "./tenancy.js";

const BACKOFF = { initialMs: 500, maxMs: 30_000, firstMs: DEFAULT_FIRST_RESTART_MS };

function range(attempt: number, wasReady: boolean): [number, number] {
  const seen = Array.from({ length: 400 }, () => restartDelay(BACKOFF, attempt, wasReady));
  return [Math.min(...seen), Math.max(...seen)];
}

describe("restartDelay", () => {
  it("restarts quickly after a healthy run: the window's first failure of a process that was ready", () => {
    const [lo, hi] = range(1, true);
    expect(lo).toBeGreaterThanOrEqual(DEFAULT_FIRST_RESTART_MS);
    expect(hi).toBeLessThanOrEqual(Math.round(DEFAULT_FIRST_RESTART_MS * 1.25));
  });

  it("keeps the exponential sequence with jitter for a crash loop: initial × 2^(n-1), capped", () => {
    // A process that never became ready gets no quick restart, even the first time.
    for (const [attempt, wasReady, base] of [[1, false, 500], [2, true, 1_000], [2, false, 1_000], [3, true, 2_000], [4, true, 4_000], [8, true, 30_000]] as const) {
      const [lo, hi] = range(attempt, wasReady);
      expect(lo, `attempt ${attempt}`).toBeGreaterThanOrEqual(base);
      expect(hi, `attempt ${attempt}`).toBeLessThanOrEqual(base * 1.25);
      expect(hi - lo, `attempt ${attempt} has jitter`).toBeGreaterThan(0);
    }
  });
});

describe("tenantSlotServiceNames", () => {
  it("puts the slot before the tenant, so the first `_` splits slot and tenant and no tenant's name reaches another's slot", () => {
    expect(tenantSlotServiceNames("echo", "acme")).toEqual(["echo_acme", "echo--b_acme"]);
    expect(parseServiceName("echo--b_acme")).toEqual({ plugin: "echo--b", tenant: "acme" });
    // Tenant `acme--b`'s sets are not acme's second slot.
    expect(tenantSlotServiceNames("echo", "acme--b")).not.toContain("echo--b_acme");
    expect(tenantSlotServiceNames("echo", "acme--b")).toEqual(["echo_acme--b", "echo--b_acme--b"]);
    // Both fit the NATS users' service pattern (what flexcore up writes users for).
    for (const s of tenantSlotServiceNames("echo", "acme")) expect(PLUGIN_SERVICE_PATTERN.test(s!)).toBe(true);
  });

  it("has no second slot for a name too long for `--b` (such a plugin is upgraded by a restart), and refuses bad input naming the field", () => {
    const long = `a${"b".repeat(37)}`;
    expect(tenantSlotServiceNames(long, "acme")).toEqual([`${long}_acme`, undefined]);
    expect(() => tenantSlotServiceNames("echo", "ac.me")).toThrow(/tenant/u);
    expect(() => tenantSlotServiceNames("Echo", "acme")).toThrow(/name/u);
  });
});

describe("readHandshake of a tenant's set under the second slot", () => {
  const plugin = definePlugin({ version: "1.0.0", description: "handshake test", protocols: [1], processors: { echo: { process: () => ({ states: {}, outputs: [] }) } } });
  const env = (name: string, tenant: string): NodeJS.ProcessEnv => ({ FLEXCORE_PLUGIN_NAME: name, FLEXCORE_PLUGIN_TENANT: tenant, FLEXCORE_PLUGIN_NATS_URL: "nats://127.0.0.1:4222", FLEXCORE_PLUGIN_PROTOCOLS: "1" });

  it("accepts <name>--b_<tenant> with its tenant (so the SDK's 403 for another tenant's call still applies) and refuses another tenant", () => {
    expect(readHandshake(env("echo--b_acme", "acme"), plugin)).toMatchObject({ name: "echo--b_acme", tenant: "acme" });
    expect(() => readHandshake(env("echo--b_acme", "globex"), plugin)).toThrow(/FLEXCORE_PLUGIN_TENANT/u);
  });
});
