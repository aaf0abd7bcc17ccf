#!/usr/bin/env node
// Entry of the json-transform plugin: `node dist/plugins/json-transform/main.js` after
// `npm run build`, `node --import tsx plugins/json-transform/main.ts` from the sources.
import { serve } from "../sdk.js";
import { jsonTransformPlugin } from "./plugin.js";

await serve(jsonTransformPlugin());
