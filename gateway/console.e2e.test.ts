/**
 * The console in a real headless Chromium against the real gateway (port 0) and a real
 * nats-server with authorization on: sign-in, the overview's live figures and charts,
 * refresh of an expired access token, sign-out; a reader sees no admin controls and the API
 * refuses them anyway; tenant A's console never shows tenant B's figures; the strict CSP
 * holds with no violation or console error; axe finds nothing serious; one screenshot per page.
 */
import { jetstream } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeEvent } from "../streams/index.js";
import { callApiAs, changeConsoleAccessToken, expectNoAxeViolations, gotoConsole, launchBrowser, readConsoleSession, screenshot, signInConsole } from "../test/browser.js";
import type { TestBrowser, WatchedPage } from "../test/browser.js";
import { seedTenant } from "../test/console-fixtures.js";
import { startTestGateway } from "../test/gateway.js";
import type { TestGateway } from "../test/gateway.js";
import { uniqueName } from "../test/nats-server.js";
import { CONSOLE_CSP } from "./routes/console.js";

const A = uniqueName("bra");
const B = uniqueName("brb");
const B_SOURCE = `only_${B}`;
const PASSWORD = "correct horse battery";
let t: TestGateway;
let browser: TestBrowser;
const pages: WatchedPage[] = [];

beforeAll(async () => {
  t = await startTestGateway();
  await t.gw.users.add(A, "ann", PASSWORD, ["admin"]);
  await t.gw.users.add(A, "rita", PASSWORD, ["reader"]);
  await t.gw.users.add(B, "bob", PASSWORD, ["admin"]);
  await seedTenant(t.nats.nc, A, { events: 25, derived: 3, deadLetters: { anomaly: 2 } });
  await seedTenant(t.nats.nc, B, { events: 4321, derived: 77, deadLetters: { [B_SOURCE]: 9 } });
  browser = await launchBrowser();
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await t?.close();
});

async function open(): Promise<WatchedPage> {
  const w = await browser.newPage();
  pages.push(w);
  return w;
}

const signIn = (w: WatchedPage, tenant: string, username: string): Promise<void> => signInConsole(w.page, t.url, { tenant, username, password: PASSWORD });

const text = (w: WatchedPage, id: string): Promise<string> => w.page.getByTestId(id).innerText();

describe("console", () => {
  it("serves the sign-in page under the CSP; a wrong password shows the coded error", async () => {
    const w = await open();
    const res = await gotoConsole(w.page, t.url);
    expect(res?.headers()["content-security-policy"]).toBe(CONSOLE_CSP);
    await w.page.getByRole("heading", { name: "FlexCore console" }).waitFor();
    await expectNoAxeViolations(w.page);
    await screenshot(w.page, "sign-in");
    await w.page.getByLabel("Tenant").fill(A);
    await w.page.getByLabel("Username").fill("ann");
    await w.page.getByLabel("Password").fill("wrong");
    await w.page.getByRole("button", { name: "Sign in" }).click();
    await expect(w.page.getByRole("alert").innerText()).resolves.toContain("FLEX_INVALID_CREDENTIALS");
  });

  it("signs an admin in: tenant and user shown, the overview counts and charts the tenant's events live", async () => {
    const w = await open();
    await signIn(w, A, "ann");
    expect(await text(w, "tenant")).toBe(A);
    expect(await text(w, "user")).toBe("ann");
    await w.page.locator('.plot[data-drawn="true"]').nth(1).waitFor();
    expect(await w.page.locator(".plot canvas").count()).toBe(2);
    await expect.poll(() => text(w, "events")).toBe("25");
    expect(await text(w, "derived")).toBe("3");
    expect(await text(w, "dead-letters")).toBe("2");
    await w.page.getByRole("link", { name: "Users", exact: true }).waitFor();
    // Events arriving now show up in the count and as a rate above zero.
    const js = jetstream(t.nats.nc);
    for (let i = 0; i < 10; i++) {
      const e = encodeEvent({ id: `${A}-live-${i}`, type: "Reading", data: { i } });
      await js.publish(`evt.${A}.sensor.live`, e.data, { headers: e.headers });
    }
    await expect.poll(() => text(w, "events"), { timeout: 6_000 }).toBe("35");
    expect(Number.parseFloat(await text(w, "ingest-rate"))).toBeGreaterThan(0);
    await expectNoAxeViolations(w.page);
    await screenshot(w.page, "overview");
    // Keyboard: a nav link opens its page with Enter, and the focus moves to the page's heading.
    await w.page.getByRole("link", { name: "Event explorer", exact: true }).focus();
    await w.page.keyboard.press("Enter");
    await w.page.getByRole("heading", { name: "Event explorer" }).waitFor();
    await expect.poll(() => w.page.evaluate("document.activeElement.textContent")).toBe("Event explorer");
    await expectNoAxeViolations(w.page);
  });

  it("refreshes an expired access token without asking the user again, and signs out for good", async () => {
    const w = await open();
    await signIn(w, A, "ann");
    const before = (await readConsoleSession(w.page))!;
    // A token the gateway refuses (401) stands for an expired one.
    await changeConsoleAccessToken(w.page, (token) => `expired.${token}`);
    await w.page.reload();
    await expect.poll(() => text(w, "events")).toBe("35");
    const after = (await readConsoleSession(w.page))!;
    expect(after.accessToken).not.toBe(before.accessToken);
    expect(after.accessToken.startsWith("expired.")).toBe(false);
    await w.page.getByRole("button", { name: "Sign out" }).click();
    await w.page.getByLabel("Password").waitFor();
    expect(await readConsoleSession(w.page)).toBeNull();
    const me = await fetch(`${t.url}/v1/auth/me`, { headers: { authorization: `Bearer ${after.accessToken}` } });
    expect(me.status).toBe(401);
  });

  it("shows a reader no admin controls, and the API refuses the reader's admin call anyway", async () => {
    const w = await open();
    await signIn(w, A, "rita");
    await w.page.locator('.plot[data-drawn="true"]').first().waitFor();
    expect(await text(w, "roles")).toBe("reader");
    expect(await w.page.getByRole("link", { name: /Users/u }).count()).toBe(0);
    await gotoConsole(w.page, t.url, "users");
    await w.page.getByRole("heading", { name: "Not found" }).waitFor();
    const status = await callApiAs(w.page, "GET", "/v1/users");
    expect(status).toEqual({ status: 403, code: "FLEX_FORBIDDEN" });
    await screenshot(w.page, "overview-reader");
  });

  it("never shows tenant A's console tenant B's figures, side by side in one browser", async () => {
    const a = await open();
    const b = await open();
    await signIn(a, A, "ann");
    await signIn(b, B, "bob");
    await expect.poll(() => text(b, "events")).toBe("4,321");
    await expect.poll(() => text(a, "events")).toBe("35");
    const aText = await a.page.locator("body").innerText();
    expect(aText).not.toContain(B);
    expect(aText).not.toContain(B_SOURCE);
    expect(aText).not.toContain("4,321");
    expect(await a.page.getByTestId("dlq-table").innerText()).toContain("anomaly");
    expect(await text(a, "tenant")).toBe(A);
    expect(await b.page.getByTestId("dlq-table").innerText()).toContain(B_SOURCE);
  });

  it("would see a violation: the CSP refuses an inline script and the harness reports it", async () => {
    const w = await browser.newPage();
    await gotoConsole(w.page, t.url);
    await w.page.evaluate(`(() => { const s = document.createElement("script"); s.textContent = "window.__ran = true"; document.body.append(s); })()`);
    await expect.poll(() => w.cspViolations()).toEqual([expect.stringMatching(/^script-src/u)]);
    expect(await w.page.evaluate("window.__ran === true")).toBe(false);
    await w.page.close();
  });

  it("would see an accessibility failure: axe fails on a nameless button", async () => {
    const w = await browser.newPage();
    await gotoConsole(w.page, t.url);
    await w.page.evaluate(`document.querySelector("form").append(document.createElement("button"))`);
    await expect(expectNoAxeViolations(w.page)).rejects.toThrow(/button-name \(critical\)/u);
    await w.page.close();
  });

  it("ran every page without a CSP violation or a console error", async () => {
    for (const w of pages) {
      if (w.page.isClosed()) continue;
      expect(await w.cspViolations()).toEqual([]);
    }
    // The refused password, the reader's refused call and the stale token are answered 401/403 on purpose; Chromium logs those loads.
    const unexpected = pages.flatMap((w) => w.errors).filter((e) => !/Failed to load resource: the server responded with a status of 40[13]/u.test(e));
    expect(unexpected).toEqual([]);
    expect(pages.flatMap((w) => w.errors).some((e) => /Content Security Policy/iu.test(e))).toBe(false);
  });
});
