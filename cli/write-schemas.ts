// Writes schemas/*.schema.json from the schema objects the code validates with.
// Run after changing a schema: node --import tsx cli/write-schemas.ts
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { flexcoreSchema, SCHEMA_FILES, schemaText, workflowSchema } from "./schemas.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
for (const [file, schema] of [[SCHEMA_FILES.flexcore, flexcoreSchema()], [SCHEMA_FILES.workflow, workflowSchema()]] as const) {
  await mkdir(dirname(join(root, file)), { recursive: true });
  await writeFile(join(root, file), schemaText(schema));
  console.log(`wrote ${file}`);
}
