/**
 * The `json-transform` plugin: processor `json-transform` (one output per kept input,
 * stateless and deterministic) and step `json-transform` (input `{ options, data }`, output
 * `{ kept, data }`). Options are checked here as well as by the host against the manifest's
 * schema: a bad option answers 400 naming its path.
 */
import { PluginInputError } from "../errors.js";
import type { ProcessorOutput, ProcessorRejection } from "../protocol.js";
import { definePlugin } from "../sdk.js";
import type { Plugin } from "../sdk.js";
import { DEFAULT_OUTPUT_TYPE, TransformOptionsError, compileTransform } from "./transform.js";
import type { Transform, TransformOptions } from "./transform.js";

/** Compiled transforms kept per distinct options (the host sends the same options every batch). */
const CACHE_SIZE = 64;

function cachedCompiler(): (options: unknown) => Transform {
  const cache = new Map<string, Transform>();
  return (options) => {
    const key = JSON.stringify(options ?? null);
    let t = cache.get(key);
    if (!t) {
      try {
        t = compileTransform(options);
      } catch (err) {
        if (err instanceof TransformOptionsError) throw new PluginInputError(err.message, { cause: err });
        throw err;
      }
      if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value!);
      cache.set(key, t);
    }
    return t;
  };
}

/** The json-transform plugin definition. */
export function jsonTransformPlugin(): Plugin {
  const compile = cachedCompiler();
  return definePlugin({
    name: "json-transform",
    version: "1.0.0",
    description: "Declarative pick, rename, default, cast and filter on dotted paths.",
    protocols: [1],
    processors: {
      "json-transform": {
        process(req) {
          const transform = compile(req.options);
          const type = (req.options as TransformOptions | null)?.type ?? DEFAULT_OUTPUT_TYPE;
          const outputs: ProcessorOutput[] = [];
          const rejected: ProcessorRejection[] = [];
          for (let i = 0; i < req.inputs.length; i++) {
            const r = transform(req.inputs[i]!.data);
            if (r.kept) outputs.push({ input: i, type, data: r.data });
            else if ("error" in r) rejected.push({ input: i, reason: `json-transform: cast ${r.error}`.slice(0, 1024) });
          }
          return rejected.length > 0 ? { states: {}, outputs, rejected } : { states: {}, outputs };
        },
      },
    },
    steps: {
      "json-transform": {
        run(req) {
          const input = req.input as { options?: unknown; data?: unknown } | null;
          if (typeof input !== "object" || input === null || Array.isArray(input)) throw new PluginInputError(`input: expected an object { options, data }, got ${JSON.stringify(req.input) ?? "undefined"}`);
          const r = compile(input.options)(input.data);
          if ("error" in r) throw new PluginInputError(`input.data: cast ${r.error}`);
          return { output: r.kept ? { kept: true, data: r.data } : { kept: false, data: null } };
        },
      },
    },
  });
}
