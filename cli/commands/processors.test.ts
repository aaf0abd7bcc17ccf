import { describe, expect, it } from "vitest";
import { formatStatus } from "./processors.js";

describe("flexcore processors status", () => {
  it("shows per processor the owner or the partitions of each instance, their lag and throughput, and partitions moving", () => {
    const text = formatStatus([
      { processor: "anomalies", scale: "single", owner: "host-1", lag: 12, instances: [], partitions: [] },
      {
        processor: "forecast",
        scale: "partitioned",
        owner: null,
        lag: 7,
        instances: [
          { instance: "a", partitions: [0, 2], throughput: 1500.25, processed: 10 },
          { instance: "b", partitions: [1], throughput: 0, processed: 0 },
        ],
        partitions: [
          { partition: 0, owner: "a", lag: 3 },
          { partition: 1, owner: "b", lag: 0 },
          { partition: 2, owner: "a", lag: 4 },
          { partition: 3, owner: null, lag: 0 },
        ],
      },
    ]);
    expect(text).toBe(
      "anomalies  single  owner host-1  lag 12\n" +
        "forecast  partitioned  4 partitions over 2 instance(s)  lag 7  moving: 3\n" +
        "  a  partitions 0,2  lag 7  1500.3 events/s\n" +
        "  b  partitions 1  lag 0  0.0 events/s\n",
    );
    expect(formatStatus([])).toContain("no processors");
  });
});
