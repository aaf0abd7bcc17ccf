import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["**/*.test.ts"],
    exclude: ["node_modules/**", "dist/**", "data/**"],
    // Fails the test (or file) during which a promise rejection went unhandled or an exception
    // went uncaught, so the JSON report (and .ci/run's summary) counts it.
    setupFiles: ["test/fail-on-unhandled.ts"],
    // Builds the console into dist/console when it is missing or stale (the gateway serves it).
    globalSetup: ["test/console-build.global.ts"],
    // Integration tests start their own nats-server; two files at a time fit two cores.
    fileParallelism: true,
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ["default", "json"],
    outputFile: { json: ".vitest-report.json" },
  },
});
