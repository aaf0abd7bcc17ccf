/**
 * The operator's rebuild in the console, in a real headless Chromium against the real
 * gateway (port 0), a real projection engine answering on NATS and a real nats-server with
 * authorization on: an operator confirms in a dialog (axe passes with it open), follows the
 * progress bar to the new generation; an admin sees no Rebuild button and the API refuses it.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { genericProjection } from "../projections/index.js";
import type { ProjectionEngine } from "../projections/index.js";
import { callApiAs, expectNoAxeViolations, gotoConsole, launchBrowser, screenshot, signInConsole } from "../test/browser.js";
import type { TestBrowser, WatchedPage } from "../test/browser.js";
import { seedTenant } from "../test/console-fixtures.js";
import { startProjectionGateway } from "../test/gateway.js";
import type { TestProjectionGateway } from "../test/gateway.js";
import { uniqueName } from "../test/nats-server.js";
import type { Gateway } from "./index.js";

const A = uniqueName("cra");
const PASSWORD = "correct horse battery";
let running: TestProjectionGateway;
let gw: Gateway;
let engine: ProjectionEngine;
let url: string;
let browser: TestBrowser;
const pages: WatchedPage[] = [];

beforeAll(async () => {
  running = await startProjectionGateway([genericProjection()], { control: true, seed: ({ nc }) => seedTenant(nc, A, { events: 500 }) });
  ({ gw, engine, url } = running);
  await gw.users.add(A, "olga", PASSWORD, ["operator", "reader"]);
  await gw.users.add(A, "ann", PASSWORD, ["admin"]);
  browser = await launchBrowser();
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await running?.close();
});

async function open(username: string): Promise<WatchedPage> {
  const w = await browser.newPage();
  pages.push(w);
  await signInConsole(w.page, url, { tenant: A, username, password: PASSWORD }, "projections");
  await expect.poll(() => w.page.getByTestId("projections-table").innerText()).toContain("generic");
  return w;
}

describe("console: the operator's rebuild", () => {
  it("an operator confirms in a dialog and follows the progress to the new generation", async () => {
    const before = (await engine.status("generic"))[0]!.generation;
    const { page } = await open("olga");
    await page.getByRole("button", { name: "Rebuild generic" }).click();
    const dialog = page.getByRole("dialog");
    await dialog.waitFor();
    expect(await dialog.innerText()).toContain("every tenant's queries are served from the old copy");
    // The safe choice has the focus first.
    await expect.poll(() => page.evaluate("document.activeElement.textContent")).toBe("Cancel");
    await expectNoAxeViolations(page);
    await screenshot(page, "projections-rebuild-confirm");
    // By keyboard: Tab to the confirming button, Enter.
    await page.keyboard.press("Tab");
    await expect.poll(() => page.evaluate("document.activeElement.textContent")).toBe("Rebuild generic");
    await page.keyboard.press("Enter");
    const status = page.getByTestId("rebuild-status");
    await expect.poll(() => status.innerText(), { timeout: 30_000 }).toContain(`generation ${before + 1}`);
    // One instance runs here: its copy is the one swapped.
    expect(await status.innerText()).toContain("Done: 1 copy swapped;");
    expect(await page.locator("progress#rebuild-progress").count()).toBe(1);
    const [value, max] = await page.locator("progress#rebuild-progress").evaluate((p) => [(p as unknown as { value: number }).value, (p as unknown as { max: number }).max]);
    expect(value).toBe(max);
    expect((await engine.status("generic"))[0]!.generation).toBe(before + 1);
    // The table shows the new generation too.
    await expect.poll(() => page.getByTestId("projections-table").innerText()).toContain(`generation ${before + 1}`);
    await expectNoAxeViolations(page);
    await screenshot(page, "projections-rebuild-done");
  }, 60_000);

  it("Cancel (or Escape) rebuilds nothing", async () => {
    const before = (await engine.status("generic"))[0]!.generation;
    const { page } = await open("olga");
    await page.getByRole("button", { name: "Rebuild generic" }).click();
    await page.getByRole("dialog").waitFor();
    await page.keyboard.press("Escape");
    await expect.poll(() => page.getByRole("dialog").count()).toBe(0);
    expect(await page.getByTestId("rebuild").count()).toBe(0);
    expect((await engine.status("generic"))[0]!.generation).toBe(before);
  });

  it("an admin sees no Rebuild button, and the API refuses the admin's rebuild anyway", async () => {
    const before = (await engine.status("generic"))[0]!.generation;
    const { page } = await open("ann");
    expect(await page.getByRole("button", { name: /^Rebuild/u }).count()).toBe(0);
    expect(await page.getByTestId("projections-table").innerText()).not.toContain("Rebuild");
    const r = await callApiAs(page, "POST", "/v1/projections/generic/rebuild", {});
    expect(r).toEqual({ status: 403, code: "FLEX_FORBIDDEN" });
    expect((await engine.status("generic"))[0]!.generation).toBe(before);
    // The Users page offers no operator role and leaves the operator's account alone; the API refuses anyway.
    await gotoConsole(page, url, "users");
    const table = page.getByTestId("user-table");
    await expect.poll(() => table.innerText()).toContain("olga");
    expect(await table.innerText()).toContain("managed by the deployment's operator");
    expect(await page.getByRole("button", { name: "Delete olga…" }).count()).toBe(0);
    expect(await page.getByRole("checkbox", { name: "operator" }).count()).toBe(0);
    expect(await callApiAs(page, "PATCH", "/v1/users/ann", { roles: ["admin", "operator"] })).toEqual({ status: 403, code: "FLEX_ROLE_NOT_GRANTABLE" });
    expect(await callApiAs(page, "DELETE", "/v1/users/olga")).toEqual({ status: 403, code: "FLEX_ROLE_NOT_GRANTABLE" });
    expect((await gw.users.get(A, "olga"))?.roles).toEqual(["operator", "reader"]);
    expect((await gw.users.get(A, "ann"))?.roles).toEqual(["admin"]);
  });

  it("ran without a CSP violation or an unexpected console error", async () => {
    for (const w of pages) expect(await w.cspViolations()).toEqual([]);
    const unexpected = pages.flatMap((w) => w.errors).filter((e) => !/Failed to load resource: the server responded with a status of 403/u.test(e));
    expect(unexpected).toEqual([]);
  });
});
