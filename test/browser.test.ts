import { afterEach, describe, expect, it } from "vitest";
import { launchBrowser } from "./browser.js";

describe("launchBrowser", () => {
  const saved = process.env.CHROMIUM_PATH;
  afterEach(() => {
    if (saved === undefined) delete process.env.CHROMIUM_PATH;
    else process.env.CHROMIUM_PATH = saved;
  });

  it("fails (never skips) with how to install Chromium when there is none", async () => {
    process.env.CHROMIUM_PATH = "/nonexistent/chromium";
    await expect(launchBrowser()).rejects.toThrow(/no Chromium at \/nonexistent\/chromium \(CHROMIUM_PATH\)[\s\S]*apt-get install -y chromium/u);
  });
});
