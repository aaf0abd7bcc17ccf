#!/usr/bin/env node
// Entry of the http-sink plugin: `node dist/plugins/http-sink/main.js` after
// `npm run build`, `node --import tsx plugins/http-sink/main.ts` from the sources.
import { serve } from "../sdk.js";
import { httpSinkPlugin } from "./plugin.js";

await serve(httpSinkPlugin());
