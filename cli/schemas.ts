/**
 * The published JSON Schemas of `flexcore.yaml` and of workflow definitions, assembled from
 * the schema objects each area validates with, so an editor (yaml-language-server) checks
 * and completes exactly what `flexcore up` and the workflow API accept. The files in
 * `schemas/` are written from here (`node --import tsx cli/write-schemas.ts`) and a
 * test keeps them equal.
 */
import { GATEWAY_SCHEMA } from "../gateway/index.js";
import { PLUGINS_SCHEMA, SINK_SCHEMA, SOURCE_SCHEMA } from "../plugins/index.js";
import { BUILTIN_PROCESSORS, PROCESSOR_SCHEMA, PROCESSORS_SCHEMA, RUNTIME_SCHEMA } from "../processors/index.js";
import { SCHEMA_DIALECT } from "../streams/index.js";
import type { JsonSchema } from "../streams/index.js";
import { WORKFLOW_SCHEMA, WORKFLOWS_SCHEMA } from "../workflows/index.js";

/** Where the published schemas live, relative to the project root. */
export const SCHEMA_FILES = { flexcore: "schemas/flexcore.schema.json", workflow: "schemas/workflow.schema.json" } as const;

/**
 * The schema of `flexcore.yaml`: the sections `flexcore up` validates, with each built-in
 * processor kind's options (kinds loaded from modules keep free-form options here; their
 * own `validateOptions` checks them at start).
 */
export function flexcoreSchema(): JsonSchema {
  const kinds = [...BUILTIN_PROCESSORS.values()].filter((d) => d.optionsSchema !== undefined);
  // Each kind's options once, under $defs; `auto` embeds the others' objects, which become references.
  const refs = new Map<unknown, string>(kinds.map((d) => [d.optionsSchema, `#/$defs/${d.kind}-options`]));
  const byRef = (node: unknown, top: boolean): unknown => {
    if (!top && refs.has(node)) return { $ref: refs.get(node) };
    if (Array.isArray(node)) return node.map((n) => byRef(n, false));
    if (node !== null && typeof node === "object") return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, byRef(v, false)]));
    return node;
  };
  const byKind = kinds.map((d) => ({ if: { properties: { kind: { const: d.kind } }, required: ["kind"] }, then: { properties: { options: { $ref: refs.get(d.optionsSchema) } } } }));
  return {
    $schema: SCHEMA_DIALECT,
    title: "FlexCore pipeline configuration (flexcore.yaml)",
    type: "object",
    additionalProperties: false,
    properties: {
      runtime: RUNTIME_SCHEMA,
      processors: { ...PROCESSORS_SCHEMA, items: { ...PROCESSOR_SCHEMA, allOf: byKind } },
      workflows: WORKFLOWS_SCHEMA,
      gateway: GATEWAY_SCHEMA,
      plugins: PLUGINS_SCHEMA,
      sinks: { type: "array", items: SINK_SCHEMA, default: [] },
      sources: { type: "array", items: SOURCE_SCHEMA, default: [] },
    },
    // A definition's own `default: {}` says nothing at the root (the `options` key has it).
    $defs: Object.fromEntries(kinds.map((d) => [`${d.kind}-options`, byRef({ ...d.optionsSchema, default: undefined }, true)])),
  };
}

/** The schema of a workflow definition (YAML or JSON). */
export function workflowSchema(): JsonSchema {
  return WORKFLOW_SCHEMA;
}

/** A schema as written to its file. */
export function schemaText(schema: JsonSchema): string {
  return `${JSON.stringify(schema, null, 2)}\n`;
}
