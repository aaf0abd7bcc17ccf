// Runs trusted JavaScript steps inside a Piscina worker thread. Compiled functions are cached
// by source, so a step costs one call after its first run.
import { createRequire } from "node:module";
import { format } from "node:util";

export interface TrustedTask {
  readonly source: string;
  readonly input: unknown;
  readonly env: Readonly<Record<string, string>>;
  readonly maxLogBytes: number;
}

export interface TrustedReply {
  readonly ok: boolean;
  /** JSON text of the result. */
  readonly json?: string;
  readonly error?: string;
  readonly stdout: string;
  readonly stderr: string;
  readonly truncated: { readonly stdout: boolean; readonly stderr: boolean };
}

type Main = (args: unknown, ctx: { env: Readonly<Record<string, string>>; console: Console }) => unknown;
type Loader = (require: NodeJS.Require, module: { exports: unknown }, exports: unknown, console: Console) => Main | undefined;

const requireHere = createRequire(import.meta.url);
const compiled = new Map<string, Loader>();
const MAX_CACHED = 256;

class Log {
  text = "";
  truncated = false;
  constructor(readonly cap: number) {}
  write(line: string): void {
    if (this.text.length + line.length + 1 > this.cap) {
      this.truncated = true;
      this.text += `${line}\n`.slice(0, Math.max(0, this.cap - this.text.length));
    } else this.text += `${line}\n`;
  }
}

function loader(source: string): Loader {
  let fn = compiled.get(source);
  if (!fn) {
    fn = new Function("require", "module", "exports", "console",
      `${source}\n;return typeof main === "function" ? main : (typeof module.exports === "function" ? module.exports : module.exports.main);`) as Loader;
    if (compiled.size >= MAX_CACHED) compiled.delete(compiled.keys().next().value!);
    compiled.set(source, fn);
  }
  return fn;
}

export default async function runTrusted(task: TrustedTask): Promise<TrustedReply> {
  const out = new Log(task.maxLogBytes);
  const err = new Log(task.maxLogBytes);
  const log = (l: Log) => (...a: unknown[]): void => l.write(format(...a));
  const con = { ...console, log: log(out), info: log(out), debug: log(out), warn: log(err), error: log(err) } as Console;
  const finish = (ok: boolean, fields: { json?: string; error?: string }): TrustedReply => ({
    ok, ...fields, stdout: out.text, stderr: err.text, truncated: { stdout: out.truncated, stderr: err.truncated },
  });
  try {
    const mod: { exports: unknown } = { exports: {} };
    const main = loader(task.source)(requireHere, mod, mod.exports, con);
    if (typeof main !== "function") return finish(false, { error: "the step defines no main(args) function" });
    const value = await main(task.input, { env: task.env, console: con });
    const json = JSON.stringify(value === undefined ? null : value);
    return finish(true, { json });
  } catch (e) {
    return finish(false, { error: String((e as Error)?.stack ?? e) });
  }
}
