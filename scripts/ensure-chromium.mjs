#!/usr/bin/env node
// Makes sure a Chromium is there for the console's browser tests (gateway/console.e2e.test.ts,
// driven by playwright-core with an executable path: playwright's own browser downloads are
// never used). CHROMIUM_PATH wins; else /usr/bin/chromium. When it is missing and we are root
// on Debian or Ubuntu with apt-get, it installs Debian's `chromium` package; otherwise it
// prints how to install it and exits 0, so the rest of the suite runs and the browser tests
// fail with the same message (test/browser.ts) rather than being skipped.
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

/** Where Debian's package puts it. */
export const DEFAULT_CHROMIUM = "/usr/bin/chromium";

/** The Chromium the tests use: `CHROMIUM_PATH`, else /usr/bin/chromium. */
export function chromiumPath(env = process.env) {
  return env.CHROMIUM_PATH || DEFAULT_CHROMIUM;
}

function executable(path) {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Whether the Chromium of {@link chromiumPath} can be run. */
export function hasChromium(env = process.env) {
  return executable(chromiumPath(env));
}

/** What to do when it is missing. */
export function chromiumInstallHint(env = process.env) {
  return [
    `flexcore: no Chromium at ${chromiumPath(env)}${env.CHROMIUM_PATH ? " (CHROMIUM_PATH)" : ""}; the console's browser tests need one.`,
    "Install it one of these ways, then run the tests again:",
    "  - Debian/Ubuntu: sudo apt-get install -y chromium   (or run `npm test` as root: scripts/ensure-chromium.mjs installs it)",
    "  - Fedora: sudo dnf install chromium; Arch: sudo pacman -S chromium; macOS: brew install --cask chromium",
    "  - or point CHROMIUM_PATH at any Chromium or Chrome binary (version 115 or newer)",
  ].join("\n");
}

function debianLike() {
  if (existsSync("/etc/debian_version")) return true;
  try {
    return /^(ID|ID_LIKE)=.*\b(debian|ubuntu)\b/mu.test(readFileSync("/etc/os-release", "utf8"));
  } catch {
    return false;
  }
}

function main() {
  if (hasChromium()) return;
  const log = (line) => process.stderr.write(`flexcore: ${line}\n`);
  const root = typeof process.getuid === "function" && process.getuid() === 0;
  const apt = spawnSync("sh", ["-c", "command -v apt-get"], { stdio: "ignore" }).status === 0;
  if (!process.env.CHROMIUM_PATH && root && apt && debianLike()) {
    log("installing Debian's chromium for the console's browser tests (apt-get install -y chromium)");
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    const update = spawnSync("apt-get", ["update"], { stdio: "inherit", env });
    const install = update.status === 0 ? spawnSync("apt-get", ["install", "-y", "--no-install-recommends", "chromium"], { stdio: "inherit", env }) : update;
    if (install.status === 0 && hasChromium()) return;
    log("apt-get could not install chromium");
  }
  process.stderr.write(`${chromiumInstallHint()}\n`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main();
