import { Kvm } from "@nats-io/kv";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { InvokeInput, InvokeResult, ScriptRunner } from "../processors/index.js";
import { BUCKETS, eventSubject, kvKeyToken } from "../streams/index.js";
import type { PluginStepCatalog, StepDefinition } from "./definition.js";
import { StepTimeoutError } from "./errors.js";
import type { ErrorInfo } from "./events.js";
import type { RunState } from "./state.js";
import { render } from "./template.js";

/** What one attempt of a step produced. */
export type StepOutcome =
  | { readonly ok: true; readonly output: unknown; readonly durationMs: number; readonly stdout?: string; readonly stderr?: string; readonly exitCode?: number | null }
  | { readonly ok: false; readonly error: ErrorInfo; readonly durationMs: number; readonly stdout?: string; readonly stderr?: string; readonly exitCode?: number | null; /** No retry can help (a plugin's 4xx): the step fails now, whatever its retry policy. */ readonly permanent?: boolean };

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const MAX_CAS_RETRIES = 32;

interface ProcessorRecord {
  readonly state: unknown;
  /** Run that last advanced the state, and what it got: a re-run of that run's step gets the same outputs. */
  readonly lastRun: string;
  readonly outputs: unknown;
}

/**
 * What runs a processor step: `ProcessorRuntime.invoke` (its Piscina pool), so processor code
 * never runs on the event loop and an aborted call terminates its worker thread.
 */
export interface ProcessorInvoker {
  /** Validates `options` for `kind` (errors name `options.<field>`) and runs it once; `state` defaults to the kind's initial state. */
  invoke(kind: string, options: unknown, inputs: readonly InvokeInput[], state?: unknown, signal?: AbortSignal): Promise<InvokeResult>;
}

/**
 * What runs a `plugin` step: the plugin host of `flexcore up` (plugins/host.ts), injected so
 * workflows/ imports nothing of plugins/.
 */
export interface PluginStepCaller extends PluginStepCatalog {
  /** Calls the step with the run's tenant (never one from the input); throws the `FLEX_PLUGIN_*` call errors. */
  callStep(plugin: string, step: string, request: { readonly tenant: string; readonly input: unknown; readonly run: { readonly id: string; readonly workflow: string; readonly attempt: number } }, options?: { readonly timeoutMs?: number; readonly signal?: AbortSignal }): Promise<{ readonly output: unknown }>;
  /** Whether an error of `callStep` is the input's fault (a 4xx, a malformed reply): the step fails without retries. */
  isPermanent(err: unknown): boolean;
}

/** Runs steps: scripts through the script runner, processors through the processor pool with their state in `flex_state`, plugin steps through the plugin host. */
export class StepExecutor {
  readonly #scripts: ScriptRunner;
  readonly #processors: ProcessorInvoker;
  readonly #state: Promise<KV>;
  readonly #plugins: PluginStepCaller | undefined;

  constructor(nc: NatsConnection, scripts: ScriptRunner, processors: ProcessorInvoker, plugins?: PluginStepCaller) {
    this.#scripts = scripts;
    this.#processors = processors;
    this.#plugins = plugins;
    this.#state = new Kvm(nc).open(BUCKETS.state);
  }

  async run(step: StepDefinition, run: RunState, ctx: Record<string, unknown>, signal: AbortSignal): Promise<StepOutcome> {
    const started = performance.now();
    try {
      // Inside the try: a template that fails to render (an expression error) fails the attempt with its code.
      const input = step.input === undefined ? run.input : render(step.input, ctx);
      if (step.kind === "script") {
        const env = render(step.env, ctx) as Record<string, unknown>;
        const r = await this.#scripts.run({
          language: step.language,
          source: step.source,
          trusted: step.trusted,
          network: step.network,
          env: Object.fromEntries(Object.entries(env).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)])),
          limits: { ...step.limits, ...(step.timeoutMs === undefined ? {} : { timeoutMs: step.timeoutMs }) },
        }, input, { signal });
        const logs = { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode, durationMs: r.durationMs };
        if (r.status === "succeeded") return { ok: true, output: r.output, ...logs };
        // The last line of stderr is usually the exception: worth having in the error itself.
        const last = r.stderr.trim().split("\n").at(-1)?.slice(0, 300);
        return { ok: false, error: { message: `${r.status}: ${r.error ?? "the script failed"}${last ? `: ${last}` : ""}`, code: "FLEX_SCRIPT_FAILED" }, ...logs };
      }
      if (step.kind === "plugin") {
        if (!this.#plugins) return { ok: false, error: { message: `step \`${step.id}\` calls plugin ${step.plugin}, but this runner has no plugins (flexcore.yaml \`plugins:\`)`, code: "FLEX_PLUGIN_UNAVAILABLE" }, durationMs: performance.now() - started, permanent: true };
        // The tenant is the run's (its subject's), never one the input names.
        const attempt = run.steps[step.id]?.attempt ?? 1;
        try {
          const reply = await this.#plugins.callStep(step.plugin, step.step, { tenant: run.tenant, input, run: { id: run.runId, workflow: run.workflow, attempt } }, { ...(step.timeoutMs === undefined ? {} : { timeoutMs: step.timeoutMs }), signal });
          return { ok: true, output: reply.output, durationMs: performance.now() - started };
        } catch (err) {
          const e = err as { message?: string; code?: string };
          return { ok: false, error: { message: e.message ?? String(err), code: typeof e.code === "string" ? e.code : "FLEX_STEP_FAILED" }, durationMs: performance.now() - started, permanent: this.#plugins.isPermanent(err) };
        }
      }
      if (step.timeoutMs === undefined) return { ok: true, output: await this.#processor(step, run, ctx, input, signal), durationMs: performance.now() - started };
      // The abort reaches the pool: Piscina terminates the worker running the task.
      const timeout = new AbortController();
      const timer = setTimeout(() => timeout.abort(new StepTimeoutError(step.id, step.timeoutMs!)), step.timeoutMs);
      try {
        const output = await this.#processor(step, run, ctx, input, AbortSignal.any([signal, timeout.signal]));
        return { ok: true, output, durationMs: performance.now() - started };
      } catch (err) {
        if (timeout.signal.aborted) throw timeout.signal.reason;
        throw err;
      } finally {
        clearTimeout(timer);
      }
    } catch (err) {
      const e = err as { message?: string; code?: string };
      return { ok: false, error: { message: e.message ?? String(err), code: typeof e.code === "string" ? e.code : "FLEX_STEP_FAILED" }, durationMs: performance.now() - started };
    }
  }

  async #processor(step: Extract<StepDefinition, { kind: "processor" }>, run: RunState, ctx: Record<string, unknown>, data: unknown, signal: AbortSignal): Promise<unknown> {
    const trigger = run.trigger;
    const rendered = step.key === undefined ? undefined : render(step.key, ctx);
    const key = String(rendered ?? (trigger?.kind === "event" ? trigger.key : run.workflow));
    const input: InvokeInput = {
      tenant: run.tenant,
      key,
      subject: trigger?.kind === "event" ? trigger.subject : eventSubject(run.tenant, "workflow", run.runId),
      seq: trigger?.kind === "event" ? trigger.seq : 0,
      type: trigger?.kind === "event" ? trigger.type : "WorkflowInput",
      data,
      time: trigger?.kind === "event" ? trigger.time : new Date().toISOString(),
    };
    const kv = await this.#state;
    const stateKey = `wf.${kvKeyToken(run.tenant)}.${kvKeyToken(run.workflow)}.${step.id}.${key === "" ? "_" : kvKeyToken(key)}`;
    for (let i = 0; ; i++) {
      const e = await kv.get(stateKey);
      const rec = e && e.operation === "PUT" ? (JSON.parse(decoder.decode(e.value)) as ProcessorRecord) : undefined;
      if (rec?.lastRun === run.runId) return rec.outputs;
      const result = await this.#processors.invoke(step.processor, step.options, [input], rec ? rec.state : undefined, signal);
      const outputs = { outputs: result.outputs[0] ?? [] };
      const body = encoder.encode(JSON.stringify({ state: result.state, lastRun: run.runId, outputs } satisfies ProcessorRecord));
      try {
        if (e) await kv.update(stateKey, body, e.revision);
        else await kv.create(stateKey, body);
        return outputs;
      } catch (err) {
        if (i >= MAX_CAS_RETRIES) throw err;
      }
    }
  }
}
