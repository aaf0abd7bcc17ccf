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

// Untrusted script steps run only sandboxed: bubblewrap, and pasta (Debian package passt)
// for steps with network: true. Without them such steps are refused (`flexcore doctor` says
// why). Install both on a fresh Debian/Ubuntu box when running as root.
const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
const SANDBOX_PACKAGES = [
  ["/usr/bin/bwrap", "bubblewrap", "untrusted script steps are refused"],
  ["/usr/bin/pasta", "passt", "script steps with network: true are refused"],
];
const missing = SANDBOX_PACKAGES.filter(([bin]) => !existsSync(bin));
if (missing.length > 0) {
  const names = missing.map(([, pkg]) => pkg);
  if (isRoot && existsSync("/usr/bin/apt-get")) {
    console.error(`flexcore: installing ${names.join(" and ")} with apt-get to sandbox script steps...`);
    const install = () => execFileSync("apt-get", ["install", "-y", "-qq", ...names], { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    try {
      install();
    } catch {
      try {
        execFileSync("apt-get", ["update", "-qq"], { stdio: "inherit" });
        install();
      } catch (err) {
        console.error(`flexcore: apt-get could not install ${names.join(" and ")} (${err.message})`);
      }
    }
  }
  for (const [bin, pkg, effect] of SANDBOX_PACKAGES) {
    if (!existsSync(bin)) console.error(`flexcore: ${pkg} (\`${bin}\`) is not installed: ${effect}. Install it: sudo apt-get install -y ${pkg}`);
  }
}
// pasta opens /dev/net/tun as the step's user: a node left at 0600 (some VMs and containers
// without udev) refuses it. As root, set udev's own default (0666: opening it creates nothing
// without CAP_NET_ADMIN in a namespace of one's own); otherwise say how.
if (existsSync("/usr/bin/pasta") && existsSync("/dev/net/tun")) {
  const { chmodSync, statSync } = await import("node:fs");
  try {
    if ((statSync("/dev/net/tun").mode & 0o006) !== 0o006) {
      if (isRoot) {
        console.error("flexcore: /dev/net/tun had mode 0600; setting udev's default 0666 so networked script steps (pasta) can run");
        chmodSync("/dev/net/tun", 0o666);
      } else {
        console.error("flexcore: /dev/net/tun is not usable by other users (mode is not 0666, the usual udev default): script steps with network: true are refused. Fix: sudo chmod 0666 /dev/net/tun");
      }
    }
  } catch (err) {
    console.error(`flexcore: could not check /dev/net/tun (${err.message}); flexcore doctor reports what pasta says`);
  }
}
