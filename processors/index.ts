// Script steps: JavaScript, Python and Bash run sandboxed (bubblewrap) or trusted (worker threads).
export { createScriptRunner, DEFAULT_SCRIPT_LIMITS, resolveLimits, SCRIPT_LANGUAGES, validateScriptSpec } from "./scripts/script-runner.js";
export { sandboxSupport } from "./scripts/sandbox.js";
export type { SandboxSupport } from "./scripts/sandbox.js";
export { SandboxUnavailableError, ScriptFailedError } from "./scripts/errors.js";
export type { ScriptLanguage, ScriptLimits, ScriptResult, ScriptRunner, ScriptRunnerOptions, ScriptSpec, ScriptStatus } from "./scripts/types.js";
