/**
 * Vitest setup file (`setupFiles` in vitest.config.ts): an unhandled promise rejection or
 * an uncaught exception during a test file fails the test it happened in (or, between
 * tests, the file), so it is counted in the JSON report that `.ci/run` summarises, not
 * only printed as an "unhandled error" after the run.
 */
import { afterAll, afterEach } from "vitest";

const installed = Symbol.for("flexcore.test.fail-on-unhandled");
const state = globalThis as typeof globalThis & { [installed]?: Array<{ kind: string; error: unknown }> };

if (!state[installed]) {
  const seen: Array<{ kind: string; error: unknown }> = [];
  state[installed] = seen;
  process.on("unhandledRejection", (error) => seen.push({ kind: "unhandled rejection", error }));
  process.on("uncaughtException", (error) => seen.push({ kind: "uncaught exception", error }));
}

async function check(): Promise<void> {
  // Node reports an unhandled rejection after the microtasks of the turn that made it.
  await new Promise((resolve) => setImmediate(resolve));
  const seen = state[installed]!;
  if (seen.length === 0) return;
  const found = seen.splice(0);
  const lines = found.map(({ kind, error }) => `${kind}: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  throw new AggregateError(found.map((f) => f.error), `${found.length} unhandled error(s) during this test:\n${lines.join("\n")}`);
}

afterEach(check);
afterAll(check);
