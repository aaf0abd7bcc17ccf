#!/usr/bin/env node
// Entry of the TypeScript echo plugin: `node dist/plugins/echo/main.js` after `npm run build`,
// `node --import tsx plugins/echo/main.ts` from the sources (see ./launch.ts).
import { ENV } from "../protocol.js";
import { serve } from "../sdk.js";
import { echoPlugin } from "./plugin.js";

let ignoreSigterm = false;
try {
  ignoreSigterm = (JSON.parse(process.env[ENV.config] || "{}") as { ignoreSigterm?: boolean }).ignoreSigterm === true;
} catch {
  // serve() reports a bad FLEXCORE_PLUGIN_CONFIG and exits 78.
}
if (ignoreSigterm) process.on("SIGTERM", () => process.stderr.write('{"level":40,"msg":"echo: ignoring SIGTERM (fault switch)"}\n'));
await serve(echoPlugin(), { handleSignals: !ignoreSigterm });
