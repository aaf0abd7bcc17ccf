import { describe, expect, it } from "vitest";
import { validatePluginEvent } from "./lifecycle.js";

describe("validatePluginEvent", () => {
  it("accepts the schemas' events", () => {
    expect(() => validatePluginEvent("PluginLoaded", { plugin: "echo", version: "1.0.0" })).not.toThrow();
    expect(() => validatePluginEvent("PluginFailed", { plugin: "echo", error: { message: "boom", code: "FLEX_PLUGIN_CRASH_LOOP" }, willRestart: false, exitCode: null, signal: "SIGKILL", attempt: 5 })).not.toThrow();
    expect(() => validatePluginEvent("PluginHealth", { plugin: "echo", ok: true, latencyMs: 0.4 })).not.toThrow();
  });

  it("names the field, the value and what was expected", () => {
    expect(() => validatePluginEvent("PluginLoaded", { plugin: "echo" })).toThrow(/PluginLoaded\.version.*non-empty string.*undefined/);
    expect(() => validatePluginEvent("PluginHealth", { plugin: "echo", ok: "yes" })).toThrow(/PluginHealth\.ok.*boolean/);
    expect(() => validatePluginEvent("PluginFailed", { plugin: "echo", error: "boom" })).toThrow(/PluginFailed\.error/);
    expect(() => validatePluginEvent("PluginStarted", { plugin: "Not_A_Name" })).toThrow(/PluginStarted\.plugin/);
    expect(() => validatePluginEvent("PluginExploded", { plugin: "echo" })).toThrow(/type/);
    expect(() => validatePluginEvent("PluginStopped", [])).toThrow(/an object/);
  });
});
