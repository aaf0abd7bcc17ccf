// vitest globalSetup: the gateway serves the console from dist/console, so the tests build it
// first when it is missing or older than its source (esbuild, well under a second).
import { ensureConsoleBuilt } from "../gateway/console/build.js";

export default async function setup(): Promise<void> {
  await ensureConsoleBuilt();
}
