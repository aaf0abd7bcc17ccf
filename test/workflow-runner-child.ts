// A workflow runner in its own process, for crash tests: `node --import tsx test/workflow-runner-child.ts <natsUrl> <id> [auto|bwrap|plain]`.
// Prints "ready" once it drives runs; meant to be killed with SIGKILL.
import { connect } from "@nats-io/transport-node";
import { startWorkflowRunner } from "../workflows/index.js";

const [url, id, sandbox = "auto"] = process.argv.slice(2);
if (!url || !id || (sandbox !== "auto" && sandbox !== "bwrap" && sandbox !== "plain")) {
  process.stderr.write("usage: workflow-runner-child.ts <natsUrl> <id> [auto|bwrap|plain]\n");
  process.exit(2);
}
const nc = await connect({ servers: url, name: `runner-${id}` });
await startWorkflowRunner(nc, { id, leaseMs: 1_000, pollMs: 100, rescanMs: 250, triggers: false, scriptRunnerOptions: { sandbox }, log: (l) => process.stderr.write(`${l}\n`) });
process.stdout.write("ready\n");
