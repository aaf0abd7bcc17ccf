#!/usr/bin/env node
// Makes sure `nats-server` is installed before start/test/bench: installs it with apt-get
// on Debian/Ubuntu when running as root, otherwise stops with instructions.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

const bin = process.env.NATS_SERVER_BIN ?? "nats-server";
const MIN = [2, 9, 10];

function version() {
  const r = spawnSync(bin, ["--version"], { encoding: "utf8" });
  if (r.error || r.status !== 0) return undefined;
  const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(`${r.stdout}${r.stderr}`);
  return m ? m.slice(1, 4).map(Number) : undefined;
}

function older(v, min) {
  for (let i = 0; i < 3; i++) if (v[i] !== min[i]) return v[i] < min[i];
  return false;
}

let v = version();
if (!v) {
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  if (isRoot && existsSync("/usr/bin/apt-get") && !process.env.NATS_SERVER_BIN) {
    console.error("flexcore: nats-server is not installed; installing it with apt-get (Debian package nats-server)...");
    try {
      execFileSync("apt-get", ["update", "-qq"], { stdio: "inherit" });
      execFileSync("apt-get", ["install", "-y", "-qq", "nats-server"], { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    } catch (err) {
      console.error(`flexcore: apt-get could not install nats-server: ${err.message}`);
    }
    v = version();
  }
}
if (!v) {
  console.error(
    [
      `flexcore: nats-server is required but \`${bin}\` was not found.`,
      "Install it, then run the command again:",
      "  Debian/Ubuntu:  sudo apt-get install -y nats-server",
      "  macOS:          brew install nats-server",
      "  elsewhere:      a release binary from the NATS project on your PATH (or set NATS_SERVER_BIN)",
      "Or point FlexCore at a running server with NATS_URL=nats://host:4222.",
    ].join("\n"),
  );
  process.exit(1);
}
if (older(v, MIN)) {
  console.error(`flexcore: nats-server ${v.join(".")} is too old; FlexCore needs ${MIN.join(".")} or newer.`);
  process.exit(1);
}

// Script steps run sandboxed with bubblewrap when it is installed (plain rlimited child
// processes otherwise; `flexcore doctor` says so). Install it on a fresh Debian/Ubuntu box.
if (!existsSync("/usr/bin/bwrap")) {
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  if (isRoot && existsSync("/usr/bin/apt-get")) {
    console.error("flexcore: bubblewrap is not installed; installing it with apt-get (Debian package bubblewrap) to sandbox script steps...");
    try {
      execFileSync("apt-get", ["install", "-y", "-qq", "bubblewrap"], { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    } catch {
      try {
        execFileSync("apt-get", ["update", "-qq"], { stdio: "inherit" });
        execFileSync("apt-get", ["install", "-y", "-qq", "bubblewrap"], { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
      } catch (err) {
        console.error(`flexcore: apt-get could not install bubblewrap (${err.message}); script steps will run without the sandbox`);
      }
    }
  } else {
    console.error("flexcore: bubblewrap (`bwrap`) is not installed: script steps run as plain child processes. Install it: sudo apt-get install -y bubblewrap");
  }
}
