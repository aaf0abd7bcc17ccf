/**
 * The console's whole journey in a real headless Chromium against a real `flexcore up` (a child
 * process, as an operator runs it: gateway on port 0, its own data folder, users made with
 * `flexcore users add`), on a real nats-server with authorization on. The pipeline has one
 * processor, `checked`, of kind `checker/check`: an external plugin this file serves, which
 * refuses an event while the file its `failWhile` names exists (a cause an operator can fix);
 * and one workflow with a script step, from flexcore.yaml.
 *
 * One browser per tenant. Tenant A's admin signs in; an event appended through the API shows in
 * the live tail within 1 s of the POST's answer; time travel shows an aggregate's earlier state
 * beside its current one; a projection query pages; a workflow run started from the console ends
 * with its logs; a dead letter is redriven from the console and processed (the processor's
 * outputs for its key counted before and after); A's reader sees no admin controls and the API
 * refuses them anyway (403); tenant B's console never shows A's data and A's never B's; axe
 * finds nothing serious or critical on any page; a screenshot per page
 * (`test-artifacts/console/up-<page>.png`); SIGTERM ends the open live tail cleanly and
 * `flexcore up` exits 0.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { randomBytes } from "node:crypto";
import type { Page, Request as PwRequest } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { definePlugin, pluginUserEntry, pluginUserName, serve } from "../plugins/index.js";
import type { ProcessorOutput, ProcessorRejection, ServedPlugin } from "../plugins/index.js";
import { STREAMS } from "../streams/index.js";
import { countMessages, readStream, waitFor } from "../processors/testing.js";
import { callApiAs, expectNoAxeViolations, gotoConsole, launchBrowser, queryProjectionRows, screenshot, signInConsole } from "../test/browser.js";
import { expectMeterRowsPage } from "../test/console-pages.js";
import type { TestBrowser, WatchedPage } from "../test/browser.js";
import { startUp } from "../test/flexcore-up.js";
import type { UpProcess } from "../test/flexcore-up.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";

const execFileAsync = promisify(execFile);
const MAIN = fileURLToPath(new URL("./main.ts", import.meta.url));
const A = uniqueName("upa");
const B = uniqueName("upb");
const PLUGIN = "checker";
const PROCESSOR = "checked";
const PASSWORD = "correct horse battery";
// Values only tenant B stores: none may ever show in A's console (and A's in B's).
const B_CATEGORY = "bsecretcat";
const B_VALUE = `b-secret-${randomBytes(4).toString("hex")}`;
const A_VALUE = `a-secret-${randomBytes(4).toString("hex")}`;
const user = (tenant: string, username: string) => ({ tenant, username, password: PASSWORD });

let dir: string;
let marker: string;
let nats: TestNats;
let plugin: ServedPlugin;
let up: UpProcess;
let base: string;
let browserA: TestBrowser;
let browserB: TestBrowser;
const tokens: Record<string, string> = {};
const watched: WatchedPage[] = [];
/** How many errors each watched tab had recorded when `flexcore up` was sent SIGTERM. */
let errorsBeforeStop: number[] | undefined;
/** A's admin tab with the live tail open from step 2 until the SIGTERM. */
let tail: WatchedPage;
/** A's admin tab for the other pages. */
let admin: WatchedPage;
/** The live tail's requests in {@link tail}, each with how it ended (`finished`, `failed: <why>`) once it did. */
const feeds: Array<{ readonly request: PwRequest; end?: string }> = [];

/**
 * The external plugin behind the `checked` processor: one `Checked` output per event, except
 * that an event whose `failWhile` names an existing file is refused (dead-lettered by the host).
 */
const checker = definePlugin({
  name: PLUGIN,
  version: "1.0.0",
  description: "console-up test plugin: refuses an event while the file its failWhile names exists",
  protocols: [1],
  processors: {
    check: {
      process(request) {
        const outputs: ProcessorOutput[] = [];
        const rejected: ProcessorRejection[] = [];
        request.inputs.forEach((input, i) => {
          const failWhile = (input.data as { failWhile?: unknown } | null)?.failWhile;
          if (typeof failWhile === "string" && existsSync(failWhile)) rejected.push({ input: i, reason: `checker: ${failWhile} exists` });
          else outputs.push({ input: i, type: "Checked", data: input.data });
        });
        return { states: {}, outputs, rejected };
      },
    },
  },
});

async function api(token: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(`${base}${path}`, { method, headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "content-type": "application/json" }) }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await r.text();
  return { status: r.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

async function appendEvents(token: string, events: ReadonlyArray<{ category: string; stream: string; type: string; data: unknown }>): Promise<void> {
  const res = await api(token, "POST", "/v1/events", events);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
}

/** `flexcore users add` as an operator runs it, the password on FLEXCORE_PASSWORD. */
async function addUser(tenant: string, username: string, roles: string): Promise<void> {
  await execFileAsync(process.execPath, ["--import", "tsx", MAIN, "users", "add", tenant, username, "--roles", roles], { env: { ...process.env, ...nats.env, FLEXCORE_PASSWORD: PASSWORD }, timeout: 30_000 });
}

async function signInToken(tenant: string, username: string): Promise<string> {
  const r = await fetch(`${base}/v1/auth/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ tenant, username, password: PASSWORD }) });
  expect(r.status).toBe(200);
  return ((await r.json()) as { access_token: string }).access_token;
}

const outputsOf = async (tenant: string, key: string): Promise<Array<{ value?: number }>> =>
  (await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${PROCESSOR}.${key}`)).map((m) => JSON.parse(m.data) as { value?: number });

async function newTab(browser: TestBrowser): Promise<WatchedPage> {
  const w = await browser.newPage();
  watched.push(w);
  return w;
}

/** Opens `route` by its nav link (as a user does) and waits for its heading. */
async function open(page: Page, link: string, heading = link): Promise<void> {
  await page.getByRole("link", { name: link, exact: true }).click();
  await page.locator("h1", { hasText: heading }).waitFor();
}

/** axe, a screenshot `up-<name>.png`, and none of `secrets` in the page's text. */
async function check(page: Page, name: string, secrets: readonly string[]): Promise<void> {
  const text = await page.locator("body").innerText();
  for (const s of secrets) expect(text, `${name} shows ${s}`).not.toContain(s);
  await expectNoAxeViolations(page);
  await screenshot(page, `up-${name}`);
}
const notB = [B, B_CATEGORY, B_VALUE];
// The processor and the projections serve every tenant: their names are not A's data.
const notA = (): string[] => [A, A_VALUE, "meter", "door/d1", "TailMe", "greet"];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-console-up-"));
  marker = join(dir, "broken");
  await writeFile(marker, "the cause of the failure");
  const pluginPassword = randomBytes(18).toString("base64url");
  nats = await startTestNats({ extraUsers: [pluginUserEntry(PLUGIN, pluginPassword)] });
  // An external plugin: run by whoever runs it (here, this file), with its own NATS user.
  plugin = await serve(checker, {
    env: { FLEXCORE_PLUGIN_NAME: PLUGIN, FLEXCORE_PLUGIN_NATS_URL: nats.server.url, FLEXCORE_PLUGIN_NATS_USER: pluginUserName(PLUGIN), FLEXCORE_PLUGIN_NATS_PASSWORD: pluginPassword, LOG_LEVEL: "warn" },
    handleSignals: false,
    exit: () => undefined,
  });
  const workflow = join(dir, "greet.yaml");
  await writeFile(workflow, `name: greet
steps:
  - id: hello
    kind: script
    language: bash
    source: |
      echo up-says-hello
      echo '{"said":"hello"}'
`);
  const config = join(dir, "flexcore.yaml");
  await writeFile(config, `runtime:
  threads: 1
plugins:
  ${PLUGIN}:
    external: ${PLUGIN}
processors:
  - name: ${PROCESSOR}
    kind: ${PLUGIN}/check
    subjects: ["evt.*.reading.*"]
    max_deliver: 2
    backoff: [20ms]
workflows:
  tenant: ${A}
  definitions: [${JSON.stringify(workflow)}]
  lease: 1s
`);
  [up, browserA, browserB] = await Promise.all([
    startUp({ config, env: { ...nats.env, FLEXCORE_DATA: join(dir, "data"), FLEXCORE_GATEWAY_PORT: "0", FLEXCORE_GATEWAY_KEYS_DIR: join(dir, "gw-keys") }, timeoutMs: 60_000 }),
    launchBrowser(),
    launchBrowser(),
  ]);
  base = up.gatewayUrl;
  await Promise.all([
    addUser(A, "ann", "admin"),
    addUser(A, "wes", "writer"),
    addUser(A, "rita", "reader"),
    addUser(B, "bob", "admin"),
    addUser(B, "bwes", "writer"),
  ]);
  tokens.a = await signInToken(A, "wes");
  tokens.b = await signInToken(B, "bwes");
  // A: 15 aggregates for a projection of two pages, an aggregate for time travel, readings for
  // the processor (one refused while the marker exists). B: its own secrets and a reading.
  await appendEvents(tokens.a, Array.from({ length: 15 }, (_, i) => ({ category: "meter", stream: `m${String(i).padStart(2, "0")}`, type: "Read", data: { kwh: i } })));
  await appendEvents(tokens.a, [
    { category: "door", stream: "d1", type: "Installed", data: { color: "red", open: false, tag: A_VALUE } },
    { category: "door", stream: "d1", type: "Opened", data: { open: true } },
    { category: "door", stream: "d1", type: "Painted", data: { color: "blue" } },
  ]);
  await appendEvents(tokens.a, [
    { category: "reading", stream: "k1", type: "Reading", data: { value: 1 } },
    { category: "reading", stream: "k1", type: "Reading", data: { value: 2, failWhile: marker } },
    { category: "reading", stream: "k1", type: "Reading", data: { value: 3 } },
  ]);
  await appendEvents(tokens.b, [
    { category: B_CATEGORY, stream: "b1", type: "BSecret", data: { owner: B_VALUE } },
    { category: "reading", stream: "bkey", type: "Reading", data: { value: 40, note: B_VALUE } },
  ]);
  await waitFor(async () => (await countMessages(nats.nc, STREAMS.dlq, `dlq.${A}.${PROCESSOR}`)) === 1 && (await outputsOf(A, "k1")).length === 2 && (await outputsOf(B, "bkey")).length === 1, 30_000, "the refused reading dead-lettered, the others processed");
  const ann = await signInToken(A, "ann");
  const meters = `/v1/projections/generic?limit=100&filter=${encodeURIComponent('{"category":"meter"}')}`;
  await waitFor(async () => ((await api(ann, "GET", meters)).body.rows as unknown[] | undefined)?.length === 15, 30_000, "the 15 meters in the generic read model");
}, 120_000);

afterAll(async () => {
  await browserA?.close();
  await browserB?.close();
  if (up) {
    const code = await Promise.race([up.stop(), new Promise<"hung">((r) => setTimeout(() => r("hung"), 20_000))]);
    if (code === "hung") await up.kill();
  }
  await plugin?.stop();
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

describe("the console under flexcore up", () => {
  it("signs A's admin in; an event appended through the API shows in the live tail within 1 s of the POST's answer", async () => {
    tail = await newTab(browserA);
    const { page } = tail;
    await gotoConsole(page, base);
    await check(page, "sign-in", []);
    page.on("request", (request) => {
      if (request.url().includes("/v1/events/live")) feeds.push({ request });
    });
    page.on("requestfinished", (request) => {
      const f = feeds.find((x) => x.request === request);
      if (f) f.end = "finished";
    });
    page.on("requestfailed", (request) => {
      const f = feeds.find((x) => x.request === request);
      if (f) f.end = `failed: ${request.failure()?.errorText ?? "?"}`;
    });
    await signInConsole(page, base, user(A, "ann"));
    await page.locator('.plot[data-drawn="true"]').first().waitFor();
    await expect.poll(() => page.getByTestId("dead-letters").innerText()).toBe("1");
    await check(page, "overview", notB);
    await open(page, "Event explorer");
    // Every category of A's: the page has A's data, so "none of B's" is not vacuous.
    await page.getByLabel("Per page").selectOption("100");
    await page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => page.getByTestId("events-table").innerText()).toContain("door/d1");
    expect(await page.getByTestId("events-table").innerText()).toContain(A_VALUE);
    await page.getByRole("button", { name: "Start live tail" }).click();
    await expect.poll(() => page.getByTestId("tail-state").innerText()).toBe("live");
    await appendEvents(tokens.b!, [{ category: "sensor", stream: "s1", type: "BTailed", data: { owner: B_VALUE } }]);
    await appendEvents(tokens.a!, [{ category: "sensor", stream: "tail1", type: "TailMe", data: { n: 42 } }]);
    const answered = Date.now();
    await page.getByTestId("tail").getByText("TailMe").waitFor({ timeout: 1_000 });
    expect(Date.now() - answered).toBeLessThan(1_000);
    // Time for B's event to show, were it going to.
    await page.waitForTimeout(300);
    expect(await page.getByTestId("tail").innerText()).not.toContain("BTailed");
    await check(page, "events", [...notB, "BTailed"]);
  });

  it("time travel: the aggregate's state as of an earlier revision beside its current state", async () => {
    const { page } = tail;
    await page.getByLabel("Category").fill("door");
    await page.getByRole("button", { name: "Search" }).click();
    await page.getByRole("button", { name: "History of door/d1" }).first().click();
    await page.getByRole("heading", { name: "History of door/d1" }).waitFor();
    await expect.poll(() => page.getByTestId("state-current").innerText()).toContain('"blue"');
    await page.getByLabel("State as of revision").selectOption({ label: await page.locator("#as-of option", { hasText: "revision 1:" }).innerText() });
    await expect.poll(() => page.getByTestId("state-as-of").innerText()).toContain('"red"');
    expect(await page.getByTestId("state-as-of").innerText()).toContain('"open": false');
    expect(await page.getByTestId("state-current").innerText()).toContain('"open": true');
    // The tail still follows (now the door category): it stays open until the SIGTERM.
    await expect.poll(() => page.getByTestId("tail-state").innerText()).toBe("live");
    await check(page, "events-history", notB);
  });

  it("a projection query pages (15 aggregates, 10 a page)", async () => {
    admin = await newTab(browserA);
    const { page } = admin;
    await signInConsole(page, base, user(A, "ann"), "projections");
    await page.getByRole("button", { name: "Query generic" }).click();
    const rows = await queryProjectionRows(page, { perPage: "10", sortBy: "id", filter: { column: "category", value: "meter" } });
    await expectMeterRowsPage(page, rows, 1);
    await check(page, "projections", notB);
    await page.getByRole("button", { name: "Next page" }).click();
    await expectMeterRowsPage(page, rows, 2);
  });

  it("a run of the configured workflow started from the console ends, with its logs", async () => {
    const { page } = admin;
    await open(page, "Workflows");
    await page.getByRole("button", { name: "greet", exact: true }).click();
    await page.getByRole("heading", { name: /^greet version 1/u }).waitFor();
    await page.getByRole("button", { name: "Start a run" }).click();
    await expect.poll(() => page.getByTestId("run-status").innerText(), { timeout: 20_000 }).not.toBe("running");
    expect(`${await page.getByTestId("run-status").innerText()}\n${await page.getByTestId("run-logs").innerText()}`).toMatch(/^succeeded\n/u);
    await expect.poll(() => page.getByTestId("run-logs").innerText()).toContain("stdout| up-says-hello");
    await check(page, "workflows", notB);
  });

  it("a dead letter is redriven from the console once its cause is fixed, and processed", async () => {
    const { page } = admin;
    await open(page, "Dead letters");
    await expect.poll(() => page.getByTestId(`dlq-count-${PROCESSOR}`).innerText()).toBe("1");
    await page.getByRole("button", { name: `List ${PROCESSOR}` }).click();
    await page.getByRole("button", { name: /^Inspect \d+$/u }).click();
    const facts = page.getByTestId("dead-letter");
    await facts.waitFor();
    expect(await facts.innerText()).toContain(`evt.${A}.reading.k1`);
    expect(await facts.innerText()).toContain(`checker: ${marker} exists`);
    await check(page, "dead-letters", notB);

    await unlink(marker);
    const before = await outputsOf(A, "k1");
    expect(before.map((o) => o.value)).toEqual([1, 3]);
    await page.getByRole("button", { name: /^Redrive \d+$/u }).click();
    const dialog = page.getByRole("dialog", { name: "Redrive dead letters?" });
    await dialog.waitFor();
    await dialog.getByRole("button", { name: "Redrive" }).click();
    await page.getByRole("status").getByText("Redrove 1 dead letter(s).").waitFor();
    await waitFor(async () => (await outputsOf(A, "k1")).length === 3, 20_000, "the redriven reading processed");
    expect((await outputsOf(A, "k1")).map((o) => o.value)).toEqual([1, 3, 2]);
    expect(await countMessages(nats.nc, STREAMS.dlq, `dlq.${A}.${PROCESSOR}`)).toBe(0);
    await expect.poll(() => page.getByTestId("dlq-sources").innerText(), { timeout: 10_000 }).not.toContain(PROCESSOR);
  });

  it("the admin's users page lists A's users only", async () => {
    const { page } = admin;
    await open(page, "Users");
    const table = page.getByTestId("user-table");
    await table.getByRole("rowheader", { name: "rita" }).waitFor();
    const text = await table.innerText();
    for (const name of ["ann", "wes"]) expect(text).toContain(name);
    for (const name of ["bob", "bwes"]) expect(text).not.toContain(name);
    await check(page, "users", notB);
  });

  it("A's reader sees no admin controls, and the API refuses the reader's admin calls anyway (403, nothing changed)", async () => {
    const still = join(dir, "still-broken");
    await writeFile(still, "x");
    await appendEvents(tokens.a!, [{ category: "reading", stream: "k2", type: "Reading", data: { value: 6, failWhile: still } }]);
    await waitFor(async () => (await countMessages(nats.nc, STREAMS.dlq, `dlq.${A}.${PROCESSOR}`)) === 1, 20_000, "a dead letter for the reader to see");
    const reader = await newTab(browserA);
    const { page } = reader;
    await signInConsole(page, base, user(A, "rita"), "dead-letters");
    await page.getByTestId(`dlq-count-${PROCESSOR}`).waitFor();
    expect(await page.getByRole("link", { name: "Users" }).count()).toBe(0);
    await page.getByRole("button", { name: `List ${PROCESSOR}` }).click();
    await page.getByRole("button", { name: /^Inspect \d+$/u }).click();
    await page.getByTestId("dead-letter").waitFor();
    expect(await page.getByRole("button", { name: /Redrive|Purge/u }).count()).toBe(0);
    await check(page, "dead-letters-reader", notB);
    await open(page, "Workflows");
    await page.getByTestId("workflow-table").getByText("greet").waitFor();
    expect(await page.getByText("Upload a definition").count()).toBe(0);
    expect(await page.getByRole("button", { name: "Start a run" }).count()).toBe(0);
    await check(page, "workflows-reader", notB);

    const refused = { status: 403, code: "FLEX_FORBIDDEN" };
    expect(await callApiAs(page, "POST", "/v1/dlq/redrive", { source: PROCESSOR })).toEqual(refused);
    expect(await callApiAs(page, "POST", "/v1/dlq/purge", { source: PROCESSOR, confirm: true })).toEqual(refused);
    expect(await callApiAs(page, "GET", "/v1/users")).toEqual(refused);
    expect(await callApiAs(page, "PATCH", "/v1/users/rita", { roles: ["admin"] })).toEqual(refused);
    expect(await callApiAs(page, "POST", "/v1/workflows", { name: "sneaky", steps: [{ id: "x", kind: "script", language: "bash", source: "echo '{}'" }] })).toEqual(refused);
    // Nothing moved: the dead letter is still there, the reader is still a reader, no new workflow.
    expect(await countMessages(nats.nc, STREAMS.dlq, `dlq.${A}.${PROCESSOR}`)).toBe(1);
    const ann = await signInToken(A, "ann");
    const users = (await api(ann, "GET", "/v1/users")).body.users as Array<{ username: string; roles: string[] }>;
    expect(users.find((u) => u.username === "rita")?.roles).toEqual(["reader"]);
    expect((await api(ann, "GET", "/v1/workflows/sneaky")).status).toBe(404);
    expect(existsSync(still)).toBe(true);
  });

  it("tenant B's console, in a browser of its own, never shows A's data, and sees its own", async () => {
    const w = await newTab(browserB);
    const { page } = w;
    await signInConsole(page, base, user(B, "bob"));
    await page.locator('.plot[data-drawn="true"]').first().waitFor();
    await check(page, "b-overview", notA());
    await open(page, "Event explorer");
    await page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => page.getByTestId("events-table").innerText()).toContain(B_CATEGORY);
    expect(await page.getByTestId("events-table").innerText()).toContain(B_VALUE);
    await check(page, "b-events", notA());
    // A's aggregate asked for by name is only an empty category of B's.
    await page.getByLabel("Category").fill("door");
    await page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => page.getByTestId("events-table").innerText()).toContain("No events on this page.");
    await open(page, "Dead letters");
    await page.getByTestId("dlq-sources").waitFor();
    await check(page, "b-dead-letters", notA());
    await open(page, "Workflows");
    await page.getByTestId("workflow-table").waitFor();
    await page.waitForTimeout(300);
    expect(await page.getByTestId("workflow-table").innerText()).not.toContain("greet");
    await check(page, "b-workflows", notA());
    // And B's admin reads none of A's through the API either.
    const bob = await signInToken(B, "bob");
    for (const path of ["/v1/streams/door/d1", "/v1/events?category=door", "/v1/events", "/v1/projections/generic?limit=100", `/v1/derived/${PROCESSOR}`]) {
      const res = await api(bob, "GET", path);
      expect([200, 404], `${path}: ${JSON.stringify(res.body)}`).toContain(res.status);
      for (const secret of [A, A_VALUE, "Painted", "m00"]) expect(JSON.stringify(res.body), `${path} answers ${secret}`).not.toContain(secret);
    }
  });

  it("SIGTERM to flexcore up: the console's open live tail ends cleanly and the process exits 0", async () => {
    const { page } = tail;
    expect(await page.getByTestId("tail-state").innerText()).toBe("live");
    // The feed open now: the one of the door filter, not ended.
    const feed = feeds.at(-1)!;
    expect(feed.request.url()).toContain("category=door");
    expect(feed.end).toBeUndefined();
    errorsBeforeStop = watched.map((w) => w.errors.length);
    const code = await up.stop();
    expect(code, up.stderr().slice(-4000)).toBe(0);
    // The console saw the feed end and waits to reconnect: no error shown, no page error.
    await expect.poll(() => page.getByTestId("tail-state").innerText(), { timeout: 5_000 }).toBe("reconnecting");
    expect(await page.getByRole("alert").count()).toBe(0);
    expect(tail.errors.filter((e) => e.startsWith("pageerror"))).toEqual([]);
    // Ended by the gateway with the reason, as a complete response: not cut off.
    await expect.poll(() => feed.end, { timeout: 5_000 }).toBe("finished");
    expect(await (await feed.request.response())!.text()).toMatch(/event: end\ndata: \{"reason":"server shutting down"\}/u);
    expect(up.stderr()).toContain("stopped gateway");
  });

  it("ran every page without a CSP violation or an unexpected console error", async () => {
    for (const w of watched) expect(await w.cspViolations()).toEqual([]);
    // Before the SIGTERM, only the reader's refused calls (403 on purpose). After it, a page's polling
    // may meet the closing gateway (503, Fastify's return503OnClosing) or no gateway at all.
    const refused = /Failed to load resource: the server responded with a status of 403/u;
    const closing = /Failed to load resource: the server responded with a status of 503|net::ERR_CONNECTION_REFUSED/u;
    const unexpected = watched.flatMap((w, i) => {
      const cut = errorsBeforeStop?.[i] ?? w.errors.length;
      return [...w.errors.slice(0, cut).filter((e) => !refused.test(e)), ...w.errors.slice(cut).filter((e) => !refused.test(e) && !closing.test(e))];
    });
    expect(unexpected).toEqual([]);
  });
});
