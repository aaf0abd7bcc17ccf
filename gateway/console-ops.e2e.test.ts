/**
 * The console's operations pages in a real headless Chromium against the real gateway
 * (port 0), a real nats-server (authorization on), the real processor runtime (the `flaky`
 * test processor), the real projection engine and a real workflow runner:
 * a workflow uploaded and started from the console ends and its logs show; a dead-lettered
 * message is inspected and redriven from the console and processed (the processor's output
 * counted); a purge asks first; users are added, re-roled and deleted; a reader sees no
 * admin controls and the API refuses the reader's calls anyway; tenant B's data never shows
 * in tenant A's pages; axe finds nothing serious on any page; one screenshot per page.
 */
import { existsSync, writeFileSync } from "node:fs";
import { mkdtemp, rm, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ProcessorRuntime } from "../processors/index.js";
import { countMessages, readStream, startFixtureRuntime, waitFor } from "../processors/testing.js";
import { createProjectionEngine } from "../projections/index.js";
import type { ProjectionEngine } from "../projections/index.js";
import { createPublisher, encodeEvent, ensureTopology, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";
import { callApiAs, expectNoAxeViolations, launchBrowser, screenshot, signInConsole } from "../test/browser.js";
import type { TestBrowser, WatchedPage } from "../test/browser.js";
import { seedTenant } from "../test/console-fixtures.js";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { createOperatorTrust, startWorkflowRunner } from "../workflows/index.js";
import type { WorkflowRunner } from "../workflows/index.js";
import { createGateway } from "./index.js";
import type { Gateway } from "./index.js";

const A = uniqueName("opa");
const B = uniqueName("opb");
const FLAKY = uniqueName("fl");
const B_KEY = `bkey_${B}`;
const PASSWORD = "correct horse battery";
let nats: TestNats;
let dir: string;
let marker: string;
let runtime: ProcessorRuntime;
let engine: ProjectionEngine;
let runner: WorkflowRunner;
let gw: Gateway;
let base: string;
let publisher: Publisher;
let browser: TestBrowser;
const pages: WatchedPage[] = [];

let n = 0;
async function publish(tenant: string, key: string, data: unknown): Promise<void> {
  n += 1;
  const e = encodeEvent({ id: `${tenant}-ops-${n}`, type: "Reading", data });
  await publisher.publish(`evt.${tenant}.m.${key}`, e.data, { headers: e.headers });
}
const outputsOf = async (tenant: string, key: string): Promise<number> => (await readStream(nats.nc, STREAMS.derived, `drv.${tenant}.${FLAKY}.${key}`)).length;

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-console-ops-"));
  marker = join(dir, "broken");
  writeFileSync(marker, "the cause of the failure");
  publisher = createPublisher(nats.nc);
  const [rt, eng, wr, br] = await Promise.all([
    // Reports every second (not per minute), so the throughput chart has points at once.
    (async () => startFixtureRuntime(await nats.connect(), [{ name: FLAKY, kind: "flaky", subjects: ["evt.*.m.*"] }], { metricsIntervalMs: 1_000 }))(),
    (async () => {
      const e = createProjectionEngine(nats.nc, { dataDir: join(dir, "data"), log: () => undefined });
      await e.start();
      return e;
    })(),
    (async () => startWorkflowRunner(await nats.connect(), { trust: createOperatorTrust(), leaseMs: 1_000, pollMs: 50, rescanMs: 200, scriptRunnerOptions: { sandbox: "auto", maxConcurrent: 2 }, log: () => undefined }))(),
    launchBrowser(),
  ]);
  runtime = rt;
  engine = eng;
  runner = wr;
  browser = br;
  gw = await createGateway({ nc: nats.nc, dataDir: dir, port: 0, metricsIntervalMs: 0, projections: engine });
  base = await gw.listen();
  await gw.users.add(A, "ann", PASSWORD, ["admin"]);
  await gw.users.add(A, "rita", PASSWORD, ["reader"]);
  await gw.users.add(B, "bob", PASSWORD, ["admin"]);
  // Good readings of A and B, a poison one of A (dead-lettered while the marker exists), and
  // dead letters of another source to purge.
  await publish(A, "k1", { value: 1 });
  await publish(A, "k1", { value: 2, failWhile: marker });
  for (const value of [3, 5, 4, 8]) await publish(A, "k1", { value });
  await publish(B, B_KEY, { value: 40 });
  await seedTenant(nats.nc, A, { events: 0, deadLetters: { junk: 2 } });
  await seedTenant(nats.nc, B, { events: 0, deadLetters: { [`only_${B}`]: 3 } });
  await waitFor(async () => (await countMessages(nats.nc, STREAMS.dlq, `dlq.${A}.${FLAKY}`)) === 1 && (await outputsOf(A, "k1")) === 5 && (await outputsOf(B, B_KEY)) === 1, 30_000, "the poison event dead-lettered, the good ones processed");
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await gw?.close();
  await runner?.close();
  await runtime?.close();
  await engine?.close();
  await publisher?.close();
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function signIn(tenant: string, username: string, route: string): Promise<WatchedPage> {
  const w = await browser.newPage();
  pages.push(w);
  await signInConsole(w.page, base, { tenant, username, password: PASSWORD }, { link: route === "dead-letters" ? "Dead letters" : route[0]!.toUpperCase() + route.slice(1) });
  return w;
}

describe("console operations pages", () => {
  it("processors: throughput chart from the runtime's reports, the tenant's outputs plotted, nothing of tenant B", async () => {
    const w = await signIn(A, "ann", "processors");
    await w.page.getByTestId("processor-table").getByRole("rowheader", { name: FLAKY }).waitFor();
    await w.page.locator('.plot[data-drawn="true"]').nth(1).waitFor();
    await w.page.getByRole("button", { name: "Plot k1" }).click();
    await w.page.locator('.plot[data-drawn="true"]').nth(2).waitFor();
    await expect.poll(() => w.page.getByTestId("latest-outputs").innerText()).toContain("Counted");
    const text = await w.page.locator("body").innerText();
    expect(text).not.toContain(B_KEY);
    expect(text).not.toContain(B);
    await expectNoAxeViolations(w.page);
    await screenshot(w.page, "processors");
  });

  it("workflows: a definition uploaded and a run started from the console ends, with its step graph and logs", async () => {
    const w = await signIn(A, "ann", "workflows");
    await w.page.getByText("Upload a definition").click();
    const def = { name: "greet", steps: [
      { id: "hello", kind: "script", language: "bash", source: "echo console-says-hello; echo '{\"said\":\"hello\"}'" },
      { id: "bye", kind: "script", language: "bash", needs: ["hello"], source: "echo console-says-bye; echo '{\"said\":\"bye\"}'" },
    ] };
    await w.page.getByLabel("Definition (JSON or YAML)").fill(JSON.stringify(def, null, 2));
    await w.page.getByRole("button", { name: "Upload" }).click();
    await w.page.getByRole("status").getByText("Stored greet version 1.").waitFor();
    // A bad input is caught before it is sent: the error names what is wrong and Start is off.
    const input = w.page.getByLabel("Input (JSON, optional)");
    await input.fill("{ not json");
    await w.page.getByText(/^Not valid JSON:/u).waitFor();
    expect(await input.getAttribute("aria-invalid")).toBe("true");
    expect(await w.page.getByRole("button", { name: "Start a run" }).isDisabled()).toBe(true);
    await input.fill('{ "who": "console" }');
    await w.page.getByRole("button", { name: "Start a run" }).click();
    await expect.poll(() => w.page.getByTestId("run-status").innerText(), { timeout: 20_000 }).not.toBe("running");
    // On a failure, say why (the logs hold the step's error and stderr).
    expect(`${await w.page.getByTestId("run-status").innerText()}\n${await w.page.getByTestId("run-logs").innerText()}`).toMatch(/^succeeded\n/u);
    await expect.poll(() => w.page.getByTestId("run-logs").innerText()).toContain("stdout| console-says-bye");
    const logs = await w.page.getByTestId("run-logs").innerText();
    expect(logs).toContain("stdout| console-says-hello");
    expect(logs.indexOf("console-says-hello")).toBeLessThan(logs.indexOf("console-says-bye"));
    expect(await w.page.locator('[data-testid="run-graph"] [data-status="succeeded"]').count()).toBe(2);
    expect(await w.page.locator("svg path[marker-end]").count()).toBe(1);
    await expect.poll(() => w.page.getByTestId("run-table").innerText()).toContain("succeeded");
    await expectNoAxeViolations(w.page);
    await screenshot(w.page, "workflows");
  });

  it("workflows: a running run is cancelled from the console", async () => {
    const token = (await gw.issuer!.issueAccess({ tenant: A, subject: "ann", roles: ["admin"] })).token;
    const def = { name: "slow", steps: [{ id: "wait", kind: "script", language: "bash", timeout_ms: 60_000, source: "sleep 30; echo '{}'" }] };
    const put = await fetch(`${base}/v1/workflows`, { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: JSON.stringify(def) });
    expect(put.status).toBe(201);
    const w = await signIn(A, "ann", "workflows");
    await w.page.getByRole("button", { name: "slow", exact: true }).click();
    await w.page.getByRole("heading", { name: /^slow version 1/u }).waitFor();
    await w.page.getByRole("button", { name: "Start a run" }).click();
    await expect.poll(() => w.page.locator('[data-testid="run-graph"] [data-step="wait"]').getAttribute("data-status"), { timeout: 10_000 }).toBe("running");
    await w.page.getByRole("button", { name: "Cancel run" }).click();
    await expect.poll(() => w.page.getByTestId("run-status").innerText(), { timeout: 10_000 }).toBe("cancelled");
    expect(await w.page.getByRole("button", { name: "Cancel run" }).count()).toBe(0);
    await expect.poll(() => w.page.getByTestId("run-logs").innerText()).toContain("RunCancelled");
  });

  it("dead letters: inspected, redriven from the console and processed; a purge asks first", async () => {
    const w = await signIn(A, "ann", "dead-letters");
    await expect.poll(() => w.page.getByTestId(`dlq-count-${FLAKY}`).innerText()).toBe("1");
    expect(await w.page.getByTestId("dlq-sources").innerText()).not.toContain(`only_${B}`);
    await w.page.getByRole("button", { name: `List ${FLAKY}` }).click();
    await w.page.getByRole("button", { name: /^Inspect \d+$/u }).click();
    const facts = w.page.getByTestId("dead-letter");
    await facts.waitFor();
    expect(await facts.innerText()).toContain(`evt.${A}.m.k1`);
    expect(await facts.innerText()).toMatch(/flaky: .* exists/u);
    await expectNoAxeViolations(w.page);
    await screenshot(w.page, "dead-letters");

    // The cause is fixed; the admin redrives it and the processor's output count goes up by one.
    await unlink(marker);
    expect(await outputsOf(A, "k1")).toBe(5);
    await w.page.getByRole("button", { name: /^Redrive \d+$/u }).click();
    const dialog = w.page.getByRole("dialog", { name: "Redrive dead letters?" });
    await dialog.waitFor();
    await dialog.getByRole("button", { name: "Redrive" }).click();
    await w.page.getByRole("status").getByText("Redrove 1 dead letter(s).").waitFor();
    await waitFor(async () => (await outputsOf(A, "k1")) === 6, 20_000, "the redriven message processed");
    await expect.poll(() => w.page.getByTestId("dlq-sources").innerText(), { timeout: 10_000 }).not.toContain(FLAKY);

    // Purge: Cancel (or Escape) changes nothing; confirming deletes them.
    await w.page.getByRole("button", { name: "Purge junk…" }).click();
    const purge = w.page.getByRole("dialog", { name: "Purge dead letters?" });
    await purge.waitFor();
    await expectNoAxeViolations(w.page);
    await screenshot(w.page, "dead-letters-purge");
    await w.page.keyboard.press("Escape");
    await purge.waitFor({ state: "hidden" });
    expect(await countMessages(nats.nc, STREAMS.dlq, `dlq.${A}.junk`)).toBe(2);
    await w.page.getByRole("button", { name: "Purge junk…" }).click();
    await purge.getByRole("button", { name: "Purge for good" }).click();
    await w.page.getByRole("status").getByText("Purged 2 dead letter(s).").waitFor();
    expect(await countMessages(nats.nc, STREAMS.dlq, `dlq.${A}.junk`)).toBe(0);
    expect(await countMessages(nats.nc, STREAMS.dlq, `dlq.${B}.only_${B}`)).toBe(3);
  });

  it("users: an admin adds a user, changes its roles and deletes it (after confirming)", async () => {
    const w = await signIn(A, "ann", "users");
    await w.page.getByTestId("user-table").getByRole("rowheader", { name: "rita" }).waitFor();
    expect(await w.page.getByTestId("user-table").innerText()).not.toContain("bob");
    await w.page.getByLabel("Username").fill("walt");
    await w.page.getByLabel("Password", { exact: true }).fill(PASSWORD);
    await w.page.getByRole("button", { name: "Add user" }).click();
    await w.page.getByRole("status").getByText("Added walt (reader).").waitFor();
    expect((await gw.users.get(A, "walt"))?.roles).toEqual(["reader"]);
    const row = w.page.getByRole("row").filter({ hasText: "walt" });
    await row.getByRole("checkbox", { name: "writer" }).check();
    await row.getByRole("checkbox", { name: "reader" }).uncheck();
    await row.getByRole("button", { name: "Save roles of walt" }).click();
    await w.page.getByRole("status").getByText(/^walt now has writer/u).waitFor();
    expect((await gw.users.get(A, "walt"))?.roles).toEqual(["writer"]);
    await expectNoAxeViolations(w.page);
    await screenshot(w.page, "users");
    await w.page.getByRole("button", { name: "Delete walt…" }).click();
    await w.page.getByRole("dialog", { name: "Delete walt?" }).getByRole("button", { name: "Delete walt" }).click();
    await w.page.getByRole("status").getByText("Deleted walt; their sessions ended.").waitFor();
    expect(await gw.users.get(A, "walt")).toBeUndefined();
  });

  it("a reader sees no admin controls, and the API refuses the reader's admin calls anyway", async () => {
    writeFileSync(join(dir, "still-broken"), "x");
    await publish(A, "k2", { value: 6, failWhile: join(dir, "still-broken") });
    await waitFor(async () => (await countMessages(nats.nc, STREAMS.dlq, `dlq.${A}.${FLAKY}`)) === 1, 20_000, "a dead letter for the reader to see");
    const w = await signIn(A, "rita", "dead-letters");
    await w.page.getByTestId(`dlq-count-${FLAKY}`).waitFor();
    expect(await w.page.getByRole("link", { name: "Users" }).count()).toBe(0);
    await w.page.getByRole("button", { name: `List ${FLAKY}` }).click();
    await w.page.getByRole("button", { name: /^Inspect \d+$/u }).click();
    await w.page.getByTestId("dead-letter").waitFor();
    expect(await w.page.getByRole("button", { name: /Redrive|Purge/u }).count()).toBe(0);
    await expectNoAxeViolations(w.page);
    await screenshot(w.page, "dead-letters-reader");
    await w.page.getByRole("link", { name: "Workflows" }).click();
    await w.page.getByTestId("workflow-table").getByText("greet").waitFor();
    expect(await w.page.getByText("Upload a definition").count()).toBe(0);
    expect(await w.page.getByRole("button", { name: "Start a run" }).count()).toBe(0);

    expect(await callApiAs(w.page, "POST", "/v1/dlq/redrive", { source: FLAKY })).toEqual({ status: 403, code: "FLEX_FORBIDDEN" });
    expect(await callApiAs(w.page, "POST", "/v1/dlq/purge", { source: FLAKY, confirm: true })).toEqual({ status: 403, code: "FLEX_FORBIDDEN" });
    expect(await callApiAs(w.page, "GET", "/v1/users")).toEqual({ status: 403, code: "FLEX_FORBIDDEN" });
    expect(await callApiAs(w.page, "PATCH", "/v1/users/rita", { roles: ["admin"] })).toEqual({ status: 403, code: "FLEX_FORBIDDEN" });
    expect(await callApiAs(w.page, "DELETE", "/v1/users/ann")).toEqual({ status: 403, code: "FLEX_FORBIDDEN" });
    expect(await callApiAs(w.page, "POST", "/v1/workflows/greet/runs", {})).toEqual({ status: 403, code: "FLEX_FORBIDDEN" });
    // Nothing moved: the dead letter is still there, the users and roles are as they were.
    expect(await countMessages(nats.nc, STREAMS.dlq, `dlq.${A}.${FLAKY}`)).toBe(1);
    expect((await gw.users.get(A, "rita"))?.roles).toEqual(["reader"]);
    expect(await gw.users.get(A, "ann")).toBeDefined();
    expect(existsSync(join(dir, "still-broken"))).toBe(true);
  });

  it("ran every page without a CSP violation or an unexpected console error", async () => {
    for (const w of pages) expect(await w.cspViolations()).toEqual([]);
    // The reader's refused calls are answered 403 on purpose; Chromium logs those loads.
    const unexpected = pages.flatMap((w) => w.errors).filter((e) => !/Failed to load resource: the server responded with a status of 403/u.test(e));
    expect(unexpected).toEqual([]);
  });
});
