/**
 * The `schema-validate` plugin: processor `schema-validate` (options `{ schema, onInvalid }`)
 * and step `schema-validate` (input `{ schema, data }`, output `{ valid, errors }`).
 * An invalid input never fails its batch: with `onInvalid: "dlq"` it is rejected alone
 * (protocol 1's per-input `rejected`), with `"event"` it becomes an `EventInvalid` output.
 */
import { PluginInputError } from "../errors.js";
import type { ProcessorOutput, ProcessorRejection } from "../protocol.js";
import { definePlugin } from "../sdk.js";
import type { Plugin } from "../sdk.js";
import { INVALID_TYPE, SchemaOptionsError, VALID_TYPE, compileValidator, describeIssues } from "./validate.js";

const CACHE_SIZE = 64;
const MAX_REASON = 1024;

function cachedCompiler(): typeof compileValidator {
  const cache = new Map<string, ReturnType<typeof compileValidator>>();
  return (options) => {
    const key = JSON.stringify(options ?? null);
    let v = cache.get(key);
    if (!v) {
      try {
        v = compileValidator(options);
      } catch (err) {
        if (err instanceof SchemaOptionsError) throw new PluginInputError(err.message, { cause: err });
        throw err;
      }
      if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value!);
      cache.set(key, v);
    }
    return v;
  };
}

/** The schema-validate plugin definition. */
export function schemaValidatePlugin(): Plugin {
  const compile = cachedCompiler();
  return definePlugin({
    name: "schema-validate",
    version: "1.0.0",
    description: "Validates events against a JSON Schema (ajv): invalid ones dead-lettered one by one or emitted as EventInvalid.",
    protocols: [1],
    processors: {
      "schema-validate": {
        process(req) {
          const { onInvalid, validate } = compile(req.options);
          const outputs: ProcessorOutput[] = [];
          const rejected: ProcessorRejection[] = [];
          for (let i = 0; i < req.inputs.length; i++) {
            const data = req.inputs[i]!.data;
            const errors = validate(data);
            if (errors.length === 0) outputs.push({ input: i, type: VALID_TYPE, data });
            else if (onInvalid === "event") outputs.push({ input: i, type: INVALID_TYPE, data: { data, errors } });
            else rejected.push({ input: i, reason: `schema-validate: ${describeIssues(errors)}`.slice(0, MAX_REASON) });
          }
          return rejected.length > 0 ? { states: {}, outputs, rejected } : { states: {}, outputs };
        },
      },
    },
    steps: {
      "schema-validate": {
        run(req) {
          const input = req.input as { schema?: unknown; data?: unknown } | null;
          if (typeof input !== "object" || input === null || Array.isArray(input)) throw new PluginInputError(`input: expected an object { schema, data }, got ${JSON.stringify(req.input) ?? "undefined"}`);
          let validate;
          try {
            validate = compileValidator({ schema: input.schema }).validate;
          } catch (err) {
            if (err instanceof SchemaOptionsError) throw new PluginInputError(`input.${err.message.replace(/^options\./u, "")}`, { cause: err });
            throw err;
          }
          const errors = validate(input.data);
          return { output: { valid: errors.length === 0, errors } };
        },
      },
    },
  });
}
