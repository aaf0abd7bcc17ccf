import { useEffect, useMemo, useState } from "preact/hooks";
import type uPlot from "uplot";
import type { ApiError } from "../api.js";
import { Chart } from "../chart.js";
import { useConsole } from "../context.js";
import { ErrorBox } from "../error-box.js";
import type { Overview } from "../../api-types.js";

/** What `GET /v1/overview` answers: the gateway's own type. */
export type OverviewData = Overview;

/** How often the overview is read, in ms. */
export const POLL_MS = 2_000;
/** Readings kept for the charts: 5 minutes at one every 2 s. */
const HISTORY = 150;

interface Sample {
  /** Seconds since the epoch. */
  readonly t: number;
  readonly data: OverviewData;
}

const ALL = "all processors";

/** Rates between consecutive samples: events/s, and outputs/s per processor. */
function rates(samples: readonly Sample[]): { ingest: uPlot.AlignedData; throughput: uPlot.AlignedData; names: string[] } {
  const last = samples.at(-1)?.data;
  const names = last && last.processors.length > 0 ? last.processors.map((p) => p.processor) : [ALL];
  const xs: number[] = [];
  const ingest: Array<number | null> = [];
  const per = names.map(() => [] as Array<number | null>);
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i]!;
    const prev = samples[i - 1];
    xs.push(s.t);
    const dt = prev ? s.t - prev.t : 0;
    ingest.push(prev && dt > 0 ? Math.max(0, (s.data.events - prev.data.events) / dt) : null);
    names.forEach((name, j) => {
      const outputs = (d: OverviewData): number | undefined => (name === ALL ? d.derived : d.processors.find((p) => p.processor === name)?.outputs);
      const a = prev ? outputs(prev.data) : undefined;
      const b = outputs(s.data);
      per[j]!.push(a !== undefined && b !== undefined && dt > 0 ? Math.max(0, (b - a) / dt) : null);
    });
  }
  return { ingest: [xs, ingest], throughput: [xs, ...per], names };
}

const fmt = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });

/** Ingest rate, processor throughput, projection lags, dead letters and plugin health, read every 2 s. */
export function Overview() {
  const { api } = useConsole();
  const [samples, setSamples] = useState<readonly Sample[]>([]);
  const [error, setError] = useState<ApiError | undefined>();
  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = async (): Promise<void> => {
      // A hidden tab costs the gateway nothing.
      if (!document.hidden) {
        try {
          const data = await api.get<OverviewData>("/v1/overview");
          if (stopped) return;
          setSamples((old) => [...old.slice(-(HISTORY - 1)), { t: Date.now() / 1000, data }]);
          setError(undefined);
        } catch (err) {
          if (stopped) return;
          setError(err as ApiError);
        }
      }
      if (!stopped) timer = setTimeout(() => void tick(), POLL_MS);
    };
    void tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [api]);
  const chart = useMemo(() => rates(samples), [samples]);
  const now = samples.at(-1)?.data;
  const ingestNow = chart.ingest[1]?.at(-1);
  const dead = now?.deadLetters.reduce((n, d) => n + d.count, 0) ?? 0;

  return (
    <section aria-labelledby="page-title" class="overview">
      <h1 id="page-title" tabIndex={-1}>Overview</h1>
      <ErrorBox error={error} />
      {now === undefined ? <p aria-live="polite">Loading…</p> : (
        <>
          <dl class="stats" aria-live="off">
            <div><dt>Events stored</dt><dd data-testid="events">{fmt.format(now.events)}</dd></div>
            <div><dt>Ingest rate</dt><dd data-testid="ingest-rate">{ingestNow === null || ingestNow === undefined ? "…" : `${fmt.format(ingestNow)} /s`}</dd></div>
            <div><dt>Processor outputs</dt><dd data-testid="derived">{fmt.format(now.derived)}</dd></div>
            <div><dt>Dead letters</dt><dd data-testid="dead-letters">{fmt.format(dead)}</dd></div>
          </dl>
          <div class="charts">
            <Chart title="Ingest rate" unit="events/s" series={["events/s"]} data={chart.ingest} />
            <Chart title="Processor throughput" unit="outputs/s" series={chart.names} data={chart.throughput} />
          </div>
          <div class="tables">
            <table>
              <caption>Processors (lag over all tenants)</caption>
              <thead><tr><th scope="col">Processor</th><th scope="col">Your outputs</th><th scope="col">Lag</th></tr></thead>
              <tbody>
                {now.processors.length === 0 ? <tr><td colSpan={3}>No processors are running.</td></tr> : now.processors.map((p) => (
                  <tr key={p.processor}><th scope="row">{p.processor}</th><td>{fmt.format(p.outputs)}</td><td>{fmt.format(p.lag)}</td></tr>
                ))}
              </tbody>
            </table>
            <table>
              <caption>Projection lag (events, all tenants)</caption>
              <thead><tr><th scope="col">Projection</th><th scope="col">Lag</th></tr></thead>
              <tbody>
                {now.projections.length === 0 ? <tr><td colSpan={2}>No projections are served here.</td></tr> : now.projections.map((p) => (
                  <tr key={p.name}><th scope="row">{p.name}</th><td>{fmt.format(p.lag)}</td></tr>
                ))}
              </tbody>
            </table>
            <table data-testid="dlq-table">
              <caption>Dead letters by source</caption>
              <thead><tr><th scope="col">Source</th><th scope="col">Messages</th><th scope="col">Redrives pending</th></tr></thead>
              <tbody>
                {now.deadLetters.length === 0 ? <tr><td colSpan={3}>None.</td></tr> : now.deadLetters.map((d) => (
                  <tr key={d.source}><th scope="row">{d.source}</th><td>{fmt.format(d.count)}</td><td>{fmt.format(d.redrivePending)}</td></tr>
                ))}
              </tbody>
            </table>
            {now.plugins === null ? null : (
              <table>
                <caption>Plugins</caption>
                <thead><tr><th scope="col">Plugin</th><th scope="col">State</th><th scope="col">Enabled</th><th scope="col">Restarts</th></tr></thead>
                <tbody>
                  {now.plugins.length === 0 ? <tr><td colSpan={4}>None.</td></tr> : now.plugins.map((p) => (
                    <tr key={p.name}><th scope="row">{p.name}</th><td>{p.state}</td><td>{p.enabled ? "yes" : "no"}</td><td>{p.restarts}</td></tr>
                  ))}
                </tbody>
              </table>
            )}
          </div>
          <p class="muted">Read at {new Date(now.at).toLocaleTimeString()}, every {POLL_MS / 1000} s.</p>
        </>
      )}
    </section>
  );
}
