import { monitorEventLoopDelay } from "node:perf_hooks";
import { PNG } from "pngjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { ensureTopology } from "../streams/index.js";
import { BUILTIN_PROCESSORS, createScriptRunner } from "../processors/index.js";
import type { ScriptRunner } from "../processors/index.js";
import { createWorkflowClient, startWorkflowRunner } from "./index.js";
import type { WorkflowClient, WorkflowRunner } from "./index.js";

let nats: TestNats;
let client: WorkflowClient;
let scripts: ScriptRunner;
let runner: WorkflowRunner;
// Many colours from many samples: k-means makes the step CPU-bound for a good while.
const OPTIONS = { colours: 12, colour_samples: 200_000 };

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  scripts = await createScriptRunner({ maxConcurrent: 1 });
  client = await createWorkflowClient(nats.nc);
  runner = await startWorkflowRunner(await nats.connect(), { scripts, leaseMs: 2_000, pollMs: 100, triggers: false });
});
afterAll(async () => {
  await runner?.close();
  await client?.close();
  await scripts?.close();
  await nats?.close();
});

/** A `size`×`size` PNG (27 KB as base64 at 2000) whose `vision` analysis (with {@link OPTIONS}) costs about a second of CPU at 2000. */
function heavyImage(size: number): string {
  const png = new PNG({ width: size, height: size });
  for (let i = 0; i < png.data.length; i += 4) {
    const x = (i / 4) % size;
    png.data[i] = x % 256;
    png.data[i + 1] = 100;
    png.data[i + 2] = (x * 7) % 256;
    png.data[i + 3] = 255;
  }
  return PNG.sync.write(png).toString("base64");
}

describe("processor steps", () => {
  it("run off the event loop: a CPU-heavy step is cut off at timeout_ms while the loop stays responsive", async () => {
    const tenant = uniqueName("t");
    // What the step costs on one thread, measured here on the same input (the largest image
    // `vision` takes). It must cost well over the 100 ms timeout, on a fast machine too.
    const vision = BUILTIN_PROCESSORS.get("vision")!;
    const o = vision.validateOptions(OPTIONS, "options");
    const png = heavyImage(2_000);
    const t0 = performance.now();
    vision.process(vision.initialState(o, "k"), [{ tenant, key: "k", subject: `evt.${tenant}.img.k`, seq: 1, type: "X", data: { png }, time: new Date().toISOString() }], o);
    const cpuMs = performance.now() - t0;
    expect(cpuMs, "the input is heavy enough for the test to mean something").toBeGreaterThan(400);

    await client.put(tenant, { name: "analyse", steps: [{ id: "look", kind: "processor", processor: "vision", options: OPTIONS, input: "${{ input }}", timeout_ms: 100, retry: { max_attempts: 1 } }] });
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    const started = performance.now();
    const { runId } = await runner.start(tenant, "analyse", { input: { png } });
    const s = await client.wait(tenant, runId, { timeoutMs: 30_000 });
    const tookMs = performance.now() - started;
    delay.disable();
    const maxDelayMs = delay.max / 1e6;
    expect(s.status).toBe("failed");
    expect(s.steps.look!.error).toMatchObject({ code: "FLEX_STEP_TIMEOUT" });
    expect(s.steps.look!.error!.message).toContain("100 ms");
    // The loop never waited for the processor: its worst delay is a fraction of the step's CPU time.
    expect(maxDelayMs, `event-loop delay max ${maxDelayMs.toFixed(0)} ms vs ${cpuMs.toFixed(0)} ms of CPU`).toBeLessThan(cpuMs / 4);
    // The attempt ended at its timeout, not when the work would have finished.
    expect(tookMs, `run took ${tookMs.toFixed(0)} ms`).toBeLessThan(cpuMs + 2_000);
    // The loop answers a timer on time while a step without a timeout works in a worker.
    await client.put(tenant, { name: "analyse-ok", steps: [{ id: "look", kind: "processor", processor: "vision", options: OPTIONS, input: "${{ input }}" }] });
    const okDelay = monitorEventLoopDelay({ resolution: 10 });
    okDelay.enable();
    const ok = await runner.start(tenant, "analyse-ok", { input: { png } });
    const done = await client.wait(tenant, ok.runId, { timeoutMs: 30_000 });
    okDelay.disable();
    expect(done.status).toBe("succeeded");
    expect((done.steps.look!.output as { outputs: Array<{ type: string }> }).outputs[0]!.type).toBe("ImageAnalyzed");
    expect(okDelay.max / 1e6).toBeLessThan(cpuMs / 4);
  });
});
