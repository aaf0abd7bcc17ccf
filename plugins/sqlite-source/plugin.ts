/**
 * The `sqlite-source` plugin: source `sqlite-table`, a SQLite table tailed after a cursor.
 * Only files inside the operator's `roots` (FLEXCORE_PLUGIN_CONFIG) are opened, read-only.
 */
import { Ajv2020 } from "ajv/dist/2020.js";
import type { ValidateFunction } from "ajv/dist/2020.js";
import { PluginInputError } from "../errors.js";
import { definePlugin } from "../sdk.js";
import type { Plugin } from "../sdk.js";
import { SQLITE_SOURCE_OPTIONS_SCHEMA, SourceOptionsError, readTable } from "./table.js";
import type { SqliteSourceOptions } from "./table.js";

let validator: ValidateFunction | undefined;

function checkOptions(options: unknown): SqliteSourceOptions {
  validator ??= new Ajv2020({ strict: true }).compile(SQLITE_SOURCE_OPTIONS_SCHEMA);
  if (!validator(options)) {
    const e = validator.errors![0]!;
    const p = e.params as { additionalProperty?: string; missingProperty?: string };
    const name = p.additionalProperty ?? p.missingProperty;
    throw new PluginInputError(`options${e.instancePath.replace(/\//gu, ".")}${name ? `.${name}` : ""}: expected ${p.additionalProperty ? "no such key" : e.message ?? "a valid value"}`);
  }
  return options as SqliteSourceOptions;
}

/** The sqlite-source plugin definition. */
export function sqliteSourcePlugin(): Plugin {
  return definePlugin({
    name: "sqlite-source",
    version: "1.0.0",
    description: "Tails a SQLite table after a cursor (read-only); FlexCore appends the rows with deterministic ids.",
    protocols: [1],
    sources: {
      "sqlite-table": {
        read(req, { config }) {
          const o = checkOptions(req.options);
          const roots = Array.isArray(config.roots) ? config.roots.filter((r): r is string => typeof r === "string") : [];
          try {
            return readTable(o, roots, req.cursor, req.max);
          } catch (err) {
            if (err instanceof SourceOptionsError) throw new PluginInputError(err.message, { cause: err });
            throw err;
          }
        },
      },
    },
  });
}
