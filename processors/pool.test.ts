import { describe, expect, it } from "vitest";
import { createProcessorPool, workerEntry } from "./pool.js";

describe("processor pool", () => {
  it("starts its threads when the process runs with V8 heap flags (npm start passes one)", async () => {
    const saved = [...process.execArgv];
    process.execArgv.push("--max-semi-space-size=64", "--max-old-space-size=4096");
    try {
      expect(workerEntry().execArgv).toEqual(saved);
      const pool = createProcessorPool({ threads: 1 });
      try {
        await pool.warmUp();
      } finally {
        await pool.close();
      }
    } finally {
      process.execArgv.splice(0, process.execArgv.length, ...saved);
    }
  }, 60_000);
});
