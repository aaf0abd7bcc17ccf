import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { InvalidOptionError } from "../streams/index.js";
import { createRootLogger, lineLogger, logLevel } from "./logger.js";

function memory(): { lines: Array<Record<string, unknown>>; stream: Writable } {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { lines, stream };
}

describe("root logger", () => {
  it("LOG_LEVEL sets the level; unset is info", () => {
    expect(logLevel(undefined)).toBe("info");
    expect(logLevel("")).toBe("info");
    expect(logLevel(" DEBUG ")).toBe("debug");
    const { lines, stream } = memory();
    const log = createRootLogger({ level: "warn", destination: stream });
    log.info("hidden");
    log.warn("shown");
    return new Promise<void>((r) => setImmediate(r)).then(() => {
      expect(lines.map((l) => l.msg)).toEqual(["shown"]);
      expect(lines[0]).toMatchObject({ level: 40, name: "flexcore" });
    });
  });

  it("a bad LOG_LEVEL is refused, naming the variable, the value and the levels", () => {
    const err = (() => {
      try {
        createRootLogger({ level: "verbose" });
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(InvalidOptionError);
    expect((err as InvalidOptionError).field).toBe("LOG_LEVEL");
    expect((err as Error).message).toMatch(/LOG_LEVEL.*fatal, error, warn, info, debug, trace, silent.*"verbose"/u);
  });

  it("lineLogger writes an area's lines at their level (info unless told), without the prefix the area put there", async () => {
    const { lines, stream } = memory();
    const root = createRootLogger({ level: "info", destination: stream });
    const log = lineLogger(root.child({ area: "workflows" }));
    log("workflows: run t/r fails: boom");
    log("flexcore: projections: reading FLEX_EVENTS again from 3: gap");
    log("plain line");
    log("workflows: cron tick: boom", "warn");
    log("flexcore: processor p failed: x", "error");
    await new Promise<void>((r) => setImmediate(r));
    expect(lines.map((l) => [l.area, l.level, l.msg])).toEqual([
      ["workflows", 30, "run t/r fails: boom"],
      ["workflows", 30, "reading FLEX_EVENTS again from 3: gap"],
      ["workflows", 30, "plain line"],
      ["workflows", 40, "cron tick: boom"],
      ["workflows", 50, "processor p failed: x"],
    ]);
  });
});
