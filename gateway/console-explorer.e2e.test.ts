/**
 * The console's event explorer and projections pages in a real headless Chromium against the
 * real gateway (port 0), a real nats-server with authorization on and a real projection
 * engine: an event appended through the API shows in the live tail within 1 s, time travel
 * shows the earlier state beside the current one, a projection query pages, tenant A never
 * sees tenant B's events in the explorer or the tail, a writer (no stream.read) gets neither
 * page, axe finds nothing serious, one screenshot per page.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { genericProjection } from "../projections/index.js";
import type { ProjectionEngine } from "../projections/index.js";
import { callApiAs, expectNoAxeViolations, launchBrowser, queryProjectionRows, screenshot, signInConsole } from "../test/browser.js";
import { expectMeterRowsPage } from "../test/console-pages.js";
import type { TestBrowser, WatchedPage } from "../test/browser.js";
import { seedTenant, tokenFor } from "../test/console-fixtures.js";
import { startProjectionGateway } from "../test/gateway.js";
import type { TestProjectionGateway } from "../test/gateway.js";
import { uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import type { Gateway } from "./index.js";

const A = uniqueName("cea");
const B = uniqueName("ceb");
const PASSWORD = "correct horse battery";
let running: TestProjectionGateway;
let nats: TestNats;
let gw: Gateway;
let engine: ProjectionEngine;
let url: string;
let browser: TestBrowser;
const pages: WatchedPage[] = [];
const tok: Record<string, string> = {};

beforeAll(async () => {
  running = await startProjectionGateway([genericProjection()]);
  ({ nats, gw, engine, url } = running);
  await gw.users.add(A, "ann", PASSWORD, ["admin"]);
  await gw.users.add(A, "wes", PASSWORD, ["writer"]);
  await gw.users.add(B, "bob", PASSWORD, ["admin"]);
  tok.a = await tokenFor(gw, A, ["writer"]);
  tok.b = await tokenFor(gw, B, ["writer"]);
  await seedTenant(nats.nc, A, { events: 30 });
  await seedTenant(nats.nc, B, { events: 12 });
  await append(tok.b!, "secretcat", "b1", [{ type: "BSecret", data: { owner: B } }]);
  browser = await launchBrowser();
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await running?.close();
});

async function append(token: string, category: string, id: string, events: Array<{ type: string; data: unknown }>): Promise<number> {
  const res = await fetch(`${url}/v1/streams/${category}/${id}`, { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: JSON.stringify({ events }) });
  expect(res.status).toBe(201);
  return ((await res.json()) as { seq: number }).seq;
}

async function signIn(tenant: string, username: string, route: string): Promise<WatchedPage> {
  const w = await browser.newPage();
  pages.push(w);
  await signInConsole(w.page, url, { tenant, username, password: PASSWORD }, route);
  return w;
}

describe("console: event explorer", () => {
  it("pages through the tenant's events; an event appended through the API shows in the live tail within 1 s; B's never", async () => {
    const w = await signIn(A, "ann", "events");
    const { page } = w;
    await page.getByRole("heading", { name: "Event explorer" }).waitFor();
    await page.getByLabel("Per page").selectOption("25");
    await page.getByRole("button", { name: "Search" }).click();
    const table = page.getByTestId("events-table");
    await expect.poll(() => table.locator("tbody tr").count()).toBe(25);
    await page.getByRole("button", { name: "Next page" }).click();
    await expect.poll(() => table.locator("caption").innerText()).toContain("(5 on this page)");
    await page.getByRole("button", { name: "Previous page" }).click();
    await expect.poll(() => table.locator("tbody tr").count()).toBe(25);

    await page.getByRole("button", { name: "Start live tail" }).click();
    await expect.poll(() => page.getByTestId("tail-state").innerText()).toBe("live");
    await append(tok.b!, "sensor", "s1", [{ type: "BTailed", data: { owner: B } }]);
    const started = Date.now();
    await append(tok.a!, "sensor", "tail1", [{ type: "TailMe", data: { n: 42 } }]);
    await page.getByTestId("tail").getByText("TailMe").waitFor({ timeout: 1_000 });
    expect(Date.now() - started).toBeLessThan(1_000);
    await page.waitForTimeout(300);
    const body = await page.locator("body").innerText();
    for (const secret of ["BTailed", "BSecret", "secretcat", B]) expect(body).not.toContain(secret);
    await expectNoAxeViolations(page);
    await screenshot(page, "events");
    await page.getByRole("button", { name: "Stop live tail" }).click();
  });

  it("refuses a wildcard category with the coded error, naming the field", async () => {
    const w = await signIn(A, "ann", "events");
    await w.page.getByLabel("Category").fill(">");
    await w.page.getByRole("button", { name: "Search" }).click();
    const alert = w.page.getByRole("alert");
    await expect.poll(() => alert.innerText()).toContain("FLEX_SUBJECT_TOKEN");
    expect(await alert.innerText()).toContain("category");
    // Another tenant's name is only a category of the caller's own: nothing of B's.
    await w.page.getByLabel("Category").fill("secretcat");
    await w.page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => w.page.getByTestId("events-table").innerText()).toContain("No events on this page.");
  });

  it("time travel: the state as of an earlier revision beside the current state", async () => {
    await append(tok.a!, "door", "d1", [
      { type: "Installed", data: { color: "red", open: false } },
      { type: "Opened", data: { open: true } },
      { type: "Painted", data: { color: "blue" } },
    ]);
    const w = await signIn(A, "ann", "events");
    const { page } = w;
    await page.getByLabel("Category").fill("door");
    await page.getByRole("button", { name: "Search" }).click();
    // By keyboard: Enter on the aggregate opens its history and the focus lands on its heading.
    await page.getByRole("button", { name: "History of door/d1" }).first().focus();
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { name: "History of door/d1" }).waitFor();
    await expect.poll(() => page.evaluate("document.activeElement.textContent")).toBe("History of door/d1");
    await expect.poll(() => page.getByTestId("state-current").innerText()).toContain('"blue"');
    await page.getByLabel("State as of revision").selectOption({ label: await page.locator("#as-of option", { hasText: "revision 1:" }).innerText() });
    await expect.poll(() => page.getByTestId("state-as-of").innerText()).toContain('"red"');
    expect(await page.getByTestId("state-as-of").innerText()).toContain('"open": false');
    expect(await page.getByTestId("state-current").innerText()).toContain('"open": true');
    await page.getByLabel("State as of revision").selectOption({ label: await page.locator("#as-of option", { hasText: "revision 2:" }).innerText() });
    await expect.poll(() => page.getByTestId("state-as-of").innerText()).toContain('"open": true');
    expect(await page.getByTestId("state-as-of").innerText()).toContain('"red"');
    await expectNoAxeViolations(page);
    await screenshot(page, "events-history");
  });
});

describe("console: projections", () => {
  it("lists the read models and pages a query with a filter and a sort", async () => {
    const meters = Array.from({ length: 15 }, (_, i) => ({ category: "meter", stream: `m${String(i).padStart(2, "0")}`, type: "Read", data: { kwh: i } }));
    const res = await fetch(`${url}/v1/events`, { method: "POST", headers: { authorization: `Bearer ${tok.a}`, "content-type": "application/json" }, body: JSON.stringify(meters) });
    expect(res.status).toBe(200);
    // generic: one row per aggregate.
    await expect.poll(async () => (await engine.query("generic", { tenant: A, filter: { category: "meter" }, limit: 100 })).rows.length, { timeout: 10_000 }).toBe(15);
    const w = await signIn(A, "ann", "projections");
    const { page } = w;
    await expect.poll(() => page.getByTestId("projections-table").innerText()).toContain("generic");
    expect(await page.locator("body").innerText()).toContain("flexcore projections rebuild");
    await expect.poll(() => page.getByTestId("rows-table").locator("caption").innerText()).toContain("page 1");
    const rows = await queryProjectionRows(page, { perPage: "10", sortBy: "id", filter: { column: "category", value: "meter" } });
    const first = await expectMeterRowsPage(page, rows, 1);
    expect(first).not.toContain("sensor");
    await expectNoAxeViolations(page);
    await screenshot(page, "projections");
    await page.getByRole("button", { name: "Next page" }).click();
    await expectMeterRowsPage(page, rows, 2);
    await page.getByRole("button", { name: "Previous page" }).click();
    await expect.poll(() => rows.locator("caption").innerText()).toContain("page 1, 10 rows");
    // Descending turns the order round.
    await page.getByLabel("Descending").check();
    await page.getByRole("button", { name: "Run query" }).click();
    await expect.poll(() => rows.locator("tbody tr").first().innerText()).toContain("m14");
    expect(await page.locator("body").innerText()).not.toContain(B);
  });
});

describe("console: roles", () => {
  it("a writer (no stream.read) gets neither the explorer nor its API", async () => {
    const w = await signIn(A, "wes", "events");
    await w.page.getByRole("heading", { name: "Not found" }).waitFor();
    expect(await w.page.getByRole("link", { name: "Event explorer" }).count()).toBe(0);
    expect((await callApiAs(w.page, "GET", "/v1/events")).status).toBe(403);
  });

  it("ran every page without a CSP violation or an unexpected console error", async () => {
    for (const w of pages) expect(await w.cspViolations()).toEqual([]);
    // The wildcard category (400) and the writer's refused call (403) are answered so on purpose.
    const unexpected = pages.flatMap((w) => w.errors).filter((e) => !/Failed to load resource: the server responded with a status of 40[03]/u.test(e));
    expect(unexpected).toEqual([]);
  });
});
