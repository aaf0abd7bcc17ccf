#!/usr/bin/env node
// Entry of the sqlite-source plugin: `node dist/plugins/sqlite-source/main.js` after
// `npm run build`, `node --import tsx plugins/sqlite-source/main.ts` from the sources.
import { serve } from "../sdk.js";
import { sqliteSourcePlugin } from "./plugin.js";

await serve(sqliteSourcePlugin());
