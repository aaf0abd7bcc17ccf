#!/usr/bin/env node
// Makes sure the nats-server FlexCore runs is there before start/test/bench. It resolves the
// binary exactly as streams/server.ts does (scripts/nats-server-pin.mjs): NATS_SERVER_BIN,
// else the pinned server in the per-user cache, else a nats-server on PATH at the minimum
// or newer. When none fits, it fetches the pinned server as its Debian package into the
// cache (apt-get with its own temporary sources: the system's package sources are not
// touched), checks the package's SHA-256 and extracts the binary. It writes nothing else:
// the cache path is where streams/server.ts looks.
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import {
  binaryVersion,
  compareVersions,
  MIN_VERSION,
  PINNED_DEB,
  PINNED_VERSION,
  pinnedBinary,
  pinnedDir,
  RELEASE_URL,
  resolveNatsServer,
} from "./nats-server-pin.mjs";

const log = (line) => process.stderr.write(`flexcore: ${line}\n`);

function has(command) {
  return spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0;
}

function howToInstall(reason) {
  const again = process.env.NATS_SERVER_BIN ? "unset NATS_SERVER_BIN and run this command again" : "run this command again";
  return [
    `flexcore: ${reason}`,
    `FlexCore runs nats-server ${PINNED_VERSION} (${MIN_VERSION} or newer is accepted). Get it one of these ways, then run the command again:`,
    `  - on Debian/Ubuntu (amd64) with apt-get, ${again}: it puts the pinned server in ${pinnedDir()}`,
    `  - download the release binary for your platform from ${RELEASE_URL},`,
    `    unpack it and set NATS_SERVER_BIN=/path/to/nats-server (or copy it to ${pinnedBinary()})`,
    "  - or point FlexCore at a running server (2.12+) with NATS_URL=nats://host:4222",
  ].join("\n");
}

/** Extracts `usr/sbin/nats-server` of a .deb into `outDir`, with dpkg-deb or else ar + tar. */
function extractDeb(deb, outDir) {
  if (has("dpkg-deb")) {
    execFileSync("dpkg-deb", ["-x", deb, outDir], { stdio: ["ignore", "ignore", "inherit"] });
    return;
  }
  const work = mkdtempSync(join(outDir, "ar-"));
  execFileSync("ar", ["x", deb], { cwd: work, stdio: ["ignore", "ignore", "inherit"] });
  const data = readdirSync(work).find((f) => f.startsWith("data.tar"));
  if (!data) throw new Error(`${deb} has no data.tar member`);
  execFileSync("tar", ["-xf", join(work, data), "-C", outDir], { stdio: ["ignore", "ignore", "inherit"] });
  rmSync(work, { recursive: true, force: true });
}

/** Fetches the pinned .deb with apt-get from a sources list of its own, into `dir`. */
function downloadDeb(dir) {
  const lists = join(dir, "lists");
  const cache = join(dir, "cache");
  mkdirSync(join(lists, "partial"), { recursive: true });
  mkdirSync(join(cache, "archives", "partial"), { recursive: true });
  writeFileSync(join(dir, "sources.list"), `${PINNED_DEB.source}\n`);
  const options = [
    "-o", `Dir::Etc::SourceList=${join(dir, "sources.list")}`,
    "-o", "Dir::Etc::SourceParts=/dev/null",
    "-o", `Dir::State::Lists=${lists}`,
    "-o", `Dir::Cache=${cache}`,
    "-o", "APT::Get::List-Cleanup=0",
    "-o", `APT::Architecture=${PINNED_DEB.arch}`,
    "-o", "Debug::NoLocking=1",
    // as root apt hands downloads to the _apt user, who cannot write into this private folder
    "-o", "APT::Sandbox::User=root",
    "-qq",
  ];
  log(`fetching the package index of Debian unstable (apt-get update into ${dir}; the system's sources are not touched)...`);
  execFileSync("apt-get", [...options, "update"], { stdio: ["ignore", "ignore", "inherit"] });
  log(`downloading ${PINNED_DEB.file}...`);
  execFileSync("apt-get", [...options, "download", `${PINNED_DEB.package}:${PINNED_DEB.arch}=${PINNED_DEB.version}`], { cwd: dir, stdio: ["ignore", "ignore", "inherit"] });
  const deb = join(dir, PINNED_DEB.file);
  if (!existsSync(deb)) throw new Error(`apt-get download did not write ${PINNED_DEB.file}`);
  return deb;
}

/** Puts the pinned server into the per-user cache; returns false (after saying why) when it cannot. */
function installPinned() {
  if (process.platform !== "linux" || process.arch !== "x64") {
    console.error(howToInstall(`no nats-server ${MIN_VERSION}+ found, and the pinned Debian package is for Linux amd64 (this is ${process.platform} ${process.arch}).`));
    return false;
  }
  if (!has("apt-get") || !(has("dpkg-deb") || (has("ar") && has("tar")))) {
    console.error(howToInstall(`no nats-server ${MIN_VERSION}+ found, and apt-get (with dpkg-deb, or ar and tar) is not available to fetch the pinned one.`));
    return false;
  }
  const target = pinnedBinary();
  const parent = dirname(target);
  mkdirSync(dirname(parent), { recursive: true });
  const work = mkdtempSync(join(dirname(parent), `.fetch-${PINNED_VERSION}-`));
  try {
    log(`installing nats-server ${PINNED_VERSION} into ${parent}`);
    const deb = downloadDeb(work);
    const sum = createHash("sha256").update(readFileSync(deb)).digest("hex");
    if (sum !== PINNED_DEB.sha256) {
      rmSync(deb, { force: true });
      console.error(
        [
          `flexcore: ${PINNED_DEB.file} has SHA-256 ${sum}, expected ${PINNED_DEB.sha256}: the download was deleted and nothing was installed.`,
          "A mirror or a proxy changed the file, or the pinned package was rebuilt; do not use it. Install the release binary instead:",
          howToInstall("").split("\n").filter((_, i) => i !== 0 && i !== 2).join("\n"),
        ].join("\n"),
      );
      return false;
    }
    log(`checksum ok (sha256 ${sum}); extracting`);
    const out = join(work, "root");
    mkdirSync(out);
    extractDeb(deb, out);
    const extracted = join(out, "usr", "sbin", "nats-server");
    const staged = join(work, "nats-server");
    copyFileSync(extracted, staged);
    chmodSync(staged, 0o755);
    const version = binaryVersion(staged);
    if (version !== PINNED_VERSION) throw new Error(`the extracted binary reports version ${version ?? "none"} (it may need a newer glibc than this system's)`);
    mkdirSync(parent, { recursive: true });
    renameSync(staged, target);
    log(`nats-server ${PINNED_VERSION} installed: ${target}`);
    return true;
  } catch (err) {
    console.error(howToInstall(`could not install nats-server ${PINNED_VERSION} from its Debian package: ${err.message}`));
    return false;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

let found = resolveNatsServer();
if (found.source === "NATS_SERVER_BIN") {
  const version = binaryVersion(found.binary);
  if (!version) {
    console.error(howToInstall(`NATS_SERVER_BIN=${found.binary} cannot be run.`));
    process.exit(1);
  }
  if (compareVersions(version, MIN_VERSION) < 0) {
    console.error(howToInstall(`NATS_SERVER_BIN=${found.binary} is nats-server ${version}, older than ${MIN_VERSION}, the oldest FlexCore supports.`));
    process.exit(1);
  }
} else if (found.source === "none") {
  if (found.version) log(`the nats-server on PATH is ${found.version}, older than ${MIN_VERSION}: not used`);
  if (!installPinned()) process.exit(1);
  found = resolveNatsServer();
}
if (found.source === "none") process.exit(1);
log(`nats-server ${found.version ?? binaryVersion(found.binary)}: ${found.binary} (${found.source})`);

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
