import { describe, expect, it } from "vitest";
import { createMetrics } from "./metrics.js";
import type { ProcessorReading } from "./metrics.js";

const reading = (over: Partial<ProcessorReading>): ProcessorReading => ({
  processor: "p", kind: "anomaly", owner: true, processed: 0, outputs: 0, errors: 0, redelivered: 0, deadLettered: 0, inFlight: 0, queueDepth: 0, p50: 0, p95: 0, p99: 0, ...over,
});

describe("/metrics for scale-out", () => {
  it("shows the partitions this instance holds per partitioned processor, and each processor's throughput", async () => {
    const m = createMetrics({ processors: () => [reading({ processor: "fc", partitions: [1, 4], throughput: 250 }), reading({ processor: "one", throughput: 3 })] }, { defaultMetrics: false });
    const text = await m.registry.metrics();
    m.close();
    expect(text).toContain('flexcore_processor_partitions_held{processor="fc",kind="anomaly"} 2');
    expect(text).toContain('flexcore_processor_partition_held{processor="fc",kind="anomaly",partition="1"} 1');
    expect(text).toContain('flexcore_processor_partition_held{processor="fc",kind="anomaly",partition="4"} 1');
    // A single-instance processor has no partitions series.
    expect(text).not.toContain('partitions_held{processor="one"');
    expect(text).toContain('flexcore_processor_throughput_events_per_second{processor="fc",kind="anomaly"} 250');
    expect(text).toContain('flexcore_processor_throughput_events_per_second{processor="one",kind="anomaly"} 3');
  });
});
