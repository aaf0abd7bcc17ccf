/**
 * The console's static files and `GET /v1/overview` through the real gateway on port 0 and a
 * real nats-server: security headers, no inline code, immutable hashed assets, nothing
 * outside the build reachable, a coded 503 when it was not built; the overview counts the
 * caller's tenant only and refuses callers without a token.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { encodeEvent } from "../streams/index.js";
import { defaultConsoleDir } from "./console-assets.js";
import type { ConsoleManifest } from "./console-assets.js";
import { CONSOLE_CSP } from "./routes/console.js";
import { startTestGateway } from "../test/gateway.js";
import type { TestGateway } from "../test/gateway.js";
import { seedTenant, tokenFor } from "../test/console-fixtures.js";
import { uniqueName } from "../test/nats-server.js";

const A = uniqueName("cona");
const B = uniqueName("conb");
let t: TestGateway;
let manifest: ConsoleManifest;

beforeAll(async () => {
  t = await startTestGateway();
  manifest = JSON.parse(await readFile(join(defaultConsoleDir(), "manifest.json"), "utf8")) as ConsoleManifest;
  await seedTenant(t.nats.nc, A, { events: 5, derived: 2, deadLetters: { anomaly: 1 } });
  await seedTenant(t.nats.nc, B, { events: 40, derived: 9, deadLetters: { [`secret_${B}`]: 3 } });
});
afterAll(async () => t?.close());

describe("/console", () => {
  it("redirects /console to /console/, whose relative URLs then resolve under it", async () => {
    const r = await fetch(`${t.url}/console`, { redirect: "manual" });
    expect(r.status).toBe(308);
    // Relative, so it also lands right behind a proxy that serves the gateway under a path prefix.
    expect(r.headers.get("location")).toBe("console/");
    expect(new URL(r.headers.get("location")!, `${t.url}/console`).pathname).toBe("/console/");
  });

  it("serves index.html under the strict CSP, nosniff and no-cache, with no inline script or style", async () => {
    const r = await fetch(`${t.url}/console/`);
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^text\/html/u);
    expect(r.headers.get("content-security-policy")).toBe(CONSOLE_CSP);
    expect(CONSOLE_CSP).toContain("script-src 'self';");
    expect(CONSOLE_CSP).not.toContain("unsafe");
    expect(r.headers.get("x-content-type-options")).toBe("nosniff");
    expect(r.headers.get("cache-control")).toBe("no-cache");
    const html = await r.text();
    expect(html).toContain(`src="assets/${manifest.js}"`);
    expect(html).toContain(`href="assets/${manifest.css}"`);
    expect(html).not.toMatch(/<script(?![^>]*\ssrc=)[^>]*>/u);
    expect(html).not.toMatch(/<style|\sstyle=|\son[a-z]+=/iu);
    expect(html).not.toMatch(/https?:\/\//u);
  });

  it("serves the hashed script and stylesheet with a long cache, and nothing else under assets/", async () => {
    const js = await fetch(`${t.url}/console/assets/${manifest.js}`);
    expect(js.status).toBe(200);
    expect(js.headers.get("content-type")).toMatch(/^text\/javascript/u);
    expect(js.headers.get("cache-control")).toBe("public, max-age=31536000, immutable");
    expect(js.headers.get("x-content-type-options")).toBe("nosniff");
    const css = await fetch(`${t.url}/console/assets/${manifest.css}`);
    expect(css.headers.get("content-type")).toMatch(/^text\/css/u);
    expect(await css.text()).toContain(".uplot");
    for (const path of ["/console/assets/manifest.json", "/console/assets/..%2Fmanifest.json", "/console/assets/%2e%2e%2f%2e%2e%2f%2e%2e%2fpackage.json", "/console/assets/console.js", "/console/../package.json"]) {
      const r = await fetch(`${t.url}${path}`);
      expect(r.status, path).toBe(404);
      const text = await r.text();
      expect(text, path).not.toContain('"name": "flexcore"');
      expect(text, path).not.toContain('"files"');
    }
  });

  it("answers 503 FLEX_CONSOLE_NOT_BUILT, saying to run npm run build, when the folder has no build", async () => {
    const empty = await mkdtemp(join(tmpdir(), "flexcore-console-none-"));
    await using g = await startTestGateway({ consoleDir: empty });
    for (const path of ["/console/", `/console/assets/${manifest.js}`]) {
      const r = await fetch(`${g.url}${path}`);
      expect(r.status, path).toBe(503);
      const body = (await r.json()) as { error: { code: string; message: string } };
      expect(body.error.code).toBe("FLEX_CONSOLE_NOT_BUILT");
      expect(body.error.message).toContain("npm run build");
    }
    await rm(empty, { recursive: true, force: true });
  });
});

describe("GET /v1/overview", () => {
  const overview = async (token: string | undefined) => {
    const r = await fetch(`${t.url}/v1/overview`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
    return { status: r.status, body: (await r.json()) as any }; // eslint-disable-line @typescript-eslint/no-explicit-any
  };

  it("refuses a caller without a token", async () => {
    const r = await overview(undefined);
    expect(r.status).toBe(401);
    expect(r.body.error.code).toBe("FLEX_UNAUTHENTICATED");
  });

  it("gives a reader its own tenant's counts and dead letters, never the other tenant's", async () => {
    const a = await overview(await tokenFor(t.gw, A, ["reader"]));
    expect(a.status).toBe(200);
    expect(a.body).toMatchObject({ tenant: A, events: 5, derived: 2, deadLetters: [{ source: "anomaly", count: 1, redrivePending: 0 }], plugins: null });
    expect(JSON.stringify(a.body)).not.toContain(B);
    const b = await overview(await tokenFor(t.gw, B, ["writer"]));
    expect(b.body).toMatchObject({ tenant: B, events: 40, derived: 9, deadLetters: [{ source: `secret_${B}`, count: 3 }] });
  });

  it("counts with one idle consumer per filter, kept across readings", async () => {
    const token = await tokenFor(t.gw, A, ["admin"]);
    await overview(token);
    const e = encodeEvent({ id: `${A}-later`, type: "AnomalyScored", data: {} });
    await jetstream(t.nats.nc).publish(`drv.${A}.anomaly.later`, e.data, { headers: e.headers });
    await new Promise((r) => setTimeout(r, 1_100)); // past the 1 s the reading is shared
    expect((await overview(token)).body.derived).toBe(3);
    const jsm = await jetstreamManager(t.nats.nc);
    for (const [stream, filter] of [["FLEX_EVENTS", `evt.${A}.>`], ["FLEX_DERIVED", `drv.${A}.>`]] as const) {
      const consumers = await jsm.consumers.list(stream).next();
      expect(consumers.filter((c) => c.config.filter_subject === filter), stream).toHaveLength(1);
    }
  });
});
