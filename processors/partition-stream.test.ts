import { describe, expect, it } from "vitest";
import { ConfigError, PartitionFilterError, parseConfig, pipelineSections } from "./index.js";
import { hashPartition, partitionOf, partitionRules } from "./partition-stream.js";
import { assignPartitions } from "./partitioned.js";

describe("partition rules", () => {
  it("turns filters into four-token forms with the partition of tenant and id in front", () => {
    expect(partitionRules("p", ["evt.>"], 8).map((r) => [r.src, r.dest])).toEqual([["evt.*.*.*", "part.{{partition(8,1,3)}}.evt.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}"]]);
    expect(partitionRules("p", ["evt.acme.sensor.>"], 4).map((r) => [r.src, r.dest])).toEqual([["evt.acme.sensor.*", "part.{{partition(4,1)}}.evt.acme.sensor.{{wildcard(1)}}"]]);
    expect(partitionRules("p", ["evt.*.sensor.s1"], 4).map((r) => r.dest)).toEqual(["part.{{partition(4,1)}}.evt.{{wildcard(1)}}.sensor.s1"]);
    // Tenant and id literal: one key, one fixed partition.
    expect(partitionRules("p", ["evt.acme.sensor.s1"], 4)[0]!.dest).toBe(`part.${hashPartition("acmes1", 4)}.evt.acme.sensor.s1`);
  });

  it("refuses filters outside evt.<tenant>.<category>.<id> and overlapping filters, naming the filter", () => {
    for (const bad of ["evt.a.b", "evt.a.b.c.d", "evt.a.b.c.>", "drv.a.b.c"]) {
      expect(() => partitionRules("p", [bad], 4)).toThrow(PartitionFilterError);
    }
    const err = (() => {
      try {
        partitionRules("p", ["evt.*.sensor.*", "evt.acme.>"], 4);
      } catch (e) {
        return e as PartitionFilterError;
      }
      return undefined;
    })();
    expect(err?.code).toBe("FLEX_PARTITION_FILTER");
    expect(err?.filter).toBe("evt.acme.>");
    expect(err?.message).toContain("overlaps evt.*.sensor.*");
    expect(partitionRules("p", ["evt.*.sensor.*", "evt.*.meter.*"], 4)).toHaveLength(2);
  });

  it("computes an event's partition as the server's partition() does (FNV-1a of the wildcard tokens)", () => {
    const rules = partitionRules("p", ["evt.*.sensor.*"], 16);
    expect(partitionOf(rules, "evt.acme.sensor.s1", 16)).toBe(hashPartition("acmes1", 16));
    expect(partitionOf(rules, "evt.acme.meter.s1", 16)).toBeUndefined();
    // FNV-1a 32 of "a" is 0xe40c292c.
    expect(hashPartition("a", 2 ** 31)).toBe(0xe40c292c % 2 ** 31);
  });
});

describe("assignPartitions", () => {
  it("gives every partition to exactly one member, at most ⌈n/m⌉ each, the same for any order of the members", () => {
    for (const members of [["a"], ["a", "b"], ["a", "b", "c"], ["n1", "n2", "n3", "n4"], ["x", "y", "z", "w", "v"]]) {
      const a = assignPartitions(12, members);
      const b = assignPartitions(12, [...members].reverse());
      expect([...a.entries()].sort()).toEqual([...b.entries()].sort());
      const all = [...a.values()].flat().sort((x, y) => x - y);
      expect(all).toEqual(Array.from({ length: 12 }, (_, i) => i));
      for (const ps of a.values()) expect(ps.length).toBeLessThanOrEqual(Math.ceil(12 / members.length));
    }
  });

  it("moves few partitions when a member joins", () => {
    const before = assignPartitions(64, ["a", "b", "c"]);
    const after = assignPartitions(64, ["a", "b", "c", "d"]);
    let moved = 0;
    for (const m of ["a", "b", "c"]) moved += before.get(m)!.filter((p) => !after.get(m)!.includes(p)).length;
    // The joiner's fair share is 16; a full reshuffle would move about 48.
    expect(moved).toBeLessThanOrEqual(24);
  });
});

describe("scale: in flexcore.yaml", () => {
  const sections = pipelineSections({ threads: 1 });
  const yaml = (scale: string, subjects = `["evt.*.sensor.*"]`): string => `processors:\n  - name: p\n    kind: anomaly\n    subjects: ${subjects}\n    scale: ${scale}\n`;

  it("defaults to single and takes partitioned", () => {
    expect(parseConfig(`processors:\n  - name: p\n    kind: anomaly\n    subjects: ["evt.>"]\n`, sections).processors[0]!.scale).toBe("single");
    expect(parseConfig(yaml("partitioned"), sections).processors[0]!.scale).toBe("partitioned");
  });

  it("refuses another value, and filters a partitioned processor cannot split, naming the field", () => {
    expect(() => parseConfig(yaml("elastic"), sections)).toThrow(/processors\[0\]\.scale: expected "single" or "partitioned", got "elastic"/);
    try {
      parseConfig(yaml("partitioned", `["evt.*.sensor.*", "evt.acme.>"]`), sections);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).issues[0]!.path).toBe("processors[0].subjects");
      expect((err as ConfigError).message).toContain("evt.acme.>");
    }
    // The same filters are fine for a single-instance processor.
    expect(parseConfig(yaml("single", `["evt.*.sensor.*", "evt.acme.>"]`), sections).processors).toHaveLength(1);
  });
});
