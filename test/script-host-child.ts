// A process that runs one script step and is then killed, for the test that a step's
// processes die with their host: `node --import tsx test/script-host-child.ts <sandbox> <language> <source>`.
// Prints "started" once the step is submitted; meant to be killed with SIGKILL.
import { createScriptRunner } from "../processors/index.js";

const [sandbox, language, source] = process.argv.slice(2);
if ((sandbox !== "bwrap" && sandbox !== "plain") || (language !== "bash" && language !== "python" && language !== "javascript") || !source) {
  process.stderr.write("usage: script-host-child.ts bwrap|plain bash|python|javascript <source>\n");
  process.exit(2);
}
const runner = await createScriptRunner({ sandbox, maxConcurrent: 2 });
const done = runner.run({ language, source, limits: { timeoutMs: 60_000 } }, {});
process.stdout.write("started\n");
await done;
