import { fileURLToPath } from "node:url";

/**
 * The command that starts the TypeScript echo plugin with plain `node`: the compiled
 * `main.js` beside this file (after `npm run build`), or, when FlexCore runs from its
 * TypeScript sources (vitest, tsx), `main.ts` through tsx's loader, as the processor pool
 * does with `worker-source.mjs`.
 */
export function echoPluginCommand(): { readonly command: string; readonly args: readonly string[] } {
  const fromSource = import.meta.url.endsWith(".ts");
  const main = fileURLToPath(new URL(fromSource ? "./main.ts" : "./main.js", import.meta.url));
  return { command: process.execPath, args: fromSource ? ["--import", "tsx", main] : [main] };
}
