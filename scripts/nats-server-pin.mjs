// The one place that says which nats-server FlexCore runs and where it is found.
// Plain JavaScript so that `node scripts/ensure-nats-server.mjs` can use it before the
// TypeScript is built; streams/server.ts loads the same file (types in the .d.mts beside it).
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

/** The nats-server that `npm start`, `npm test` and `npm run bench` run, and production runs. */
export const PINNED_VERSION = "2.15.1";
/** The oldest server FlexCore accepts. */
export const MIN_VERSION = "2.12.0";
/**
 * The pinned server as a Debian package (Debian unstable; it needs glibc 2.34+). The checksum
 * is of the .deb file; a download that does not match is deleted.
 */
export const PINNED_DEB = Object.freeze({
  package: "nats-server",
  version: "2.15.1-1",
  arch: "amd64",
  file: "nats-server_2.15.1-1_amd64.deb",
  sha256: "31ef4ceaa84e8248d449e508472e3770c17c3695cb5cb0ee96e03912724ea884",
  source: "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian unstable main",
});
/** Where the pinned server's release binaries are, for people installing it by hand. */
export const RELEASE_URL = `https://github.com/nats-io/nats-server/releases/tag/v${PINNED_VERSION}`;

/** `${XDG_CACHE_HOME:-~/.cache}/flexcore/nats-server/<version>`: the per-user cache of the pinned server. */
export function pinnedDir(env = process.env) {
  const cache = env.XDG_CACHE_HOME && env.XDG_CACHE_HOME.startsWith("/") ? env.XDG_CACHE_HOME : join(env.HOME || homedir(), ".cache");
  return join(cache, "flexcore", "nats-server", PINNED_VERSION);
}

/** Path of the pinned binary in the per-user cache (it may not exist yet). */
export function pinnedBinary(env = process.env) {
  return join(pinnedDir(env), "nats-server");
}

/** How to get the pinned server, for error messages. */
export function installHint(env = process.env) {
  return [
    `run \`npm test\` or \`npm start\` once (scripts/ensure-nats-server.mjs puts nats-server ${PINNED_VERSION} in ${pinnedDir(env)}; on Debian/Ubuntu with apt-get),`,
    `or download nats-server ${PINNED_VERSION} from ${RELEASE_URL} and set NATS_SERVER_BIN=/path/to/nats-server`,
  ].join(" ");
}

/** Compares dotted versions: negative when `a < b`. */
export function compareVersions(a, b) {
  const pa = String(a).split(".").map((x) => Number.parseInt(x, 10) || 0);
  const pb = String(b).split(".").map((x) => Number.parseInt(x, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The version `binary --version` prints (`2.15.1`), or undefined when it cannot be run. */
export function binaryVersion(binary, env = process.env) {
  const r = spawnSync(binary, ["--version"], { encoding: "utf8", timeout: 10_000, env });
  if (r.error || r.status !== 0) return undefined;
  const m = /v?(\d+\.\d+\.\d+)/.exec(`${r.stdout}${r.stderr}`);
  return m ? m[1] : undefined;
}

/**
 * Which nats-server binary to run: `NATS_SERVER_BIN` when set (whatever it is; an old one is
 * refused where it is started), else the pinned one in the per-user cache, else a
 * `nats-server` on PATH at MIN_VERSION or newer.
 * @returns `{ binary, source, version? }`; source "none" (binary "nats-server") when there is none.
 */
export function resolveNatsServer(env = process.env) {
  if (env.NATS_SERVER_BIN) return { binary: env.NATS_SERVER_BIN, source: "NATS_SERVER_BIN" };
  const pinned = pinnedBinary(env);
  if (existsSync(pinned)) return { binary: pinned, source: "pinned", version: PINNED_VERSION };
  const version = binaryVersion("nats-server", env);
  if (version && compareVersions(version, MIN_VERSION) >= 0) return { binary: "nats-server", source: "system", version };
  return { binary: "nats-server", source: "none", ...(version ? { version } : {}) };
}
