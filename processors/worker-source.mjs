// Piscina entry when FlexCore runs from its TypeScript sources (vitest, tsx): registers
// tsx's loader in this worker thread, then loads worker.ts. Node 20 does not apply
// `--import tsx` from a worker's execArgv to the worker's own imports (checked on 20.20),
// so the hook is registered here. From dist/, the pool loads worker.js directly.
import { register } from "tsx/esm/api";

register();
const worker = await import("./worker.ts");

export default worker.default;
