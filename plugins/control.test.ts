// Who coordinates an upgrade: exactly one instance, decided from what every instance sees alike.
import { describe, expect, it } from "vitest";
import { coordinatesUpgrade } from "./control.js";
import type { PluginStatus } from "./supervisor.js";

/** One instance's supervisor view: `held` are the set keys whose leases it holds, `disabled` the switched-off ones. */
function view(held: readonly string[], disabled: readonly string[] = []): { status: { (): PluginStatus[]; (name: string): PluginStatus } } {
  const sets: PluginStatus[] = ["acme", "globex", "initech"].map((t) => {
    const name = `tp_${t}`;
    return { name, plugin: "tp", tenant: t, state: disabled.includes(name) ? "stopped" : held.includes(name) ? "running" : "standby", leaseHeld: held.includes(name), instances: [], starts: 0, failures: 0, lastError: undefined };
  });
  const sys: PluginStatus = { name: "sys", plugin: "sys", state: held.includes("sys") ? "running" : "standby", leaseHeld: held.includes("sys"), instances: [], starts: 0, failures: 0, lastError: undefined };
  function status(): PluginStatus[];
  function status(name: string): PluginStatus;
  function status(name?: string): PluginStatus | PluginStatus[] {
    if (name === undefined) return [...sets, sys];
    const s = [...sets, sys].find((x) => x.name === name);
    if (!s) throw new Error(`no plugin ${name}`);
    return s;
  }
  return { status };
}

describe("coordinatesUpgrade", () => {
  it("a tenant plugin: only the holder of its first enabled set by key, whichever sets the others hold", () => {
    const a = view(["tp_globex"]);
    const b = view(["tp_acme", "tp_initech"]);
    expect([a, b].map((v) => coordinatesUpgrade(v, "tp"))).toEqual([false, true]);
  });

  it("skips a disabled first set: the holder of the next enabled one coordinates", () => {
    const a = view(["tp_globex"], ["tp_acme"]);
    const b = view(["tp_initech"], ["tp_acme"]);
    expect([a, b].map((v) => coordinatesUpgrade(v, "tp"))).toEqual([true, false]);
  });

  it("nobody while the first enabled set's lease changes hands; a system plugin: its lease holder; an unknown plugin: nobody", () => {
    expect([view(["tp_globex"]), view(["tp_initech"])].map((v) => coordinatesUpgrade(v, "tp"))).toEqual([false, false]);
    expect([view(["sys"]), view([])].map((v) => coordinatesUpgrade(v, "sys"))).toEqual([true, false]);
    expect(coordinatesUpgrade(view(["tp_acme"]), "nope")).toBe(false);
    expect(coordinatesUpgrade(undefined, "tp")).toBe(false);
  });
});
