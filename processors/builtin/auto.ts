/**
 * `auto`: looks at each payload and hands it to the processor that fits its shape:
 *
 * | shape | route | default kind |
 * |---|---|---|
 * | `"text"` or `{ text }` | `text` | `nlp` |
 * | `{ png }`, `{ width, height, pixels }`, `{ image }` | `image` | `vision` |
 * | `{ user, item? }` | `interactions` | `recommend` |
 * | `{ label?, features }` or `{ label, <name>: number, ... }` | `row` | `classify` |
 * | `42` or `{ value: 42 }` | `series` | `forecast` |
 * | `[1, 2, 3]` or `{ point }` | `vector` | `clustering` |
 *
 * Each target keeps its own state per key inside this processor's state; consecutive
 * inputs of one route go to the target as one batch, so order per key holds.
 */
import { compileSchema, InvalidEventError, pathAt } from "../../streams/index.js";
import { checkOptions, enumSchema, objectSchema } from "../options.js";
import type { ProcessorDefinition, ProcessorInput, ProcessorOutput } from "../types.js";
import { badInput, isRecord } from "./input-checks.js";

export const ROUTES = ["text", "image", "interactions", "row", "series", "vector"] as const;
export type Route = (typeof ROUTES)[number];

export const DEFAULT_ROUTES: Readonly<Record<Route, string>> = {
  text: "nlp",
  image: "vision",
  interactions: "recommend",
  row: "classify",
  series: "forecast",
  vector: "clustering",
};

/** Options of the `auto` processor (validated, frozen). */
export interface AutoOptions {
  /** Kind per route; e.g. `{ series: anomaly }`. @default DEFAULT_ROUTES */
  readonly routes: Readonly<Record<Route, string>>;
  /** Validated options per target kind (`options.forecast.period`, ...). @default each kind's defaults */
  readonly options: Readonly<Record<string, unknown>>;
  /** What to do with a payload of no known shape: `error` (retried, then dead-lettered) or `skip` (no output). @default "error" */
  readonly unknown: "error" | "skip";
}

/** Per-key state: each target kind's own state, created on first use. */
export type AutoState = Record<string, unknown>;

/** The route of a payload, or `null` when no shape matches. */
export function routeOf(data: unknown): Route | null {
  if (typeof data === "string") return "text";
  if (typeof data === "number") return "series";
  if (Array.isArray(data)) return data.length > 0 && data.every((x) => typeof x === "number") ? "vector" : null;
  if (!isRecord(data)) return null;
  if (typeof data["text"] === "string") return "text";
  if (typeof data["png"] === "string" || isRecord(data["image"]) || (Array.isArray(data["pixels"]) && data["width"] !== undefined)) return "image";
  if (data["user"] !== undefined) return "interactions";
  if (data["features"] !== undefined || data["label"] !== undefined) return "row";
  if (typeof data["value"] === "number") return "series";
  if (Array.isArray(data["point"]) || Array.isArray(data["vector"])) return "vector";
  return null;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- targets have their own option and state types
type AnyDefinition = ProcessorDefinition<any, any>;

/** Builds `auto` over the given target kinds (the registry passes the other built-ins). */
export function createAutoProcessor(targets: ReadonlyMap<string, AnyDefinition>): ProcessorDefinition<AutoOptions, AutoState> {
  const target = (kind: string): AnyDefinition => {
    const t = targets.get(kind);
    if (!t) throw new Error(`auto: no target processor ${kind}`);
    return t;
  };
  const kinds = [...targets.keys()];
  // Each target's own options schema, so the published schema completes them too.
  const targetOptions = Object.fromEntries(kinds.map((kind) => [kind, targets.get(kind)!.optionsSchema ?? { type: "object" }]));
  const validator = compileSchema<{ routes: Record<Route, string>; options: Record<string, unknown>; unknown: "error" | "skip" }>(objectSchema({
    routes: objectSchema(Object.fromEntries(ROUTES.map((route) => [route, enumSchema(kinds, DEFAULT_ROUTES[route])]))),
    options: objectSchema(targetOptions),
    unknown: enumSchema(["error", "skip"], "error"),
  }));
  return {
    kind: "auto",
    description: "Routes each payload by its shape (numeric series, vector, text, image, interactions, labelled row) to the matching built-in processor.",
    validateOptions(raw, path) {
      const o = checkOptions(validator, raw, path);
      const optionsPath = pathAt(path, "options");
      const used = [...new Set(Object.values(o.routes))];
      const options = Object.fromEntries(used.map((kind) => [kind, target(kind).validateOptions(o.options[kind], pathAt(optionsPath, kind))]));
      return Object.freeze({ routes: Object.freeze(o.routes), options: Object.freeze(options), unknown: o.unknown });
    },
    optionsSchema: validator.schema,
    initialState() {
      return {};
    },
    process(prev, inputs, options) {
      const state: AutoState = { ...prev };
      const outputs: (readonly ProcessorOutput[])[] = new Array(inputs.length);
      let i = 0;
      while (i < inputs.length) {
        const route = routeOf(inputs[i]!.data);
        if (route === null) {
          if (options.unknown === "error") throw badInput(`inputs[${i}].data`, inputs[i]!.data, "a text, image, interaction, labelled row, number or number array (see the auto processor's routes)");
          outputs[i++] = [];
          continue;
        }
        let end = i + 1;
        while (end < inputs.length && routeOf(inputs[end]!.data) === route) end++;
        const kind = options.routes[route];
        const def = target(kind);
        const opts = options.options[kind];
        const run: ProcessorInput[] = inputs.slice(i, end);
        let result;
        try {
          result = def.process(state[kind] ?? def.initialState(opts, run[0]!.key), run, opts);
        } catch (err) {
          // Field names inside the run count from its start; renumber them for the batch.
          if (err instanceof InvalidEventError && i > 0) {
            const field = err.field.replace(/^inputs\[(\d+)\]/, (_, n: string) => `inputs[${Number(n) + i}]`);
            err.message = err.message.replace(err.field, field);
            Object.defineProperty(err, "field", { value: field });
          }
          throw err;
        }
        state[kind] = result.state;
        result.outputs.forEach((o, k) => (outputs[i + k] = o));
        i = end;
      }
      return { state, outputs };
    },
  };
}
