import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { ApiError } from "../api.js";
import type { Api } from "../api.js";
import { Confirm } from "../confirm.js";
import { useConsole } from "../context.js";
import { ErrorBox } from "../error-box.js";
import { parseSse } from "../live.js";
import { can } from "../roles.js";
import { useOnDemand } from "../use-load.js";

/** A reader of a read model, as `GET /v1/projections` lists it. */
export interface ReaderView {
  readonly name: string;
  readonly description: string;
  readonly columns: Readonly<Record<string, string>>;
  readonly key: readonly string[];
  readonly defaultSort: string | null;
}

/** A read model, as `GET /v1/projections` lists it. */
export interface ProjectionView {
  readonly name: string;
  readonly description: string;
  readonly readers: readonly ReaderView[];
  readonly state: string;
  readonly lag: number | null;
  readonly rebuilding: boolean;
  readonly generation: number | null;
  readonly lastEventTime: string | null;
}

/** Operators of a filter condition (the gateway's `filter` query parameter). */
export const OPERATORS = ["eq", "ne", "gt", "gte", "lt", "lte", "prefix", "in"] as const;
type Operator = (typeof OPERATORS)[number];

interface Condition {
  readonly column: string;
  readonly op: Operator;
  readonly value: string;
}

interface RowsPage {
  readonly rows: ReadonlyArray<Record<string, unknown>>;
  readonly nextCursor: string | null;
}

const PAGE_SIZES = [10, 25, 50, 100];
const fmt = new Intl.NumberFormat("en");

/** A typed filter value: numbers for numeric columns, lists for `in`. */
function valueOf(type: string | undefined, op: Operator, raw: string): unknown {
  const one = (s: string): unknown => (type === "integer" || type === "real") && s.trim() !== "" && !Number.isNaN(Number(s)) ? Number(s) : s;
  return op === "in" ? raw.split(",").map((s) => one(s.trim())) : one(raw);
}

/** The `filter` JSON of the conditions: `{column: value}` for `eq`, else `{column: {op: value}}`, merged per column. */
export function filterOf(conditions: readonly Condition[], columns: Readonly<Record<string, string>>): Record<string, unknown> | undefined {
  const out: Record<string, Record<string, unknown>> = {};
  for (const c of conditions) {
    if (!c.column) continue;
    const top = c.column.split(".")[0]!;
    (out[c.column] ??= {})[c.op] = valueOf(columns[top], c.op, c.value);
  }
  return Object.keys(out).length === 0 ? undefined : out;
}

function cell(v: unknown): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") {
    const s = JSON.stringify(v);
    return s.length > 200 ? `${s.slice(0, 199)}…` : s;
  }
  return String(v);
}

/** Progress of a rebuild, as `POST /v1/projections/:name/rebuild` streams it: the slowest instance's figures. */
export interface RebuildProgressView {
  readonly done: number;
  readonly total: number;
  readonly eventsPerSecond: number;
  readonly etaSeconds: number | null;
  readonly phase: string;
  /** Every instance rebuilding its copy. */
  readonly instances?: ReadonlyArray<{ readonly instance: string; readonly state: string }>;
}

/** The end of a rebuild: every instance swapped its copy. */
export interface RebuildDoneView {
  readonly projection: string;
  readonly generation: number | null;
  readonly events: number;
  readonly durationMs: number;
  /** How many instances' copies were swapped. */
  readonly copies?: number;
}

interface RebuildState {
  readonly name: string;
  readonly progress: RebuildProgressView | undefined;
  readonly done: RebuildDoneView | undefined;
  readonly error: ApiError | undefined;
}

/**
 * Asks the gateway to rebuild `name` and reads the server-sent events: `progress` until
 * `done` (resolves with it) or `error` (rejects with its code).
 */
export async function runRebuild(api: Api, name: string, onProgress: (p: RebuildProgressView) => void, signal?: AbortSignal): Promise<RebuildDoneView> {
  const res = await api.streamPost(`/v1/projections/${encodeURIComponent(name)}/rebuild`, {}, signal);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const parsed = parseSse(buffer + value);
    buffer = parsed.rest;
    for (const m of parsed.messages) {
      if (m.event === "progress") onProgress(m.data as RebuildProgressView);
      else if (m.event === "done") return m.data as RebuildDoneView;
      else if (m.event === "error") {
        const e = m.data as { code: string; message: string };
        throw new ApiError(e.code, 200, e.message);
      } else if (m.event === "end") throw new ApiError("REBUILD_UNFOLLOWED", 200, `The gateway stopped following the rebuild (${(m.data as { reason?: string }).reason ?? "ended"}); it goes on in the engine: reload to see its generation`);
    }
  }
  throw new ApiError("NETWORK", 0, "The rebuild's progress stream ended early; the rebuild goes on in the engine: reload to see its generation");
}

const copies = (n: number): string => `${n} ${n === 1 ? "copy" : "copies"}`;

const seconds = (s: number): string => (s < 60 ? `${Math.ceil(s)} s` : `${Math.floor(s / 60)} min ${Math.ceil(s % 60)} s`);

/** The operator's rebuild: progress bar, rate, ETA, then the new generation. */
function RebuildStatus({ state }: { state: RebuildState }) {
  const p = state.progress;
  return (
    <section aria-labelledby="rebuild-title" class="rebuild" data-testid="rebuild">
      <h2 id="rebuild-title">Rebuild of {state.name}</h2>
      <label for="rebuild-progress">Events read</label>{" "}
      <progress id="rebuild-progress" max={p && p.total > 0 ? p.total : 1} value={state.done ? (p?.total || 1) : (p?.done ?? 0)}>
        {p ? `${p.done} of ${p.total}` : "starting"}
      </progress>
      <p role="status" aria-live="polite" data-testid="rebuild-status">
        {state.error ? "Failed." : state.done
          ? `Done: ${copies(state.done.copies ?? 1)} swapped; ${state.name} is served from generation ${state.done.generation ?? "?"} (${fmt.format(state.done.events)} events in ${seconds(state.done.durationMs / 1000)}).`
          : p ? `${fmt.format(p.done)} of ${fmt.format(p.total)} events, ${fmt.format(Math.round(p.eventsPerSecond))} events/s${p.etaSeconds !== null ? `, about ${seconds(p.etaSeconds)} left` : ""} (${p.phase}${p.instances && p.instances.length > 1 ? `; slowest of ${p.instances.length} instances, ${p.instances.filter((i) => i.state === "done").length} done` : ""}).` : "Starting…"}
      </p>
      <ErrorBox error={state.error} />
    </section>
  );
}

/** The tenant's read models: state and lag, and a query with filters, sort and paging; operators rebuild. */
export function Projections() {
  const { api, session } = useConsole();
  const operator = can(session.roles, "projection.rebuild");
  const [list, setList] = useState<readonly ProjectionView[] | undefined>();
  const [error, setError] = useState<ApiError | undefined>();
  const [chosen, setChosen] = useState<string | undefined>();
  const [reload, setReload] = useState(0);
  const [asking, setAsking] = useState<string | undefined>();
  const [rebuild, setRebuild] = useState<RebuildState | undefined>();
  const running = rebuild !== undefined && !rebuild.done && !rebuild.error;
  const statusRef = useRef<HTMLDivElement>(null);
  const start = async (name: string): Promise<void> => {
    setAsking(undefined);
    setRebuild({ name, progress: undefined, done: undefined, error: undefined });
    statusRef.current?.focus();
    try {
      const done = await runRebuild(api, name, (progress) => setRebuild((r) => (r ? { ...r, progress } : r)));
      setRebuild((r) => (r ? { ...r, done } : r));
    } catch (err) {
      setRebuild((r) => (r ? { ...r, error: err instanceof ApiError ? err : new ApiError("NETWORK", 0, (err as Error).message) } : r));
    }
    setReload((n) => n + 1);
  };
  useEffect(() => {
    let stop = false;
    api.get<{ projections: ProjectionView[] }>("/v1/projections").then(
      (r) => {
        if (stop) return;
        setList(r.projections);
        setChosen((c) => c ?? r.projections[0]?.name);
      },
      (err: ApiError) => !stop && setError(err),
    );
    return () => void (stop = true);
  }, [api, reload]);
  const projection = list?.find((p) => p.name === chosen);
  const columns = operator ? 7 : 6;

  return (
    <section aria-labelledby="page-title" class="projections">
      <h1 id="page-title" tabIndex={-1}>Projections</h1>
      <ErrorBox error={error} />
      <table data-testid="projections-table">
        <caption>Read models (state and lag are the deployment's: a projection serves every tenant)</caption>
        <thead><tr><th scope="col">Projection</th><th scope="col">State</th><th scope="col">Lag (events)</th><th scope="col">Copy</th><th scope="col">Last event applied</th><th scope="col">Query</th>{operator ? <th scope="col">Rebuild</th> : null}</tr></thead>
        <tbody>
          {!list ? <tr><td colSpan={columns}>Loading…</td></tr> : list.length === 0 ? <tr><td colSpan={columns}>No projections are served here.</td></tr> : list.map((p) => (
            <tr key={p.name}>
              <th scope="row">{p.name}<div class="muted small">{p.description}</div></th>
              <td>{p.rebuilding ? `${p.state}, rebuilding` : p.state}</td>
              <td>{p.lag === null ? "unknown" : fmt.format(p.lag)}</td>
              <td>{p.generation === null ? "—" : `generation ${p.generation}`}</td>
              <td>{p.lastEventTime ? new Date(p.lastEventTime).toLocaleString() : "—"}</td>
              <td><button type="button" aria-pressed={p.name === chosen} onClick={() => setChosen(p.name)}>{p.name === chosen ? "Querying" : "Query"}<span class="visually-hidden"> {p.name}</span></button></td>
              {operator ? <td><button type="button" class="danger" disabled={running || p.rebuilding} onClick={() => setAsking(p.name)}>Rebuild<span class="visually-hidden"> {p.name}</span></button></td> : null}
            </tr>
          ))}
        </tbody>
      </table>
      <p class="muted">
        Rebuilding a projection replaces the read model of every tenant, so it is the deployment operator's, not a tenant admin's:
        users with the <code>operator</code> role rebuild here, or run <code>flexcore projections rebuild &lt;name&gt;</code> on the deployment.
        The copy's generation goes up by one with each rebuild.
      </p>
      {asking ? (
        <Confirm title={`Rebuild ${asking}?`} action={`Rebuild ${asking}`} onConfirm={() => void start(asking)} onCancel={() => setAsking(undefined)}>
          <p>
            A new copy of <strong>{asking}</strong> is built from the first event of the store, beside the copy served now. This projection serves
            every tenant of the deployment: until the new copy has caught up, every tenant's queries are served from the old copy, then all switch to the new one at once.
          </p>
          <p>It reads every tenant's events and shares the machine with the live pipeline. One rebuild runs at a time per deployment.</p>
        </Confirm>
      ) : null}
      <div ref={statusRef} tabIndex={-1}>{rebuild ? <RebuildStatus state={rebuild} /> : null}</div>
      {projection ? <Query key={projection.name} projection={projection} /> : null}
    </section>
  );
}

function Query({ projection }: { projection: ProjectionView }) {
  const { api } = useConsole();
  const [readerName, setReaderName] = useState(projection.readers[0]?.name ?? "");
  const reader = projection.readers.find((r) => r.name === readerName) ?? projection.readers[0];
  const columns = useMemo(() => Object.keys(reader?.columns ?? {}), [reader]);
  const [conditions, setConditions] = useState<readonly Condition[]>([]);
  const [sort, setSort] = useState("");
  const [descending, setDescending] = useState(false);
  const [limit, setLimit] = useState(25);
  const [cursors, setCursors] = useState<readonly string[]>([]);
  const { data: page, error, busy, load } = useOnDemand<RowsPage>();

  const run = async (cursor: string | undefined): Promise<void> => {
    if (!reader) return;
    const q = new URLSearchParams({ reader: reader.name, limit: String(limit) });
    const filter = filterOf(conditions, reader.columns);
    if (filter) q.set("filter", JSON.stringify(filter));
    if (sort) q.set("sort", `${descending ? "-" : ""}${sort}`);
    if (cursor) q.set("cursor", cursor);
    await load(() => api.get<RowsPage>(`/v1/projections/${encodeURIComponent(projection.name)}?${q.toString()}`));
  };
  // The first page as soon as a projection is chosen.
  // eslint-disable-next-line react-hooks/exhaustive-deps
  useEffect(() => void run(undefined), [readerName]);

  const submit = (e: Event): void => {
    e.preventDefault();
    setCursors([]);
    void run(undefined);
  };
  const change = (i: number, patch: Partial<Condition>): void => setConditions((cs) => cs.map((c, j) => (j === i ? { ...c, ...patch } : c)));
  const shown = page && page.rows.length > 0 ? Object.keys(page.rows[0]!).filter((c) => c !== "tenant") : columns;

  return (
    <section aria-labelledby="query-title" class="query">
      <h2 id="query-title">Query {projection.name}</h2>
      <form onSubmit={submit} aria-label={`Query ${projection.name}`}>
        <div class="filters">
          {projection.readers.length > 1 ? (
            <div>
              <label for="q-reader">Reader</label>
              <select id="q-reader" value={readerName} onChange={(e) => { setReaderName((e.currentTarget as HTMLSelectElement).value); setConditions([]); setSort(""); setCursors([]); }}>
                {projection.readers.map((r) => <option key={r.name} value={r.name}>{r.name}</option>)}
              </select>
            </div>
          ) : null}
          <div>
            <label for="q-sort">Sort by</label>
            <select id="q-sort" value={sort} onChange={(e) => setSort((e.currentTarget as HTMLSelectElement).value)}>
              <option value="">{reader?.defaultSort ? `default (${reader.defaultSort})` : "default"}</option>
              {columns.map((c) => <option key={c} value={c}>{c}</option>)}
            </select>
          </div>
          <div class="check"><input id="q-desc" type="checkbox" checked={descending} onChange={(e) => setDescending((e.currentTarget as HTMLInputElement).checked)} /><label for="q-desc">Descending</label></div>
          <div>
            <label for="q-limit">Rows per page</label>
            <select id="q-limit" value={String(limit)} onChange={(e) => setLimit(Number((e.currentTarget as HTMLSelectElement).value))}>
              {PAGE_SIZES.map((n) => <option key={n} value={String(n)}>{n}</option>)}
            </select>
          </div>
        </div>
        <fieldset class="conditions">
          <legend>Filters</legend>
          {conditions.length === 0 ? <p class="muted">None: every row of your tenant.</p> : null}
          {conditions.map((c, i) => (
            <div class="condition" key={i}>
              <label for={`c-col-${i}`}>Column</label>
              <input id={`c-col-${i}`} list="q-columns" value={c.column} onInput={(e) => change(i, { column: (e.currentTarget as HTMLInputElement).value })} />
              <label for={`c-op-${i}`}>Operator</label>
              <select id={`c-op-${i}`} value={c.op} onChange={(e) => change(i, { op: (e.currentTarget as HTMLSelectElement).value as Operator })}>
                {OPERATORS.map((o) => <option key={o} value={o}>{o}</option>)}
              </select>
              <label for={`c-val-${i}`}>Value</label>
              <input id={`c-val-${i}`} value={c.value} onInput={(e) => change(i, { value: (e.currentTarget as HTMLInputElement).value })} />
              <button type="button" class="secondary" onClick={() => setConditions((cs) => cs.filter((_, j) => j !== i))}>Remove<span class="visually-hidden"> filter {i + 1}</span></button>
            </div>
          ))}
          <datalist id="q-columns">{columns.map((c) => <option key={c} value={c} />)}</datalist>
          <button type="button" class="secondary" onClick={() => setConditions((cs) => [...cs, { column: columns[0] ?? "", op: "eq", value: "" }])}>Add filter</button>
        </fieldset>
        <p><button type="submit" disabled={busy}>Run query</button></p>
      </form>
      <ErrorBox error={error} />
      <div class="scroll">
        <table data-testid="rows-table">
          <caption>{reader ? `${reader.name}: ${reader.description}` : "Rows"}{page ? ` — page ${cursors.length + 1}, ${page.rows.length} rows` : ""}</caption>
          <thead><tr>{shown.map((c) => <th scope="col" key={c}>{c}</th>)}</tr></thead>
          <tbody>
            {!page ? <tr><td colSpan={Math.max(1, shown.length)}>{busy ? "Loading…" : "—"}</td></tr> : page.rows.length === 0 ? <tr><td colSpan={Math.max(1, shown.length)}>No rows.</td></tr> : page.rows.map((r, i) => (
              <tr key={i}>{shown.map((c) => <td key={c}>{cell(r[c])}</td>)}</tr>
            ))}
          </tbody>
        </table>
      </div>
      <p class="pager">
        <button type="button" disabled={busy || cursors.length === 0} onClick={() => { const c = cursors.slice(0, -1); setCursors(c); void run(c.at(-1)); }}>Previous page</button>{" "}
        <button type="button" disabled={busy || !page?.nextCursor} onClick={() => { const c = [...cursors, page!.nextCursor!]; setCursors(c); void run(page!.nextCursor!); }}>Next page</button>
      </p>
    </section>
  );
}
