/**
 * Headless Chromium for the console's tests: playwright-core drives the system's Chromium
 * (`CHROMIUM_PATH`, else /usr/bin/chromium; `scripts/ensure-chromium.mjs` installs it in CI),
 * never a downloaded browser. A missing Chromium fails the test with how to install it.
 */
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import type { BrowserContext, Locator, Page, Response as PwResponse } from "playwright-core";

type ChromiumSetup = typeof import("../scripts/ensure-chromium.mjs");
// scripts/ensure-chromium.mjs (run by `pretest`) says where Chromium is and how to install it;
// loaded from the package's root, from the sources (tests) as from dist/ (the bench).
const setup = (): Promise<ChromiumSetup> =>
  import(new URL(import.meta.url.endsWith(".ts") ? "../scripts/ensure-chromium.mjs" : "../../scripts/ensure-chromium.mjs", import.meta.url).href) as Promise<ChromiumSetup>;

/** Flags for a quiet, offline headless Chromium (the machine notes' list). */
export const CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

/** Where screenshots go (gitignored). */
export const ARTIFACTS = resolve(import.meta.dirname, import.meta.url.endsWith(".ts") ? ".." : "../..", "test-artifacts", "console");

/** A browser with a fresh profile; `close` deletes the profile. */
export interface TestBrowser extends AsyncDisposable {
  readonly context: BrowserContext;
  /** A new tab whose CSP violations, page errors and console errors are recorded. */
  newPage(): Promise<WatchedPage>;
  close(): Promise<void>;
}

/** A tab and what went wrong in it. */
export interface WatchedPage {
  readonly page: Page;
  /** Console errors and uncaught page errors, in order. */
  readonly errors: string[];
  /** CSP violations the page reported (`securitypolicyviolation` events). */
  cspViolations(): Promise<string[]>;
}

export async function launchBrowser(): Promise<TestBrowser> {
  const { chromiumInstallHint, chromiumPath, hasChromium } = await setup();
  if (!hasChromium()) throw new Error(chromiumInstallHint());
  const profile = await mkdtemp(join(tmpdir(), "flexcore-chromium-"));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: chromiumPath(),
      headless: true,
      chromiumSandbox: false,
      args: CHROMIUM_FLAGS.filter((f) => f !== "--headless" && f !== "--no-sandbox"),
      viewport: { width: 1280, height: 860 },
      timeout: 20_000,
    });
  } catch (err) {
    await rm(profile, { recursive: true, force: true });
    throw err;
  }
  // Recorded from before the page's own script runs; injected by the driver, so the page's CSP does not apply to it.
  await context.addInitScript({
    content: 'window.__cspViolations = []; document.addEventListener("securitypolicyviolation", (e) => window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI));',
  });
  const close = async (): Promise<void> => {
    await context.close().catch(() => undefined);
    await rm(profile, { recursive: true, force: true });
  };
  return {
    context,
    async newPage() {
      const page = await context.newPage();
      const errors: string[] = [];
      page.on("console", (m) => {
        if (m.type() === "error") errors.push(`${m.text()} (${m.location().url})`);
      });
      page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
      return {
        page,
        errors,
        cspViolations: () => page.evaluate(() => (globalThis as unknown as { __cspViolations?: string[] }).__cspViolations ?? []),
      };
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** Opens the console of the gateway at `base` (`#/<route>` when given) and waits for it to render. */
export async function gotoConsole(page: Page, base: string, route = ""): Promise<PwResponse | null> {
  const res = await page.goto(`${base}/console/${route ? `#/${route}` : ""}`, { waitUntil: "load" });
  await page.locator("#app > *").first().waitFor();
  return res;
}

let axeSource: string | undefined;

/** Runs axe-core on the page and fails on serious or critical violations, naming each rule and element. */
export async function expectNoAxeViolations(page: Page): Promise<void> {
  axeSource ??= await readFile(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
  // Evaluated by the driver (not a <script> tag), which the page's CSP rightly would refuse.
  await page.evaluate(axeSource);
  const violations = await page.evaluate<Array<{ id: string; impact: string | null; help: string; targets: string[] }>>(
    `axe.run(document, { resultTypes: ["violations"] }).then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(" ")) })))`,
  );
  const bad = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length > 0) throw new Error(`axe: ${bad.length} serious or critical violation(s):\n${bad.map((v) => `  ${v.id} (${v.impact}): ${v.help} at ${v.targets.join(", ")}`).join("\n")}`);
}

/** Saves a full-page screenshot as `test-artifacts/console/<name>.png`; returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  await mkdir(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** The key under which the console keeps its session in the tab's `sessionStorage` (gateway/console/session.ts). */
export const CONSOLE_SESSION_KEY = "flexcore.console.session";

/** A console page opened by clicking its navigation link (named `link` exactly), then waiting for its `<h1>` of the same name. */
export interface ConsoleNavLink {
  readonly link: string;
}

/**
 * Opens the console at `base` in `page`, signs in as `username` of `tenant` and waits for the
 * signed-in layout (the tenant shown in the header); then opens `route` when given: `#/<route>`
 * by its URL, or a {@link ConsoleNavLink} by clicking the link as a user would.
 */
export async function signInConsole(page: Page, base: string, user: { readonly tenant: string; readonly username: string; readonly password: string }, route?: string | ConsoleNavLink): Promise<void> {
  await gotoConsole(page, base);
  await page.getByLabel("Tenant").fill(user.tenant);
  await page.getByLabel("Username").fill(user.username);
  await page.getByLabel("Password").fill(user.password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("tenant").waitFor();
  if (typeof route === "string" && route) await gotoConsole(page, base, route);
  else if (typeof route === "object") {
    await page.getByRole("link", { name: new RegExp(`^${route.link}$`, "u") }).click();
    await page.locator("h1", { hasText: route.link }).waitFor();
  }
}

/** The session the console keeps in the tab's `sessionStorage`, or `null` when signed out. */
export async function readConsoleSession(page: Page): Promise<{ accessToken: string } | null> {
  return page.evaluate<{ accessToken: string } | null>(`JSON.parse(sessionStorage.getItem(${JSON.stringify(CONSOLE_SESSION_KEY)}))`);
}

/** Replaces the stored session's access token with `change(token)` (e.g. to stand for an expired one). */
export async function changeConsoleAccessToken(page: Page, change: (token: string) => string): Promise<void> {
  const s = await readConsoleSession(page);
  if (s === null) throw new Error("changeConsoleAccessToken: the tab has no console session (not signed in)");
  await page.evaluate(`sessionStorage.setItem(${JSON.stringify(CONSOLE_SESSION_KEY)}, ${JSON.stringify(JSON.stringify({ ...s, accessToken: change(s.accessToken) }))})`);
}

/**
 * On an open projection query (the `rows-table`), sets the page size, the sort column and one
 * equality filter, runs the query and answers the rows table.
 */
export async function queryProjectionRows(page: Page, query: { readonly perPage: string; readonly sortBy: string; readonly filter: { readonly column: string; readonly value: string } }): Promise<Locator> {
  const rows = page.getByTestId("rows-table");
  await page.getByLabel("Rows per page").selectOption(query.perPage);
  await page.getByLabel("Sort by").selectOption(query.sortBy);
  await page.getByRole("button", { name: "Add filter" }).click();
  await page.getByLabel("Column").fill(query.filter.column);
  await page.getByLabel("Value").fill(query.filter.value);
  await page.getByRole("button", { name: "Run query" }).click();
  return rows;
}

/**
 * Calls the gateway's API from the tab with the signed-in user's own access token, as the
 * console stores it: what a user could do by hand in the browser's devtools. Answers the
 * status and the error's `code`, if any.
 */
export async function callApiAs(page: Page, method: string, path: string, body?: unknown): Promise<{ status: number; code: string | undefined }> {
  return page.evaluate<{ status: number; code: string | undefined }>(`(async () => {
    const s = JSON.parse(sessionStorage.getItem(${JSON.stringify(CONSOLE_SESSION_KEY)}));
    const body = ${JSON.stringify(body === undefined ? null : JSON.stringify(body))};
    const headers = { authorization: "Bearer " + s.accessToken };
    if (body !== null) headers["content-type"] = "application/json";
    const r = await fetch(${JSON.stringify(`..${path}`)}, { method: ${JSON.stringify(method)}, headers, ...(body !== null ? { body } : {}) });
    const j = await r.json().catch(() => ({}));
    return { status: r.status, code: j.error ? j.error.code : undefined };
  })()`);
}
