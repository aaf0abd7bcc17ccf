/**
 * The Python SDK FlexCore provides to Python plugins whose manifest says `sdk: python`: the
 * one file `plugins/python/flexcore_plugin.py`, mounted read-only into the sandbox and put
 * first on `PYTHONPATH`, so no bundle carries (and no bundle can drift from) a copy.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** Where the SDK's folder is mounted inside a plugin's sandbox (read-only). */
export const PYTHON_SDK_MOUNT = "/flexcore/sdk/python";
/** The SDK's one file. */
export const PYTHON_SDK_FILE = "flexcore_plugin.py";

let cached: string | undefined;

/**
 * The host folder holding {@link PYTHON_SDK_FILE}: `plugins/python/` of this FlexCore, found
 * from this module whether it runs from the sources or from `dist/plugins/` (tsc copies no
 * `.py`, so the package's own `plugins/python/` is used).
 */
export function pythonSdkDir(): string {
  if (cached) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, "plugins", "python");
    const here = join(dir, "python");
    for (const c of [here, candidate]) {
      if (existsSync(join(c, PYTHON_SDK_FILE))) return (cached = c);
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`Cannot find FlexCore's Python SDK (plugins/python/${PYTHON_SDK_FILE}) above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

/** `PYTHONPATH` with the SDK's folder (`sdkDir`, a host or sandbox path) first, before `existing`. */
export function pythonPathWithSdk(sdkDir: string, existing: string | undefined): string {
  return existing ? `${sdkDir}:${existing}` : sdkDir;
}
