import { describe, expect, it } from "vitest";
import { parseMetrics, promqlMetricNames, sumOf } from "./metrics-text.js";

describe("metrics text helpers", () => {
  it("promqlMetricNames keeps metric names and drops functions, labels, grouping, ranges, strings and keywords", () => {
    expect([...promqlMetricNames('histogram_quantile(0.99, sum by (le, route) (rate(flexcore_http_request_duration_seconds_bucket{route=~"/v1/events|x_y"}[5m])))')]).toEqual(["flexcore_http_request_duration_seconds_bucket"]);
    expect([...promqlMetricNames('count(up{job="flexcore"} == 0) or vector(0)')]).toEqual(["up"]);
    expect([...promqlMetricNames("a_total / ignoring(x) b_total offset 5m")].sort()).toEqual(["a_total", "b_total"]);
    expect([...promqlMetricNames("topk(5, max without (pod) (jetstream_stream_total_messages)) > 1e3")]).toEqual(["jetstream_stream_total_messages"]);
  });

  it("parseMetrics reads samples with labels; sumOf adds those that match", () => {
    const s = parseMetrics('# HELP x y\nx_total{a="1",b="q\\"z"} 3\nx_total{a="2"} 4\ny 1.5\n');
    expect(s).toEqual([{ name: "x_total", labels: { a: "1", b: 'q"z' }, value: 3 }, { name: "x_total", labels: { a: "2" }, value: 4 }, { name: "y", labels: {}, value: 1.5 }]);
    expect(sumOf(s, "x_total")).toBe(7);
    expect(sumOf(s, "x_total", { a: "2" })).toBe(4);
    expect(sumOf(s, "nope")).toBeUndefined();
  });
});
