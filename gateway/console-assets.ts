/**
 * The built console (`npm run build` → `dist/console/`), loaded into memory for the
 * gateway to serve: `index.html`, `manifest.json` and the content-hashed files under
 * `assets/`. Node side only; the console's source is `gateway/console/`.
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** What `gateway/console/build.ts` writes next to `index.html`. */
export interface ConsoleManifest {
  /** Name (under `assets/`) of the one script. */
  readonly js: string;
  /** Name (under `assets/`) of the one stylesheet (the console's and uPlot's). */
  readonly css: string;
  /** Every file under `assets/` with its size and gzipped size, in bytes. */
  readonly files: ReadonlyArray<{ readonly name: string; readonly bytes: number; readonly gzipBytes: number }>;
}

/** The console in memory. */
export interface ConsoleAssets {
  readonly manifest: ConsoleManifest;
  readonly index: Buffer;
  /** Files under `assets/` by name. */
  readonly files: ReadonlyMap<string, Buffer>;
}

/** Where the build writes, relative to the package root. */
export const CONSOLE_DIST = join("dist", "console");

/** The package root: the nearest folder above this file holding `package.json` (works from source and from `dist/`). */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json"))) return dir;
    const up = resolve(dir, "..");
    if (up === dir) throw new Error(`No package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

/** `<package root>/dist/console`. */
export function defaultConsoleDir(): string {
  return join(packageRoot(), CONSOLE_DIST);
}

/** Reads the built console from `dir`; undefined when it was not built (no `manifest.json`). */
export async function loadConsoleAssets(dir: string): Promise<ConsoleAssets | undefined> {
  let manifest: ConsoleManifest;
  try {
    manifest = JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")) as ConsoleManifest;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  const index = await readFile(join(dir, "index.html"));
  const files = new Map<string, Buffer>();
  for (const f of manifest.files) files.set(f.name, await readFile(join(dir, "assets", f.name)));
  return { manifest, index, files };
}
