/**
 * The `echo` plugin: the conformance and benchmark fixture. Every capability is named
 * `echo`; fault switches come from the operator's config (`FLEXCORE_PLUGIN_CONFIG`), see
 * {@link EchoFaults}.
 */
import { PluginInputError } from "../errors.js";
import { definePlugin } from "../sdk.js";
import type { HandlerContext, Plugin } from "../sdk.js";
import type { ProcessorOutput } from "../protocol.js";

/** Fault switches, all off by default. */
export interface EchoFaults {
  /** Exit with code 1 on the call after this many calls. */
  readonly crashAfter?: number;
  /** Never answer. */
  readonly hang?: boolean;
  /** Answer with bytes that are not JSON. */
  readonly malformed?: boolean;
  /** Answer with a reply of `oversizedBytes` (default 256 KiB). */
  readonly oversized?: boolean;
  readonly oversizedBytes?: number;
  /** Keep running on SIGTERM (only SIGKILL stops it). */
  readonly ignoreSigterm?: boolean;
  /** Write this many lines of 1 KiB on stdout per call (true: 100). */
  readonly stdoutSpam?: boolean | number;
  /** Answer every call with 400. */
  readonly reject?: boolean;
  /** Answer every call with 500 (the handler throws a plain Error). */
  readonly fail?: boolean;
  /** Wait this long (ms) before answering. */
  readonly delayMs?: number;
  /** Where the echo source ends (records are 1..sourceEnd). @default 1000 */
  readonly sourceEnd?: number;
  /**
   * Not a fault: each processor output's data gets `servedBy: {service, tenant}` (its
   * `FLEXCORE_PLUGIN_NAME` and `FLEXCORE_PLUGIN_TENANT`), so a test sees which instance served it.
   */
  readonly servedBy?: boolean;
}

let calls = 0;
const NOT_JSON = new TextEncoder().encode("{not json");

/** Applies the fault switches; returns a raw reply to send instead, if any. */
async function faults(context: HandlerContext): Promise<Uint8Array | undefined> {
  const f = context.config as EchoFaults;
  calls += 1;
  if (typeof f.crashAfter === "number" && calls > f.crashAfter) {
    context.log.error({ calls }, "crashAfter reached: exiting");
    process.exit(1);
  }
  if (f.stdoutSpam) {
    const line = `${"x".repeat(1023)}\n`;
    process.stdout.write(line.repeat(typeof f.stdoutSpam === "number" ? f.stdoutSpam : 100));
  }
  if (f.hang) await new Promise(() => undefined);
  if (typeof f.delayMs === "number" && f.delayMs > 0) await new Promise((r) => setTimeout(r, f.delayMs));
  if (f.reject) throw new PluginInputError("echo: rejected by the `reject` fault switch");
  if (f.fail) throw new Error("echo: failed by the `fail` fault switch");
  if (f.malformed) return NOT_JSON;
  if (f.oversized) {
    const size = typeof f.oversizedBytes === "number" ? f.oversizedBytes : 256 * 1024;
    return new TextEncoder().encode(JSON.stringify({ output: "x".repeat(size) }));
  }
  return undefined;
}

/** The echo plugin definition. */
export function echoPlugin(): Plugin {
  return definePlugin({
    name: "echo",
    version: "1.0.0",
    description: "Echoes what it is given: the conformance and benchmark fixture, with fault switches.",
    protocols: [1],
    processors: {
      echo: {
        async process(req, ctx) {
          const raw = await faults(ctx);
          if (raw) return raw;
          const counts = new Map<string, number>();
          const outputs: ProcessorOutput[] = [];
          for (let i = 0; i < req.inputs.length; i++) {
            const input = req.inputs[i]!;
            const before = counts.get(input.key) ?? (Object.hasOwn(req.states, input.key) ? ((req.states[input.key] as { count?: number } | null)?.count ?? 0) : 0);
            counts.set(input.key, before + 1);
            const data = (ctx.config as EchoFaults).servedBy === true ? { ...(input.data as object), servedBy: { service: process.env.FLEXCORE_PLUGIN_NAME ?? null, tenant: process.env.FLEXCORE_PLUGIN_TENANT ?? null } } : input.data;
            outputs.push({ input: i, type: "Echoed", data });
          }
          return { states: Object.fromEntries([...counts].map(([k, n]) => [k, { count: n }])), outputs };
        },
      },
    },
    steps: {
      echo: {
        async run(req, ctx) {
          return (await faults(ctx)) ?? { output: req.input };
        },
      },
    },
    sinks: {
      echo: {
        async deliver(req, ctx) {
          return (await faults(ctx)) ?? { delivered: req.events.length };
        },
      },
    },
    sources: {
      echo: {
        async read(req, ctx) {
          const raw = await faults(ctx);
          if (raw) return raw;
          const end = typeof (ctx.config as EchoFaults).sourceEnd === "number" ? (ctx.config as EchoFaults).sourceEnd! : 1000;
          const from = req.cursor === null ? 0 : Number(req.cursor);
          if (!Number.isInteger(from) || from < 0) throw new PluginInputError(`expected \`cursor\` to be null or a whole number, got ${JSON.stringify(req.cursor)}`);
          const records = [];
          for (let n = from + 1; n <= Math.min(end, from + req.max); n++) records.push({ id: `echo-${n}`, key: "echo", type: "Number", data: { n } });
          return { records, cursor: String(from + records.length) };
        },
      },
    },
  });
}
