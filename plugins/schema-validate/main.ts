#!/usr/bin/env node
// Entry of the schema-validate plugin: `node dist/plugins/schema-validate/main.js` after
// `npm run build`, `node --import tsx plugins/schema-validate/main.ts` from the sources.
import { serve } from "../sdk.js";
import { schemaValidatePlugin } from "./plugin.js";

await serve(schemaValidatePlugin());
