/**
 * Builds the operations console: esbuild bundles `main.tsx` (Preact, uPlot) into one
 * minified script and one stylesheet (the console's and uPlot's) with content-hashed
 * names, and writes `index.html` and `manifest.json` next to them. The folder is replaced
 * whole (built beside it, then renamed), so a running gateway never reads half a build.
 *
 *   tsx gateway/console/build.ts [outDir]     (`npm run build` runs it)
 */
import { mkdir, readdir, rename, rm, stat, writeFile, readFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";
import { defaultConsoleDir } from "../console-assets.js";
import type { ConsoleManifest } from "../console-assets.js";

const SOURCE = dirname(fileURLToPath(import.meta.url));

/** What {@link buildConsole} did. */
export interface ConsoleBuild {
  readonly dir: string;
  readonly manifest: ConsoleManifest;
  readonly ms: number;
}

function page(manifest: ConsoleManifest): string {
  // No inline script or style: the CSP (`gateway/routes/console.ts`) would refuse them.
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FlexCore console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="assets/${manifest.css}">
<script type="module" src="assets/${manifest.js}"></script>
</head>
<body>
<div id="app"><noscript>The FlexCore console needs JavaScript.</noscript></div>
</body>
</html>
`;
}

/** Builds the console into `outDir` (default `dist/console` of the package). */
export async function buildConsole(outDir: string = defaultConsoleDir()): Promise<ConsoleBuild> {
  const started = performance.now();
  const dir = resolve(outDir);
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  await mkdir(join(tmp, "assets"), { recursive: true });
  try {
    await build({
      entryPoints: { console: join(SOURCE, "main.tsx") },
      outdir: join(tmp, "assets"),
      entryNames: "[name]-[hash]",
      assetNames: "[name]-[hash]",
      bundle: true,
      minify: true,
      format: "esm",
      target: ["chrome115", "firefox115", "safari16"],
      jsx: "automatic",
      jsxImportSource: "preact",
      tsconfig: join(SOURCE, "tsconfig.json"),
      legalComments: "none",
      define: { "process.env.NODE_ENV": '"production"' },
      logLevel: "warning",
    });
    const names = await readdir(join(tmp, "assets"));
    const js = names.find((n) => n.endsWith(".js"));
    const css = names.find((n) => n.endsWith(".css"));
    if (!js || !css) throw new Error(`The console build wrote ${names.join(", ")}; expected one .js and one .css`);
    const files = await Promise.all(names.sort().map(async (name) => {
      const bytes = await readFile(join(tmp, "assets", name));
      return { name, bytes: bytes.length, gzipBytes: gzipSync(bytes, { level: 9 }).length };
    }));
    const manifest: ConsoleManifest = { js, css, files };
    await writeFile(join(tmp, "index.html"), page(manifest));
    await writeFile(join(tmp, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
    await mkdir(dirname(dir), { recursive: true });
    const old = `${tmp}.old`;
    const had = await stat(dir).then(() => true, () => false);
    if (had) await rename(dir, old);
    await rename(tmp, dir);
    if (had) await rm(old, { recursive: true, force: true });
    return { dir, manifest, ms: performance.now() - started };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

async function newest(dir: string): Promise<number> {
  let latest = 0;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) latest = Math.max(latest, await newest(path));
    else if (!entry.name.endsWith(".test.ts")) latest = Math.max(latest, (await stat(path)).mtimeMs);
  }
  return latest;
}

/**
 * Builds the console unless `outDir` holds a build newer than every source file (what the
 * test setup calls, so `npm test` works on a fresh clone without `npm run build`).
 */
export async function ensureConsoleBuilt(outDir: string = defaultConsoleDir()): Promise<void> {
  const built = await stat(join(outDir, "manifest.json")).then((s) => s.mtimeMs, () => 0);
  if (built > 0 && built >= (await newest(SOURCE))) return;
  try {
    await buildConsole(outDir);
  } catch (err) {
    // Another test run building at the same moment may have swapped the folder under this one: its build serves as well.
    const other = await stat(join(outDir, "manifest.json")).then((s) => s.mtimeMs, () => 0);
    if (other <= built) throw err;
  }
}

if (process.argv[1] && basename(process.argv[1]).startsWith("build") && resolve(process.argv[1]).startsWith(SOURCE)) {
  const done = await buildConsole(process.argv[2]);
  const gz = done.manifest.files.reduce((n, f) => n + f.gzipBytes, 0);
  process.stderr.write(`flexcore: console built into ${done.dir} in ${done.ms.toFixed(0)} ms (${done.manifest.files.map((f) => f.name).join(", ")}; ${(gz / 1024).toFixed(1)} KiB gzipped)\n`);
}
