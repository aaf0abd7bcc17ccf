/**
 * The built-in processors by kind. Each entry is a pure module in `builtin/<kind>.ts`
 * implementing {@link ProcessorDefinition}; add one import and one list entry per kind.
 */
import type { ProcessorDefinition } from "../types.js";
import { anomaly } from "./anomaly.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- each definition has its own options and state types
type AnyDefinition = ProcessorDefinition<any, any>;

const definitions: readonly AnyDefinition[] = [
  anomaly,
];

/** Built-in processor definitions by `kind`. */
export const BUILTIN_PROCESSORS: ReadonlyMap<string, AnyDefinition> = new Map(definitions.map((d) => [d.kind, d]));
