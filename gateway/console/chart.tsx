import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";

/** Line colours with at least 4.5:1 contrast on white. */
const COLORS = ["#0b5cad", "#b3401a", "#1d7a3a", "#7a3db8", "#8a6100", "#0f6e73"];
const HEIGHT = 220;

/** The mark the bench waits for: the first chart drawn with data. */
export const CHART_DRAWN_MARK = "flexcore:first-chart-drawn";

export interface ChartProps {
  /** Visible title, and the chart's accessible name. */
  readonly title: string;
  /** Names of the y series (x is time in seconds). */
  readonly series: readonly string[];
  readonly data: uPlot.AlignedData;
  readonly unit: string;
}

/** A time-series line chart (uPlot). The container gets `data-drawn="true"` once drawn, for tests. */
export function Chart({ title, series, data, unit }: ChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | undefined>(undefined);
  const key = series.join("\u0000");
  useEffect(() => {
    const el = box.current;
    if (!el) return undefined;
    const u = new uPlot({
      width: Math.max(320, el.clientWidth),
      height: HEIGHT,
      series: [{ label: "time" }, ...series.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length]!, width: 2, spanGaps: false }))],
      axes: [{}, { label: unit, size: 60 }],
      scales: { y: { range: (_u, min, max) => [0, Math.max(1, max ?? min ?? 1) * 1.1] } },
      hooks: {
        draw: [() => {
          if (el.dataset.drawn) return;
          el.dataset.drawn = "true";
          if (performance.getEntriesByName(CHART_DRAWN_MARK).length === 0) performance.mark(CHART_DRAWN_MARK);
        }],
      },
    }, data, el);
    plot.current = u;
    const resize = new ResizeObserver(() => u.setSize({ width: Math.max(320, el.clientWidth), height: HEIGHT }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = undefined;
      delete el.dataset.drawn;
    };
    // The chart is made again only when its series change; new points go through setData below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key]);
  useEffect(() => {
    plot.current?.setData(data);
  }, [data]);
  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      <div ref={box} class="plot" role="img" aria-label={`${title}, ${unit}; the latest figures are in the tables`} />
    </figure>
  );
}
