import { fileURLToPath } from "node:url";

/** The command that starts the sqlite-source plugin (see plugins/echo/launch.ts for the rule). */
export function sqliteSourcePluginCommand(): { readonly command: string; readonly args: readonly string[] } {
  const fromSource = import.meta.url.endsWith(".ts");
  const main = fileURLToPath(new URL(fromSource ? "./main.ts" : "./main.js", import.meta.url));
  return { command: process.execPath, args: fromSource ? ["--import", "tsx", main] : [main] };
}
