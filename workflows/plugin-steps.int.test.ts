// `plugin` steps in the durable runner, through an injected PluginStepCaller standing for the
// plugin host (the real host and plugin are tested end to end in cli/plugins-up.e2e.test.ts):
// definitions checked against the plugins, the run's tenant sent (never the input's), a
// retryable error retried by the step's policy, a permanent one failing the step at once.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { ensureTopology } from "../streams/index.js";
import { createScriptRunner } from "../processors/index.js";
import type { ScriptRunner } from "../processors/index.js";
import { createWorkflowClient, startWorkflowRunner, WorkflowDefinitionError } from "./index.js";
import type { PluginStepCaller, WorkflowClient, WorkflowRunner } from "./index.js";

class Permanent extends Error {
  readonly code = "FLEX_PLUGIN_REJECTED";
}
class Retryable extends Error {
  readonly code = "FLEX_PLUGIN_FAILED";
}

const OWNER = uniqueName("owner");
const calls: Array<{ plugin: string; step: string; tenant: string; input: unknown; attempt: number; timeoutMs: number | undefined }> = [];
let failNext = 0;
const plugins: PluginStepCaller = {
  hasPlugin: (plugin, tenant) => plugin === "echo" || (plugin === "private" && tenant === OWNER),
  hasStep: (plugin, step) => (plugin === "echo" && (step === "echo" || step === "reject")) || (plugin === "private" && step === "echo"),
  isPermanent: (err) => err instanceof Permanent,
  async callStep(plugin, step, request, options) {
    calls.push({ plugin, step, tenant: request.tenant, input: request.input, attempt: request.run.attempt, timeoutMs: options?.timeoutMs });
    if (step === "reject") throw new Permanent("400 bad input");
    if (failNext > 0) {
      failNext -= 1;
      throw new Retryable("500 try again");
    }
    return { output: { echoed: request.input, tenant: request.tenant } };
  },
};

let nats: TestNats;
let client: WorkflowClient;
let bare: WorkflowClient;
let scripts: ScriptRunner;
let runner: WorkflowRunner;

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  scripts = await createScriptRunner({ maxConcurrent: 1 });
  client = await createWorkflowClient(nats.nc, { plugins });
  bare = await createWorkflowClient(nats.nc);
  runner = await startWorkflowRunner(await nats.connect(), { scripts, plugins, leaseMs: 2_000, pollMs: 50, triggers: false });
});
afterAll(async () => {
  await runner?.close();
  await client?.close();
  await bare?.close();
  await scripts?.close();
  await nats?.close();
});

describe("plugin steps", () => {
  it("are checked against the plugins: unknown plugin, another tenant's plugin, unknown step, missing keys", async () => {
    const tenant = uniqueName("t");
    const cases: Array<[unknown, string, string]> = [
      [{ name: "w", steps: [{ id: "a", kind: "plugin", plugin: "nope", step: "echo" }] }, "steps[0].plugin", "no plugin \"nope\""],
      [{ name: "w", steps: [{ id: "a", kind: "plugin", plugin: "private", step: "echo" }] }, "steps[0].plugin", "no plugin \"private\""],
      [{ name: "w", steps: [{ id: "a", kind: "plugin", plugin: "echo", step: "shout" }] }, "steps[0].step", "has no step \"shout\""],
      [{ name: "w", steps: [{ id: "a", kind: "plugin", plugin: "echo" }] }, "steps[0]", "step"],
      [{ name: "w", steps: [{ id: "a", kind: "plugin", plugin: "echo", step: "echo", processor: "anomaly" }] }, "steps[0]", "processor"],
      [{ name: "w", steps: [{ id: "a", kind: "plugin", plugin: "Bad.Name", step: "echo" }] }, "steps[0].plugin", "plugin name"],
    ];
    for (const [def, path, text] of cases) {
      const err = await client.put(tenant, def as object).catch((e: unknown) => e);
      expect(err, path).toBeInstanceOf(WorkflowDefinitionError);
      expect((err as WorkflowDefinitionError).code).toBe("FLEX_WORKFLOW_INVALID");
      expect((err as WorkflowDefinitionError).path.startsWith(path), `${path}: ${(err as Error).message}`).toBe(true);
      expect((err as Error).message).toContain(text);
    }
    expect(await client.list(tenant)).toEqual([]);
    // The owner may use its own plugin.
    await expect(client.put(OWNER, { name: "w", steps: [{ id: "a", kind: "plugin", plugin: "private", step: "echo" }] })).resolves.toMatchObject({ version: 1 });
  });

  it("calls the step with the run's tenant, whatever the input claims, and retries a retryable error by the step's policy", async () => {
    const tenant = uniqueName("t");
    await client.put(tenant, { name: "p", steps: [{ id: "a", kind: "plugin", plugin: "echo", step: "echo", input: { tenant: "someone-else", x: "${{ input.x }}" }, timeout_ms: 1500, retry: { max_attempts: 3, backoff_ms: 10 } }] });
    failNext = 1;
    const before = calls.length;
    const { runId } = await runner.start(tenant, "p", { input: { x: 7, tenant: "someone-else" } });
    const s = await client.wait(tenant, runId, { timeoutMs: 15_000 });
    expect(s.status).toBe("succeeded");
    expect(s.steps.a!.output ?? s.output).toBeDefined();
    const mine = calls.slice(before);
    expect(mine.map((c) => c.attempt)).toEqual([1, 2]);
    for (const c of mine) {
      expect(c.tenant).toBe(tenant);
      expect(c.timeoutMs).toBe(1500);
      expect(c.input).toEqual({ tenant: "someone-else", x: 7 });
    }
  });

  it("fails the step at once on a permanent (4xx) error, retries left or not", async () => {
    const tenant = uniqueName("t");
    await client.put(tenant, { name: "r", steps: [{ id: "a", kind: "plugin", plugin: "echo", step: "reject", retry: { max_attempts: 5, backoff_ms: 10 } }] });
    const before = calls.length;
    const { runId } = await runner.start(tenant, "r");
    const s = await client.wait(tenant, runId, { timeoutMs: 15_000 });
    expect(s.status).toBe("failed");
    expect(s.steps.a!.error).toMatchObject({ code: "FLEX_PLUGIN_REJECTED" });
    expect(calls.length - before).toBe(1);
  });

  it("fails a stored definition whose plugin this runner lacks before any step runs (shape-only clients may store it)", async () => {
    const tenant = uniqueName("t");
    await bare.put(tenant, { name: "ghost", steps: [{ id: "a", kind: "plugin", plugin: "ghost", step: "echo" }] });
    const before = calls.length;
    const started = await runner.start(tenant, "ghost").then((r) => r.runId, (e: unknown) => e);
    if (typeof started === "string") {
      const s = await client.wait(tenant, started, { timeoutMs: 15_000 });
      expect(s.status).toBe("failed");
      expect(JSON.stringify(s.error)).toContain("ghost");
    } else {
      expect(String((started as Error).message)).toContain("ghost");
    }
    expect(calls.length).toBe(before);
  });
});
