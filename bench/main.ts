#!/usr/bin/env node
import { environment, printTable, writeJson } from "./harness.js";
import type { Suite } from "./harness.js";

// One entry per suite file: `npm run bench -- <name> [--json FILE]`.
const loaders: Record<string, () => Promise<Suite>> = {
  cluster: async () => (await import("./cluster.js")).suite,
  console: async () => (await import("./console.js")).suite,
  ingest: async () => (await import("./ingest.js")).suite,
  "ingest-cpu": async () => (await import("./ingest-cpu.js")).suite,
  gateway: async () => (await import("./gateway.js")).suite,
  kmeans: async () => (await import("./kmeans.js")).suite,
  "ml-quality": async () => (await import("./ml-quality.js")).suite,
  plugins: async () => (await import("./plugins.js")).suite,
  processors: async () => (await import("./processors.js")).suite,
  scaleout: async () => (await import("./scaleout.js")).suite,
  projections: async () => (await import("./projections.js")).suite,
  workflows: async () => (await import("./workflows.js")).suite,
};

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const jsonAt = argv.indexOf("--json");
  const jsonFile = jsonAt >= 0 ? argv[jsonAt + 1] : undefined;
  if (jsonAt >= 0 && !jsonFile) throw new Error("--json needs a file name");
  const rest = jsonAt >= 0 ? argv.filter((_, i) => i !== jsonAt && i !== jsonAt + 1) : argv;
  const name = rest[0];
  if (!name || !(name in loaders)) {
    process.stderr.write(`usage: npm run bench -- <suite> [--json FILE]\nsuites: ${Object.keys(loaders).join(", ")}\n`);
    process.exit(name ? 1 : 0);
  }
  const suite = await loaders[name]!();
  const env = environment();
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  log(`bench ${suite.name}: ${suite.description}`);
  const results = await suite.run({ args: rest.slice(1), log, env });
  printTable(suite.name, results);
  if (jsonFile) await writeJson(jsonFile, suite.name, env, results);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
