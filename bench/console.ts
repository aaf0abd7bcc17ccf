/**
 * The operations console (#16): its JavaScript + CSS gzipped, navigation → the overview's
 * first chart drawn in headless Chromium with `--events` (default 1M) in the store (median of
 * `--runs`, default 10) beside the bare HTML page load of the same browser, and the gateway's
 * CPU per open console over `--cpu-seconds` (default 30) beside none open.
 *
 *   npm run bench -- console [--events 1000000] [--runs 10] [--cpu-seconds 30]
 *
 * The gateway runs in this process with the Playwright driver's client; while the console
 * sits on the overview the driver is idle, so the difference of `process.cpuUsage()` with one
 * console open and with none is the console's cost (its 2 s polls of `/v1/overview`).
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { createGateway, defaultConsoleDir } from "../gateway/index.js";
import type { ConsoleManifest } from "../gateway/index.js";
import { createPublisher, encodeEvent, ensureTopology } from "../streams/index.js";
import type { Page } from "playwright-core";
import { launchBrowser } from "../test/browser.js";
import { median, startBenchNats } from "./harness.js";
import type { BenchResult, Suite } from "./harness.js";

const TENANT = "bench";
const PASSWORD = "bench console password";
const DEFAULT_EVENTS = 1_000_000;
const DEFAULT_RUNS = 10;
const DEFAULT_CPU_SECONDS = 30;
const SEED_IN_FLIGHT = 4_096;
/** Goals of the issue. */
const GOAL_GZIP_KB = 150;
const GOAL_FIRST_CHART_MS = 1_000;
const GOAL_CPU_PERCENT = 2;
const CHART_MARK = "flexcore:first-chart-drawn";
const SESSION_KEY = "flexcore.console.session";

function flag(args: readonly string[], name: string, fallback: number): number {
  const at = args.indexOf(name);
  if (at < 0) return fallback;
  const v = Number(args[at + 1]);
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} needs a positive integer, got ${args[at + 1]}`);
  return v;
}

// Polled with plain evaluations: waitForFunction evaluates a string inside the page, which the console's CSP forbids.
async function chartDrawnAt(page: Page): Promise<number> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const at = await page.evaluate<number | null>(`performance.getEntriesByName(${JSON.stringify(CHART_MARK)})[0]?.startTime ?? null`);
    if (at !== null) return at;
    if (Date.now() > deadline) throw new Error("The overview drew no chart within 30 s");
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function cpuPercentOver(seconds: number): Promise<number> {
  const before = process.cpuUsage();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const used = process.cpuUsage(before);
  return ((used.user + used.system) / 1000 / (seconds * 1000)) * 100;
}

export const suite: Suite = {
  name: "console",
  description: "console bundle size (gzip), navigation to the overview's first chart (vs a bare page), gateway CPU per open console",
  async run({ args, log, env }) {
    const events = flag(args, "--events", DEFAULT_EVENTS);
    const runs = flag(args, "--runs", DEFAULT_RUNS);
    const cpuSeconds = flag(args, "--cpu-seconds", DEFAULT_CPU_SECONDS);
    const results: BenchResult[] = [];

    const manifest = JSON.parse(await readFile(join(defaultConsoleDir(), "manifest.json"), "utf8")) as ConsoleManifest;
    const gz = manifest.files.reduce((n, f) => n + f.gzipBytes, 0) / 1024;
    results.push({ name: "console.js+css.gzip", unit: "KiB", median: gz, samples: [gz], extra: { goal: `<= ${GOAL_GZIP_KB}`, files: manifest.files } });

    await using nats = await startBenchNats();
    await ensureTopology(nats.nc);
    log(`seeding ${events} events for tenant ${TENANT}…`);
    const seedStart = performance.now();
    const publisher = createPublisher(nats.nc);
    let pending: Array<Promise<unknown>> = [];
    for (let i = 0; i < events; i++) {
      const e = encodeEvent({ id: `e-${i}`, type: "Reading", data: { v: i % 100 } });
      pending.push(publisher.publish(`evt.${TENANT}.sensor.s-${i % 1000}`, e.data, { headers: e.headers }));
      if (pending.length >= SEED_IN_FLIGHT) {
        await Promise.all(pending);
        pending = [];
      }
    }
    await Promise.all(pending);
    await publisher.close();
    const seedSeconds = (performance.now() - seedStart) / 1000;
    env.consoleEvents = events;
    env.consoleSeedSeconds = Number(seedSeconds.toFixed(1));
    log(`seeded in ${seedSeconds.toFixed(1)} s (${Math.round(events / seedSeconds)} events/s)`);

    const dataDir = await mkdtemp(join(tmpdir(), "flexcore-bench-console-"));
    const gw = await createGateway({ nc: nats.nc, dataDir, port: 0, metricsIntervalMs: 0, workflows: false, rateLimit: false });
    const bare = createServer((_req, res) => res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end("<!doctype html><title>bare</title><p>bare page</p>"));
    try {
      const base = await gw.listen();
      await new Promise<void>((r) => bare.listen(0, "127.0.0.1", r));
      const bareUrl = `http://127.0.0.1:${(bare.address() as AddressInfo).port}/`;
      await gw.users.add(TENANT, "ops", PASSWORD, ["reader"]);
      const signIn = await fetch(`${base}/v1/auth/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ tenant: TENANT, username: "ops", password: PASSWORD }) });
      const pair = (await signIn.json()) as { access_token: string; refresh_token: string; expires_in: number };
      const session = JSON.stringify({ tenant: TENANT, username: "ops", roles: ["reader"], accessToken: pair.access_token, refreshToken: pair.refresh_token, expiresAt: Date.now() + pair.expires_in * 1000 });

      await using browser = await launchBrowser();
      // The session is put in place before the page's script runs: each run measures a signed-in user opening the overview.
      await browser.context.addInitScript({ content: `sessionStorage.setItem(${JSON.stringify(SESSION_KEY)}, ${JSON.stringify(session)});` });
      const bareMs: number[] = [];
      const chartMs: number[] = [];
      for (let i = 0; i <= runs; i++) {
        const w = await browser.newPage();
        await w.page.goto(bareUrl, { waitUntil: "load" });
        const b = await w.page.evaluate<number>(`performance.getEntriesByType("navigation")[0].loadEventEnd`);
        const w2 = await browser.newPage();
        await w2.page.goto(`${base}/console/#/overview`, { waitUntil: "commit" });
        const c = await chartDrawnAt(w2.page);
        await w.page.close();
        await w2.page.close();
        if (i === 0) continue; // warm-up: first start of the browser's caches and the server's
        bareMs.push(b);
        chartMs.push(c);
      }
      results.push({ name: "baseline.bare-html-load", unit: "ms", median: median(bareMs), samples: bareMs });
      results.push({ name: "console.first-overview-chart", unit: "ms", median: median(chartMs), samples: chartMs, extra: { goal: `<= ${GOAL_FIRST_CHART_MS}`, events } });

      log(`gateway CPU: ${cpuSeconds} s with no console, then ${cpuSeconds} s with one…`);
      const idle = await cpuPercentOver(cpuSeconds);
      const w = await browser.newPage();
      await w.page.goto(`${base}/console/#/overview`);
      await chartDrawnAt(w.page);
      const one = await cpuPercentOver(cpuSeconds);
      await w.page.close();
      results.push({ name: "baseline.gateway-cpu-no-console", unit: "% core", median: idle, samples: [idle] });
      results.push({ name: "console.gateway-cpu-one-console", unit: "% core", median: one - idle, samples: [one - idle], extra: { goal: `< ${GOAL_CPU_PERCENT}`, withConsole: one, withoutConsole: idle, events } });
    } finally {
      bare.close();
      await gw.close();
      await rm(dataDir, { recursive: true, force: true });
    }
    return results;
  },
};
