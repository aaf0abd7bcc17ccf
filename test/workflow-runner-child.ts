// A workflow runner in its own process, for crash tests:
// `node --import tsx test/workflow-runner-child.ts <natsUrl> <id> [<operator definitions JSON>] [auto|bwrap|plain]`.
// The optional JSON is an array of { tenant, definition }: the definitions the operator installed
// (what startWorkflows reads from flexcore.yaml), whose trusted steps this runner may run.
// Credentials come from the environment (NATS_NKEY, ...).
// Prints "ready" once it drives runs; meant to be killed with SIGKILL.
import { connect } from "@nats-io/transport-node";
import { credentialsFromEnv, natsConnectOptions } from "../streams/index.js";
import { createOperatorTrust, startWorkflowRunner } from "../workflows/index.js";

const [url, id, operatorJson, sandbox = "auto"] = process.argv.slice(2);
if (!url || !id || (sandbox !== "auto" && sandbox !== "bwrap" && sandbox !== "plain")) {
  process.stderr.write("usage: workflow-runner-child.ts <natsUrl> <id> [<operator definitions JSON>] [auto|bwrap|plain]\n");
  process.exit(2);
}
const nc = await connect(natsConnectOptions(url, credentialsFromEnv(), { name: `runner-${id}` }));
const trust = createOperatorTrust();
for (const { tenant, definition } of JSON.parse(operatorJson ?? "[]") as Array<{ tenant: string; definition: object }>) trust.add(tenant, definition);
await startWorkflowRunner(nc, { id, trust, leaseMs: 1_000, pollMs: 100, rescanMs: 250, triggers: false, scriptRunnerOptions: { sandbox }, log: (l) => process.stderr.write(`${l}\n`) });
process.stdout.write("ready\n");
