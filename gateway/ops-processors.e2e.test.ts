// GET /ops/processors: the operators' view of `flexcore processors status --json` over HTTP,
// public like /metrics (the same facts; no tenant's data).
import { describe, expect, it } from "vitest";
import { parseConfig, pipelineSections, startProcessorRuntime } from "../processors/index.js";
import { startTestGateway } from "../test/gateway.js";
import { uniqueName } from "../test/nats-server.js";

describe("GET /ops/processors", () => {
  it("shows which instance holds which partitions of a partitioned processor", async () => {
    await using t = await startTestGateway();
    const name = uniqueName("ops");
    const yaml = `processors:\n  - name: ${name}\n    kind: anomaly\n    subjects: ["evt.${name}.m.>"]\n    partitions: 2\n    scale: partitioned\n`;
    await using runtime = await startProcessorRuntime(t.nats.nc, {
      processors: parseConfig(yaml, pipelineSections({ threads: 1 })).processors,
      threads: 1,
      metricsIntervalMs: 0,
      instanceId: "ops-a",
      leaseTtlMs: 2_000,
      log: () => undefined,
    });
    let body: { processors: Array<{ processor: string; scale: string; partitions: Array<{ partition: number; owner: string | null }> }> } | undefined;
    for (let i = 0; i < 100; i++) {
      const res = await fetch(`${t.url}/ops/processors`);
      expect(res.status).toBe(200);
      body = (await res.json()) as typeof body;
      const mine = body!.processors.find((p) => p.processor === name);
      if (mine && mine.partitions.every((p) => p.owner === "ops-a")) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const mine = body!.processors.find((p) => p.processor === name)!;
    expect(mine.scale).toBe("partitioned");
    expect(mine.partitions).toEqual([{ partition: 0, owner: "ops-a", lag: 0 }, { partition: 1, owner: "ops-a", lag: 0 }]);
    expect(runtime.metrics().map((m) => m.processor)).toEqual([name]);
  }, 60_000);
});
