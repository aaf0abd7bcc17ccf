// Assertions on console pages shared by the browser tests (vitest's expect: not for benches,
// which import test/browser.ts).
import type { Locator, Page } from "playwright-core";
import { expect } from "vitest";

/**
 * The rows table holds the 15 `meter` aggregates (m00–m14) sorted by id, 10 a page: page 1
 * (m00–m09) or page 2, the last (m10–m14, *Next page* disabled). Answers the table body's text.
 */
export async function expectMeterRowsPage(page: Page, rows: Locator, n: 1 | 2): Promise<string> {
  await expect.poll(() => rows.locator("caption").innerText()).toContain(n === 1 ? "page 1, 10 rows" : "page 2, 5 rows");
  const text = await rows.locator("tbody").innerText();
  const [has, hasNot] = n === 1 ? [["m00", "m09"], "m10"] : [["m10", "m14"], "m09"];
  for (const id of has) expect(text).toContain(id);
  expect(text).not.toContain(hasNot);
  if (n === 2) expect(await page.getByRole("button", { name: "Next page" }).isDisabled()).toBe(true);
  return text;
}
