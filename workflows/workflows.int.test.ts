import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { processesWith } from "../test/sandbox-escapes.js";
import { createEventStore, ensureTopology, eventSubject } from "../streams/index.js";
import type { EventStore } from "../streams/index.js";
import { createScriptRunner } from "../processors/index.js";
import type { ScriptRunner } from "../processors/index.js";
import { createOperatorTrust, createWorkflowClient, RunFinishedError, startWorkflowRunner, WorkflowDefinitionError, WorkflowNotFoundError } from "./index.js";
import type { WorkflowClient, WorkflowRunner } from "./index.js";

let nats: TestNats;
let client: WorkflowClient;
let runner: WorkflowRunner;
let scripts: ScriptRunner;
let store: EventStore;
// The operator's trust: definitions with trusted steps are installed through it, as
// startWorkflows does with the files of flexcore.yaml.
const trust = createOperatorTrust();

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  scripts = await createScriptRunner({ maxConcurrent: 4 });
  client = await createWorkflowClient(nats.nc);
  runner = await startWorkflowRunner(await nats.connect(), { scripts, trust, leaseMs: 2_000, pollMs: 100 });
  store = await createEventStore(nats.nc);
});
afterAll(async () => {
  await runner?.close();
  await client?.close();
  await store?.close();
  await scripts?.close();
  await nats?.close();
});

const js = (body: string): string => `function main(args) { ${body} }`;

describe("definitions", () => {
  it("rejects bad definitions with the path named, and stores nothing", async () => {
    const tenant = uniqueName("t");
    const cases: Array<[unknown, string, string]> = [
      [{ name: "w", steps: [{ id: "a", kind: "email" }] }, "steps[0].kind", "expected a step kind"],
      [{ name: "w", steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1", needs: ["b"] }, { id: "b", kind: "script", language: "bash", source: "echo 1" }] }, "steps[0].needs", "cycle"],
      [{ name: "w", steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1", input: { x: "${{ steps.nope.output }}" } }] }, "steps[0].input.x", "missing step `nope`"],
      [{ name: "w", triggers: [{ cron: "61 * * * *" }], steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1" }] }, "triggers[0].cron", "minute: `61` is not valid; expected values 0-59"],
      [{ name: "w", triggers: [{ cron: "* * *" }], steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1" }] }, "triggers[0].cron", "expected 5 fields"],
      [{ name: "w", steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1", retry: { max_attempts: 0 } }] }, "steps[0].retry.max_attempts", "integer ≥ 1 and ≤ 100"],
      [{ name: "w", steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1", colour: "red" }] }, "steps[0].colour", "unknown key"],
      [{ name: "w", triggers: [{ event: { subject: "evt.other.sensor.*", type: "X" } }], steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1" }] }, "triggers[0].event.subject", "inside the tenant's events"],
    ];
    for (const [def, path, text] of cases) {
      const err = await client.put(tenant, def as object).catch((e: unknown) => e);
      expect(err, path).toBeInstanceOf(WorkflowDefinitionError);
      expect((err as WorkflowDefinitionError).code).toBe("FLEX_WORKFLOW_INVALID");
      expect((err as WorkflowDefinitionError).path).toBe(path);
      expect((err as Error).message).toContain(text);
    }
    // A plugin step names its plugin and step (plugin-steps.int.test.ts checks them against the plugins).
    const plugin = await client.put(tenant, "name: w\nsteps:\n  - id: a\n    kind: plugin\n").catch((e: unknown) => e);
    expect(plugin).toBeInstanceOf(WorkflowDefinitionError);
    expect((plugin as WorkflowDefinitionError).code).toBe("FLEX_WORKFLOW_INVALID");
    expect((plugin as WorkflowDefinitionError).path).toBe("steps[0].plugin");
    const yamlErr = await client.put(tenant, "name: w\nsteps: [\n").catch((e: unknown) => e);
    expect((yamlErr as WorkflowDefinitionError).path).toBe("$");
    expect(await client.list(tenant)).toEqual([]);
    await expect(client.get(tenant, "w")).rejects.toBeInstanceOf(WorkflowNotFoundError);
  });

  it("stores versions per tenant; the same definition again keeps its version", async () => {
    const tenant = uniqueName("t");
    const v1 = await client.put(tenant, "name: w\nsteps:\n  - id: a\n    kind: script\n    language: bash\n    source: echo 1\n");
    const same = await client.put(tenant, { name: "w", steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1" }] });
    const v2 = await client.put(tenant, { name: "w", steps: [{ id: "a", kind: "script", language: "bash", source: "echo 2" }] });
    expect([v1.version, same.version, v2.version]).toEqual([1, 1, 2]);
    expect((await client.get(tenant, "w", 1)).definition.steps[0]).toMatchObject({ source: "echo 1" });
    expect((await client.list(tenant)).map((w) => [w.name, w.version])).toEqual([["w", 2]]);
    expect(await client.list(uniqueName("other"))).toEqual([]);
  });
});

describe("runs", () => {
  it("runs steps in order with templates from the trigger and earlier outputs", async () => {
    const tenant = uniqueName("t");
    await client.put(tenant, {
      name: "chain",
      steps: [
        { id: "a", kind: "script", language: "javascript", trusted: true, source: js("return { n: args.n + 1 };"), input: { n: "${{ input.n }}" } },
        { id: "b", kind: "script", language: "python", source: "def main(a):\n    return {'n': a['n'] * 10, 'label': a['label']}", input: { n: "${{ steps.a.output.n }}", label: "run ${{ run.workflow }} n=${{ steps.a.output.n }}" } },
        { id: "c", kind: "script", language: "bash", source: 'read -r x; echo "{\\"in\\": $x}"', input: "${{ steps.b.output }}" },
      ],
    }, { operator: trust });
    const { runId } = await runner.start(tenant, "chain", { input: { n: 1 } });
    const s = await client.wait(tenant, runId, { timeoutMs: 20_000 });
    expect(s.status).toBe("succeeded");
    expect(s.output).toEqual({ in: { n: 20, label: "run chain n=2" } });
    const types = (await client.events(tenant, runId)).map((e) => e.type);
    expect(types).toEqual(["RunStarted", "StepStarted", "StepSucceeded", "StepStarted", "StepSucceeded", "StepStarted", "StepSucceeded", "RunSucceeded"]);
  });

  it("retries with exponential backoff, then fails the run", async () => {
    const tenant = uniqueName("t");
    await client.put(tenant, {
      name: "flaky",
      steps: [
        { id: "a", kind: "script", language: "javascript", trusted: true, source: js("if (args.attempt < 3) throw new Error('try ' + args.attempt); return { ok: args.attempt };"), input: { attempt: "${{ run.attempt }}" }, retry: { max_attempts: 3, backoff_ms: 200, factor: 2 } },
        { id: "b", kind: "script", language: "javascript", trusted: true, source: js("throw new Error('always');"), retry: { max_attempts: 2, backoff_ms: 100 } },
        { id: "c", kind: "script", language: "javascript", trusted: true, source: js("return 1;") },
      ],
    }, { operator: trust });
    const { runId } = await runner.start(tenant, "flaky");
    const s = await client.wait(tenant, runId, { timeoutMs: 20_000 });
    expect(s.status).toBe("failed");
    expect(s.error?.message).toContain("step `b` failed after 2 attempt(s)");
    const events = await client.events(tenant, runId);
    const a = events.filter((e) => (e.data as { step?: string }).step === "a");
    expect(a.map((e) => `${e.type}:${(e.data as { attempt: number }).attempt}`)).toEqual(["StepStarted:1", "StepFailed:1", "StepStarted:2", "StepFailed:2", "StepStarted:3", "StepSucceeded:3"]);
    expect(s.steps.a!.output).toEqual({ ok: 3 });
    // Attempt n+1 is scheduled backoff_ms * factor^(n-1) after attempt n failed (200 ms, then
    // 400 ms), recorded as retryAt, and does not start before it.
    const retryAt = (i: number): number => (a[i]!.data as { retryAt: number }).retryAt;
    expect(retryAt(1) - Date.parse(a[1]!.time)).toBe(200);
    expect(retryAt(3) - Date.parse(a[3]!.time)).toBe(400);
    expect(a[2]!.storedAt).toBeGreaterThanOrEqual(retryAt(1) - 5);
    expect(a[4]!.storedAt).toBeGreaterThanOrEqual(retryAt(3) - 5);
    expect((a[1]!.data as { willRetry: boolean }).willRetry).toBe(true);
    const b = events.filter((e) => (e.data as { step?: string }).step === "b" && e.type === "StepFailed");
    expect(b.map((e) => (e.data as { willRetry: boolean }).willRetry)).toEqual([true, false]);
    expect(events.at(-1)!.type).toBe("RunFailed");
    // Without continue_on_error the definitive failure ends the run: nothing after it starts.
    expect(events.some((e) => (e.data as { step?: string }).step === "c")).toBe(false);
    expect(s.steps.c!.status).toBe("pending");
  });

  it("continue_on_error keeps the run going; when skips or runs steps; parallel branches fan out and join", async () => {
    const tenant = uniqueName("t");
    const sleepy = (ms: number, v: string): string => `function main(args) { return new Promise((r) => setTimeout(() => r({ v: ${JSON.stringify(v)} }), ${ms})); }`;
    await client.put(tenant, `
name: branches
steps:
  - id: bad
    kind: script
    language: bash
    source: exit 4
    continue_on_error: true
  - id: on_failure
    kind: script
    language: javascript
    trusted: true
    when: steps.bad.status == "failed"
    source: "function main(a) { return { handled: a.err }; }"
    input: { err: "\${{ steps.bad.error }}" }
  - id: on_success
    needs: [bad]
    kind: script
    language: javascript
    trusted: true
    when: "\${{ steps.bad.status == 'succeeded' }}"
    source: "function main() { return 1; }"
  - id: left
    needs: [on_failure, on_success]
    kind: script
    language: javascript
    trusted: true
    source: ${JSON.stringify(sleepy(400, "L"))}
  - id: right
    needs: [on_failure, on_success]
    kind: script
    language: javascript
    trusted: true
    source: ${JSON.stringify(sleepy(400, "R"))}
  - id: join
    needs: [left, right]
    kind: script
    language: javascript
    trusted: true
    source: "function main(a) { return a.l + a.r; }"
    input: { l: "\${{ steps.left.output.v }}", r: "\${{ steps.right.output.v }}" }
`, { operator: trust });
    const { runId } = await runner.start(tenant, "branches");
    const s = await client.wait(tenant, runId, { timeoutMs: 20_000 });
    expect(s.status).toBe("succeeded");
    expect(s.steps.bad!.status).toBe("failed");
    expect((s.steps.on_failure!.output as { handled: string }).handled).toContain("exited with status 4");
    expect(s.steps.on_success!.status).toBe("skipped");
    expect(s.output).toBe("LR");
    const events = await client.events(tenant, runId);
    const at = (type: string, step: string): number => events.find((e) => e.type === type && (e.data as { step?: string }).step === step)!.storedAt;
    // Both branches started before either ended: they ran side by side.
    expect(Math.max(at("StepStarted", "left"), at("StepStarted", "right"))).toBeLessThan(Math.min(at("StepSucceeded", "left"), at("StepSucceeded", "right")));
    expect(at("StepStarted", "join")).toBeGreaterThanOrEqual(Math.max(at("StepSucceeded", "left"), at("StepSucceeded", "right")));
  });

  it("cancels a run: its running step is killed and the run ends cancelled", async () => {
    const tenant = uniqueName("t");
    // A unique sleep argument finds the step's processes on the host.
    const arg = `30.${Math.floor(Math.random() * 1e9)}`;
    await client.put(tenant, { name: "slow", steps: [{ id: "wait", kind: "script", language: "bash", source: `sleep ${arg} & sleep ${arg}`, timeout_ms: 60_000 }, { id: "after", kind: "script", language: "bash", source: "echo 1" }] });
    const { runId } = await runner.start(tenant, "slow");
    for (let i = 0; i < 100 && (await client.status(tenant, runId)).steps.wait!.status !== "running"; i++) await new Promise((r) => setTimeout(r, 50));
    for (let i = 0; i < 200 && (await processesWith(arg)).length < 2; i++) await new Promise((r) => setTimeout(r, 50));
    expect((await processesWith(arg)).length, "the step's two sleeps are running").toBeGreaterThanOrEqual(2);
    const cancelled = await client.cancel(tenant, runId, { reason: "test", by: "me" });
    expect(cancelled.status).toBe("cancelled");
    await expect(client.cancel(tenant, runId)).rejects.toBeInstanceOf(RunFinishedError);
    await new Promise((r) => setTimeout(r, 1_000));
    const s = await client.status(tenant, runId);
    expect(s.status).toBe("cancelled");
    expect(s.steps.after!.status).toBe("pending");
    expect((await client.events(tenant, runId)).map((e) => e.type)).toEqual(["RunStarted", "StepStarted", "RunCancelled"]);
    expect(await processesWith(arg), "processes of the cancelled step 1 s later").toEqual([]);
  });

  it("starts a run for each matching event (subject filter and type), once", async () => {
    const tenant = uniqueName("t");
    await client.put(tenant, {
      name: "on-reading",
      triggers: [{ event: { subject: `evt.${tenant}.sensor.*`, type: "ReadingRecorded" } }],
      steps: [
        { id: "score", kind: "processor", processor: "anomaly", options: { emit: "all", min_points: 2 }, input: "${{ trigger.data }}" },
      ],
    });
    await new Promise((r) => setTimeout(r, 500));
    await store.append(eventSubject(tenant, "sensor", "s1"), [{ type: "ReadingRecorded", data: { value: 10 } }, { type: "Other", data: { value: 1 } }, { type: "ReadingRecorded", data: { value: 11 } }]);
    const runs: string[] = [];
    for (let i = 0; i < 100 && runs.length < 2; i++) {
      await new Promise((r) => setTimeout(r, 100));
      runs.length = 0;
      for await (const e of store.readAll({ filter: `evt.${tenant}.workflow.*`, follow: false })) if (e.type === "RunStarted") runs.push((e.data as { runId: string }).runId);
    }
    expect(runs).toHaveLength(2);
    for (const runId of runs) {
      const s = await client.wait(tenant, runId, { timeoutMs: 10_000 });
      expect(s.status).toBe("succeeded");
      expect(s.trigger).toMatchObject({ kind: "event", type: "ReadingRecorded", key: "s1" });
    }
  });
});

describe("shipped examples (npm start's default config)", () => {
  it("sensor pipeline: enrich (JS) -> anomaly score -> Bash notify only for the spike; data-quality fails bad rows; the report runs", async () => {
    const { readFile } = await import("node:fs/promises");
    const { workflowsSection } = await import("./index.js");
    const { parse } = await import("yaml");
    const config = workflowsSection((parse(await readFile(new URL("../flexcore.yaml", import.meta.url), "utf8")) as { workflows: unknown }).workflows, "workflows");
    expect(config.definitions).toHaveLength(3);
    const tenant = config.tenant;
    // The operator's files, installed as startWorkflows installs them.
    for (const file of config.definitions) await client.put(tenant, await readFile(new URL(`../${file}`, import.meta.url), "utf8"), { operator: trust });
    await new Promise((r) => setTimeout(r, 500));
    const values = [20, 21, 20.5, 19.8, 20.2, 21.1, 20.7, 19.9, 20.4, 20.6, 20.1, 95];
    const sensor = uniqueName("s");
    const runIds: string[] = [];
    const runsOf = async (n: number): Promise<void> => {
      for (let i = 0; i < 200 && runIds.length < n; i++) {
        await new Promise((r) => setTimeout(r, 100));
        runIds.length = 0;
        for await (const e of store.readAll({ filter: `evt.${tenant}.workflow.*`, follow: false })) {
          const d = e.data as { runId: string; workflow: string; triggerInfo: { key?: string } };
          if (e.type === "RunStarted" && d.workflow === "sensor-pipeline" && d.triggerInfo.key === sensor) runIds.push(d.runId);
        }
      }
      expect(runIds).toHaveLength(n);
      await Promise.all(runIds.map((id) => client.wait(tenant, id, { timeoutMs: 30_000 })));
    };
    // All at once: the trigger is ordered, so one sensor's runs go in event order and the
    // spike is scored after the eleven normal readings.
    await store.append(eventSubject(tenant, "sensor", sensor), values.map((value) => ({ type: "ReadingRecorded", data: { value, unit: "C" } })));
    await runsOf(values.length);
    const runs = await Promise.all(runIds.map((id) => client.wait(tenant, id, { timeoutMs: 30_000 })));
    // Ordered: each run of the sensor started its first step after the previous one ended.
    const bySeq = [...runIds].sort((a, b) => Number(a.split("-e").at(-1)) - Number(b.split("-e").at(-1)));
    let previousEnd = 0;
    for (const id of bySeq) {
      const events = await client.events(tenant, id);
      expect(events.find((e) => e.type === "StepStarted")!.storedAt).toBeGreaterThanOrEqual(previousEnd);
      previousEnd = events.at(-1)!.storedAt;
    }
    expect(runs.map((r) => r.status)).toEqual(values.map(() => "succeeded"));
    const notified = runs.filter((r) => r.steps.notify!.status === "succeeded");
    expect(notified).toHaveLength(1);
    expect(notified[0]!.steps.enrich!.output).toMatchObject({ value: 95, sensor });
    expect(notified[0]!.output).toMatchObject({ notified: true, sensor });
    expect(runs.filter((r) => r.steps.notify!.status === "skipped")).toHaveLength(values.length - 1);

    const bad = await runner.start(tenant, "data-quality", { input: { rows: [{ id: 1, temp: 21 }, { id: 1, temp: null }, { id: 3, temp: 200 }] } });
    const badRun = await client.wait(tenant, bad.runId, { timeoutMs: 20_000 });
    expect(badRun.status).toBe("failed");
    expect(badRun.error?.message).toContain("data quality below threshold");
    const good = await client.wait(tenant, (await runner.start(tenant, "data-quality")).runId, { timeoutMs: 20_000 });
    expect(good.output).toMatchObject({ rows: 50, valid: 50 });
    const report = await client.wait(tenant, (await runner.start(tenant, "daily-report")).runId, { timeoutMs: 20_000 });
    expect(report.status).toBe("succeeded");
    expect(report.output).toHaveProperty("day");
  });
});

describe("cron trigger", () => {
  it("two runners on the same clock start exactly one run for the scheduled minute", async () => {
    const tenant = uniqueName("t");
    // Feb 29: the test runner on the real clock never fires it.
    const minute = new Date("2028-02-29T06:00:20Z");
    await client.put(tenant, { name: "nightly", triggers: [{ cron: "0 6 29 2 *" }], steps: [{ id: "r", kind: "script", language: "bash", source: "echo '{\"done\": true}'" }] });
    const a = await startWorkflowRunner(await nats.connect(), { scripts, now: () => minute, leaseMs: 2_000 });
    const b = await startWorkflowRunner(await nats.connect(), { scripts, now: () => minute, leaseMs: 2_000 });
    try {
      const runId = "nightly-c202802290600";
      const s = await client.wait(tenant, runId, { timeoutMs: 20_000 });
      expect(s.status).toBe("succeeded");
      expect(s.trigger).toMatchObject({ kind: "cron", schedule: "0 6 29 2 *", time: "2028-02-29T06:00:00.000Z" });
      await new Promise((r) => setTimeout(r, 1_500));
      const starts: string[] = [];
      for await (const e of store.readAll({ filter: `evt.${tenant}.workflow.*`, follow: false })) if (e.type === "RunStarted") starts.push(e.subject);
      expect(starts).toEqual([`evt.${tenant}.workflow.${runId}`]);
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe("cron trigger: missed fires", () => {
  it("a stall collapses missed fires into one late run of the latest; a restart owes it again but stores it once", async () => {
    const tenant = uniqueName("t");
    let clock = new Date("2028-03-01T10:07:30Z");
    await client.put(tenant, { name: "five", triggers: [{ cron: "*/5 * * * *", timezone: "Europe/Berlin" }], steps: [{ id: "r", kind: "script", language: "bash", source: "echo '{}'" }] });
    const starts = async (): Promise<string[]> => {
      const out: string[] = [];
      for await (const e of store.readAll({ filter: `evt.${tenant}.workflow.*`, follow: false })) if (e.type === "RunStarted") out.push(e.subject.split(".").pop()!);
      return out.sort();
    };
    const first = await startWorkflowRunner(await nats.connect(), { scripts, now: () => clock, leaseMs: 2_000 });
    try {
      // Started at 10:07:30: the 10:05 fire (within the catch-up hour, after the definition was stored) is owed.
      await client.wait(tenant, "five-c202803011005", { timeoutMs: 20_000 });
      // A stall until 10:23:10: 10:10, 10:15 and 10:20 were missed; one late run, of 10:20.
      clock = new Date("2028-03-01T10:23:10Z");
      await client.wait(tenant, "five-c202803011020", { timeoutMs: 20_000 });
    } finally {
      await first.close();
    }
    // A restart at the same time owes 10:20 again: the run id makes it the same run.
    const second = await startWorkflowRunner(await nats.connect(), { scripts, now: () => clock, leaseMs: 2_000 });
    try {
      await new Promise((r) => setTimeout(r, 2_500));
    } finally {
      await second.close();
    }
    expect(await starts()).toEqual(["five-c202803011005", "five-c202803011020"]);
  });

  it("refuses a time zone that is not IANA, naming the field", async () => {
    await expect(client.put(uniqueName("t"), { name: "tz", triggers: [{ cron: "0 9 * * *", timezone: "Mars/Base" }], steps: [{ id: "a", kind: "script", language: "bash", source: "echo 1" }] }))
      .rejects.toThrow(/triggers\[0\]\.timezone/);
  });
});

describe("capacity", () => {
  it("a runner at maxRuns takes the runs it passed over as soon as a slot frees (not at the next rescan)", async () => {
    await using own = await startTestNats();
    await ensureTopology(own.nc);
    await using c = await createWorkflowClient(own.nc);
    await using small = await startWorkflowRunner(await own.connect(), { scripts, trust, maxRuns: 2, rescanMs: 600_000, triggers: false });
    await c.put("cap", { name: "w", steps: [{ id: "a", kind: "script", language: "javascript", trusted: true, source: "function main(a) { return new Promise((r) => setTimeout(() => r(a), 100)); }" }] }, { operator: trust });
    const ids = await Promise.all(Array.from({ length: 8 }, async (_, i) => (await c.start("cap", "w", { input: i })).runId));
    const runs = await Promise.all(ids.map((id) => c.wait("cap", id, { timeoutMs: 20_000 })));
    expect(runs.map((r) => r.status)).toEqual(ids.map(() => "succeeded"));
    expect(small.active).toBe(0);
  });
});
