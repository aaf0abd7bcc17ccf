/**
 * The built-in processors by kind. Each entry is a pure module in `builtin/<kind>.ts`
 * implementing {@link ProcessorDefinition}; add one import and one list entry per kind.
 */
import type { ProcessorDefinition } from "../types.js";
import { anomaly } from "./anomaly.js";
import { createAutoProcessor } from "./auto.js";
import { classify } from "./classify.js";
import { clustering } from "./clustering.js";
import { forecast } from "./forecast.js";
import { nlp } from "./nlp.js";
import { recommend } from "./recommend.js";
import { vision } from "./vision.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- each definition has its own options and state types
type AnyDefinition = ProcessorDefinition<any, any>;

const targets: readonly AnyDefinition[] = [
  anomaly,
  clustering,
  forecast,
  classify,
  nlp,
  vision,
  recommend,
];

// `auto` routes payloads to the others, so it is built from them rather than importing this module.
const definitions: readonly AnyDefinition[] = [...targets, createAutoProcessor(new Map(targets.map((d) => [d.kind, d])))];

/** Built-in processor definitions by `kind`. */
export const BUILTIN_PROCESSORS: ReadonlyMap<string, AnyDefinition> = new Map(definitions.map((d) => [d.kind, d]));
