import { useMemo, useState } from "preact/hooks";
import type uPlot from "uplot";
import { Chart } from "../chart.js";
import { useConsole } from "../context.js";
import { ErrorBox } from "../error-box.js";
import { JsonView, when } from "../json-view.js";
import { useLoad } from "../use-load.js";
import type { OverviewData } from "./overview.js";

/** What `GET /v1/processors/metrics` answers (gateway/routes/processors.ts). */
interface ProcessorMetrics {
  readonly since: string;
  readonly processors: ReadonlyArray<{
    readonly processor: string;
    readonly minutes: ReadonlyArray<{ readonly minute: string; readonly count: number; readonly errors: number; readonly throughput: number; readonly p50Ms: number | null; readonly p95Ms: number | null; readonly p99Ms: number | null }>;
  }>;
}

/** One output as `GET /v1/derived/:processor` answers it. */
interface Output {
  readonly key: string;
  readonly id: string;
  readonly type: string;
  readonly data: unknown;
  readonly time: string;
  readonly seq: number;
  readonly storedAt: string;
}

/** History shown, in minutes. */
const MINUTES = 60;
/** Metrics are per minute: read again every 30 s. */
const METRICS_POLL_MS = 30_000;
/** Outputs of one key plotted. */
const KEY_OUTPUTS = 200;
const fmt = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });

/** One x axis (the minutes any processor reported) and one series per processor. */
function perMinute(m: ProcessorMetrics | undefined, pick: (p: ProcessorMetrics["processors"][number]["minutes"][number]) => number | null): { names: string[]; data: uPlot.AlignedData } {
  const procs = m?.processors ?? [];
  // The window's start and now bound the x axis, so it always spans the window shown.
  const bounds = m ? [Date.parse(m.since) / 1000, Math.floor(Date.now() / 1000)] : [];
  const xs = [...new Set([...bounds, ...procs.flatMap((p) => p.minutes.map((x) => Date.parse(x.minute) / 1000))])].sort((a, b) => a - b);
  const series = procs.map((p) => {
    const at = new Map(p.minutes.map((x) => [Date.parse(x.minute) / 1000, pick(x)]));
    return xs.map((x) => at.get(x) ?? null);
  });
  return { names: procs.length > 0 ? procs.map((p) => p.processor) : ["no reports yet"], data: [xs, ...(series.length > 0 ? series : [[]])] as uPlot.AlignedData };
}

/** Every numeric top-level field of the outputs' data, over the time they were stored. */
function numericSeries(outputs: readonly Output[]): { names: string[]; data: uPlot.AlignedData } {
  const oldestFirst = [...outputs].sort((a, b) => a.seq - b.seq);
  const names = [...new Set(oldestFirst.flatMap((o) => (o.data && typeof o.data === "object" ? Object.entries(o.data as Record<string, unknown>).filter(([, v]) => typeof v === "number").map(([k]) => k) : [])))];
  const xs = oldestFirst.map((o) => Date.parse(o.storedAt) / 1000);
  const series = names.map((n) => oldestFirst.map((o) => {
    const v = (o.data as Record<string, unknown> | null)?.[n];
    return typeof v === "number" ? v : null;
  }));
  return { names, data: [xs, ...series] as uPlot.AlignedData };
}

/**
 * Processors: throughput and latency per minute (deployment-wide: a processor serves every
 * tenant, and only the runtime's own reports are read), your outputs and lag now, and the
 * recent outputs of a processor for your tenant, with their numeric fields plotted.
 */
export function Processors() {
  const { api } = useConsole();
  const metrics = useLoad("metrics", () => api.get<ProcessorMetrics>(`/v1/processors/metrics?minutes=${MINUTES}`), METRICS_POLL_MS);
  const overview = useLoad("overview", () => api.get<OverviewData>("/v1/overview"), 5_000);
  const names = useMemo(() => [...new Set([...(overview.data?.processors.map((p) => p.processor) ?? []), ...(metrics.data?.processors.map((p) => p.processor) ?? [])])].sort(), [overview.data, metrics.data]);
  const [chosen, setChosen] = useState<string | undefined>();
  const processor = chosen ?? names[0];
  const latest = useLoad(processor, () => api.get<{ outputs: Output[] }>(`/v1/derived/${encodeURIComponent(processor!)}`), 5_000);
  const [key, setKey] = useState<string | undefined>();
  const keyed = key !== undefined && processor !== undefined ? `${processor}\u0000${key}` : undefined;
  const ofKey = useLoad(keyed, () => api.get<{ outputs: Output[] }>(`/v1/derived/${encodeURIComponent(processor!)}?key=${encodeURIComponent(key!)}&limit=${KEY_OUTPUTS}`), 5_000);
  const throughput = useMemo(() => perMinute(metrics.data, (x) => x.throughput), [metrics.data]);
  const latency = useMemo(() => perMinute(metrics.data, (x) => x.p95Ms), [metrics.data]);
  const plotted = useMemo(() => numericSeries(ofKey.data?.outputs ?? []), [ofKey.data]);

  return (
    <section aria-labelledby="page-title">
      <h1 id="page-title" tabIndex={-1}>Processors</h1>
      <ErrorBox error={metrics.error} />
      <div class="charts">
        <Chart title={`Throughput per minute, last ${MINUTES} min (all tenants)`} unit="inputs/s" series={throughput.names} data={throughput.data} />
        <Chart title={`Latency p95 per minute, last ${MINUTES} min (all tenants)`} unit="ms" series={latency.names} data={latency.data} />
      </div>
      <p class="muted">Throughput and latency are reported by the processor runtime once a minute and cover every tenant; they carry no tenant's data. Your outputs below are your tenant's only.</p>
      <ErrorBox error={overview.error} />
      <table data-testid="processor-table">
        <caption>Processors now</caption>
        <thead><tr><th scope="col">Processor</th><th scope="col">Your outputs</th><th scope="col">Lag (all tenants)</th><th scope="col">Last minute: inputs/s</th><th scope="col">p95 ms</th></tr></thead>
        <tbody>
          {names.length === 0 ? <tr><td colSpan={5}>No processors are running.</td></tr> : names.map((n) => {
            const o = overview.data?.processors.find((p) => p.processor === n);
            const last = metrics.data?.processors.find((p) => p.processor === n)?.minutes.at(-1);
            return (
              <tr key={n}>
                <th scope="row">{n}</th>
                <td data-testid={`outputs-${n}`}>{o ? fmt.format(o.outputs) : "—"}</td>
                <td>{o ? fmt.format(o.lag) : "—"}</td>
                <td>{last ? fmt.format(last.throughput) : "—"}</td>
                <td>{last?.p95Ms != null ? fmt.format(last.p95Ms) : "—"}</td>
              </tr>
            );
          })}
        </tbody>
      </table>

      <h2>Recent outputs</h2>
      <label for="processor-pick">Processor</label>{" "}
      <select id="processor-pick" value={processor ?? ""} onChange={(e) => { setChosen((e.currentTarget as HTMLSelectElement).value); setKey(undefined); }}>
        {names.map((n) => <option key={n} value={n}>{n}</option>)}
      </select>
      <ErrorBox error={latest.error} />
      <table data-testid="latest-outputs">
        <caption>Latest output of each key</caption>
        <thead><tr><th scope="col">Key</th><th scope="col">Type</th><th scope="col">Stored</th><th scope="col">Data</th><th scope="col"><span class="sr-only">Plot</span></th></tr></thead>
        <tbody>
          {(latest.data?.outputs ?? []).length === 0 ? <tr><td colSpan={5}>No outputs for your tenant.</td></tr> : latest.data!.outputs.map((o) => (
            <tr key={o.key}>
              <th scope="row">{o.key}</th>
              <td>{o.type}</td>
              <td>{when(o.storedAt)}</td>
              <td><code class="clip">{JSON.stringify(o.data)}</code></td>
              <td><button type="button" class="secondary" aria-pressed={key === o.key} onClick={() => setKey(o.key)}>Plot {o.key}</button></td>
            </tr>
          ))}
        </tbody>
      </table>
      {key === undefined ? null : (
        <>
          <ErrorBox error={ofKey.error} />
          {plotted.names.length === 0 ? <p>The outputs of <code>{key}</code> have no numeric fields to plot.</p> : (
            <Chart title={`${processor} outputs of ${key} (numeric fields)`} unit="value" series={plotted.names} data={plotted.data} />
          )}
          {ofKey.data ? <JsonView label={`Last ${KEY_OUTPUTS} outputs of ${key}`} value={ofKey.data.outputs.slice(0, 20).map((o) => ({ seq: o.seq, time: o.time, data: o.data }))} /> : null}
        </>
      )}
    </section>
  );
}
