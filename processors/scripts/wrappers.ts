// Programs that load a step's code, hand it the input and write its JSON result to fd 3,
// so the result never mixes with what the step prints.

/** File names inside the working directory. */
export const FILES = { input: "input.json", js: "step.js", py: "step.py", sh: "step.sh", jsWrapper: ".flexcore-run.cjs", pyWrapper: ".flexcore-run.py" } as const;

/** Exit status of a wrapper when the step defines no `main`. */
export const EXIT_NO_MAIN = 70;

export const JS_WRAPPER = `"use strict";
const fs = require("node:fs");
const path = require("node:path");
const dir = process.cwd();
function writeAll(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try { off += fs.writeSync(fd, buf, off); }
    catch (e) { if (e.code !== "EAGAIN") throw e; }
  }
}
(async () => {
  const args = JSON.parse(fs.readFileSync(path.join(dir, ${JSON.stringify(FILES.input)}), "utf8"));
  const file = path.join(dir, ${JSON.stringify(FILES.js)});
  const src = fs.readFileSync(file, "utf8");
  const mod = { exports: {} };
  const load = new Function("require", "module", "exports", "__filename", "__dirname",
    src + "\\n;return typeof main === 'function' ? main : (typeof module.exports === 'function' ? module.exports : module.exports.main);");
  const main = load(require, mod, mod.exports, file, dir);
  if (typeof main !== "function") { process.stderr.write("the step defines no main(args) function\\n"); process.exit(${EXIT_NO_MAIN}); }
  const out = await main(args);
  writeAll(3, Buffer.from(JSON.stringify(out === undefined ? null : out)));
})().catch((err) => { process.stderr.write(String((err && err.stack) || err) + "\\n"); process.exit(1); });
`;

export const PY_WRAPPER = `import json, os, runpy, sys
def _flexcore_run():
    d = os.getcwd()
    with open(os.path.join(d, ${JSON.stringify(FILES.input)}), "r", encoding="utf-8") as f:
        args = json.load(f)
    ns = runpy.run_path(os.path.join(d, ${JSON.stringify(FILES.py)}), run_name="__flexcore_step__")
    main = ns.get("main")
    if not callable(main):
        sys.stderr.write("the step defines no main(args) function\\n")
        sys.exit(${EXIT_NO_MAIN})
    data = json.dumps(main(args)).encode("utf-8")
    with os.fdopen(3, "wb") as f:
        f.write(data)
_flexcore_run()
`;
