import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { checkTenantName, InvalidOptionError } from "../../streams/index.js";
import { createWorkflowClient, nextCronTime, parseCron, startWorkflowRunner } from "../../workflows/index.js";
import type { RunState, WorkflowClient } from "../../workflows/index.js";
import { connectCli } from "../connection.js";

/** Tenant used when neither `--tenant` nor `FLEXCORE_TENANT` is given (the examples' tenant). */
export const DEFAULT_CLI_TENANT = "demo";

interface Common {
  tenant?: string;
  nats?: string;
  json?: boolean;
}

// Workflows never live in FlexCore's own tenants (`_system`): refused like any `_` tenant.
function tenantOf(opts: Common): string {
  return checkTenantName(opts.tenant ?? process.env.FLEXCORE_TENANT ?? DEFAULT_CLI_TENANT, "--tenant");
}

async function withClient<T>(opts: Common, fn: (client: WorkflowClient, nc: Awaited<ReturnType<typeof connectCli>>) => Promise<T>): Promise<T> {
  const nc = await connectCli(opts.nats);
  const client = await createWorkflowClient(nc);
  try {
    return await fn(client, nc);
  } finally {
    await client.close();
    await nc.drain();
  }
}

function printRun(s: RunState): void {
  const took = s.startedAt && s.endedAt ? ` in ${Date.parse(s.endedAt) - Date.parse(s.startedAt)} ms` : "";
  process.stdout.write(`run ${s.runId}: ${s.workflow} v${s.version} ${s.status}${took}${s.error ? ` (${s.error.message})` : ""}\n`);
  for (const st of Object.values(s.steps)) {
    const extra = st.status === "succeeded" ? ` -> ${JSON.stringify(st.output)?.slice(0, 120)}` : st.error ? ` (${st.error.message.slice(0, 160)})` : "";
    process.stdout.write(`  ${st.id.padEnd(16)} ${st.status.padEnd(10)} attempts ${st.attempt}${st.durationMs === undefined ? "" : `, ${st.durationMs} ms`}${extra}\n`);
  }
  if (s.status === "succeeded") process.stdout.write(`output: ${JSON.stringify(s.output)}\n`);
}

function parseInput(text: string | undefined): unknown {
  if (text === undefined) return null;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new InvalidOptionError("--input", text, "JSON");
  }
}

export function register(program: Command): void {
  const wf = program.command("workflows").description("durable workflows: definitions, runs, status, cancel, logs");
  const common = (c: Command): Command =>
    c.option("-t, --tenant <tenant>", `tenant (default: $FLEXCORE_TENANT or ${DEFAULT_CLI_TENANT})`).option("--nats <url>", "server URL").option("--json", "print JSON");

  common(wf.command("list").description("the tenant's workflows, latest versions")).action(async (opts: Common) => {
    await withClient(opts, async (client) => {
      const list = await client.list(tenantOf(opts));
      if (opts.json) return void process.stdout.write(`${JSON.stringify(list.map((w) => ({ name: w.name, version: w.version, storedAt: w.storedAt, triggers: w.definition.triggers, steps: w.definition.steps.map((s) => s.id) })), null, 2)}\n`);
      for (const w of list) {
        const triggers = w.definition.triggers.map((t) => (t.kind === "cron" ? `cron ${t.schedule} (next ${nextCronTime(parseCron(t.schedule), new Date())?.toISOString() ?? "never"})` : `event ${t.subject}${t.types.length ? ` ${t.types.join("|")}` : ""}`));
        process.stdout.write(`${w.name.padEnd(24)} v${String(w.version).padEnd(4)} ${w.definition.steps.length} step(s)  ${["manual", ...triggers].join(", ")}\n`);
      }
      if (list.length === 0) process.stdout.write(`no workflows for tenant ${tenantOf(opts)}\n`);
    });
  });

  common(wf.command("put").description("validate and store a YAML or JSON definition as its next version").argument("<file>", "definition file")).action(async (file: string, opts: Common) => {
    const text = await readFile(file, "utf8");
    await withClient(opts, async (client) => {
      const w = await client.put(tenantOf(opts), text);
      process.stdout.write(opts.json ? `${JSON.stringify({ name: w.name, version: w.version })}\n` : `stored ${tenantOf(opts)}/${w.name} version ${w.version}\n`);
    });
  });

  common(
    wf.command("run")
      .description("start a run (a runner, e.g. npm start, drives it; --local drives it here)")
      .argument("<workflow>", "workflow name")
      .option("-i, --input <json>", "the run's input (JSON)")
      .option("--version <n>", "definition version (default: the latest)")
      .option("-w, --wait", "wait for the run to end and print it")
      .option("--local", "drive the run in this process (implies --wait)")
      .option("--timeout <ms>", "longest wait", "600000"),
  ).action(async (name: string, opts: Common & { input?: string; version?: string; wait?: boolean; local?: boolean; timeout: string }) => {
    const input = parseInput(opts.input);
    const version = opts.version === undefined ? undefined : Number(opts.version);
    if (version !== undefined && (!Number.isInteger(version) || version < 1)) throw new InvalidOptionError("--version", opts.version, "an integer from 1 and up");
    await withClient(opts, async (client, nc) => {
      const tenant = tenantOf(opts);
      const runner = opts.local ? await startWorkflowRunner(nc, { triggers: false }) : undefined;
      try {
        const started = runner
          ? await runner.start(tenant, name, { input, ...(version ? { version } : {}) })
          : await client.start(tenant, name, { input, ...(version ? { version } : {}) });
        if (!opts.wait && !opts.local) {
          process.stdout.write(opts.json ? `${JSON.stringify(started)}\n` : `started run ${started.runId} (${name} v${started.version})\n`);
          return;
        }
        const s = await client.wait(tenant, started.runId, { timeoutMs: Number(opts.timeout) });
        if (opts.json) process.stdout.write(`${JSON.stringify(s, null, 2)}\n`);
        else printRun(s);
        if (s.status !== "succeeded") process.exitCode = 1;
      } finally {
        await runner?.close();
      }
    });
  });

  common(wf.command("status").description("a run's status and steps").argument("<runId>")).action(async (runId: string, opts: Common) => {
    await withClient(opts, async (client) => {
      const s = await client.status(tenantOf(opts), runId);
      if (opts.json) process.stdout.write(`${JSON.stringify(s, null, 2)}\n`);
      else printRun(s);
    });
  });

  common(wf.command("cancel").description("cancel a run; its running steps are killed").argument("<runId>").option("--reason <text>", "why")).action(async (runId: string, opts: Common & { reason?: string }) => {
    await withClient(opts, async (client) => {
      const s = await client.cancel(tenantOf(opts), runId, { reason: opts.reason ?? "cancelled from the CLI", by: process.env.USER ?? "cli" });
      process.stdout.write(`run ${runId}: ${s.status}\n`);
    });
  });

  common(wf.command("logs").description("a run's events with each step's stdout and stderr").argument("<runId>")).action(async (runId: string, opts: Common) => {
    await withClient(opts, async (client) => {
      const events = await client.events(tenantOf(opts), runId);
      if (opts.json) return void process.stdout.write(`${JSON.stringify(events, null, 2)}\n`);
      for (const e of events) {
        const d = e.data as Record<string, unknown>;
        const what = d.step === undefined ? "" : ` ${String(d.step)}${d.attempt === undefined ? "" : ` #${String(d.attempt)}`}`;
        const note = e.type === "StepFailed" || e.type === "RunFailed" ? ` ${(d.error as { message?: string })?.message ?? ""}` : e.type === "StepSucceeded" || e.type === "RunSucceeded" ? ` ${String(d.output ?? "")}` : e.type === "StepSkipped" ? ` ${String(d.reason)}` : "";
        process.stdout.write(`${e.time}  ${e.type}${what}${note}\n`);
        for (const stream of ["stdout", "stderr"] as const) {
          const text = d[stream];
          if (typeof text === "string" && text.length > 0) process.stdout.write(text.replace(/\n$/, "").split("\n").map((l) => `    ${stream}| ${l}`).join("\n") + "\n");
        }
      }
    });
  });
}
