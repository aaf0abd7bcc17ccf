import { useEffect, useRef, useState } from "preact/hooks";
import type { ApiError } from "../api.js";
import { useConsole } from "../context.js";
import { ErrorBox } from "../error-box.js";
import { useLiveFeed } from "../live.js";
import type { SseMessage } from "../live.js";
import { useOnDemand } from "../use-load.js";

/** An event as `GET /v1/events` and `/v1/events/live` show it. */
export interface ExplorerEvent {
  readonly category: string;
  readonly stream: string;
  readonly id: string;
  readonly type: string;
  readonly data: unknown;
  readonly time: string;
  readonly seq: number;
  readonly revision: number | null;
  readonly storedAt: string;
}

interface EventsPage {
  readonly events: readonly ExplorerEvent[];
  readonly next: string | null;
  readonly scannedTo: number | null;
}

interface Filter {
  readonly category: string;
  readonly id: string;
  readonly type: string;
  /** `datetime-local` values (the browser's time zone). */
  readonly since: string;
  readonly until: string;
  readonly limit: number;
}

/** Events kept in the live tail, newest first. */
const TAIL_MAX = 100;
const PAGE_SIZES = [25, 50, 100, 250];

const EMPTY: Filter = { category: "", id: "", type: "", since: "", until: "", limit: 50 };

/** The query string of a filter (empty fields left out; local times as RFC 3339 UTC). */
function queryOf(f: Filter, withRange: boolean): URLSearchParams {
  const q = new URLSearchParams();
  if (f.category) q.set("category", f.category);
  if (f.id) q.set("id", f.id);
  if (f.type) q.set("type", f.type);
  if (withRange) {
    if (f.since) q.set("since", new Date(f.since).toISOString());
    if (f.until) q.set("until", new Date(f.until).toISOString());
    q.set("limit", String(f.limit));
  }
  return q;
}

function json(value: unknown, max = 160): string {
  const s = JSON.stringify(value) ?? "null";
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

const time = (iso: string): string => new Date(iso).toLocaleString();

/** Browse the tenant's events, follow them live, and travel back in an aggregate's history. */
export function Events() {
  const { api } = useConsole();
  const [draft, setDraft] = useState<Filter>(EMPTY);
  const [applied, setApplied] = useState<Filter>(EMPTY);
  const [cursors, setCursors] = useState<readonly string[]>([]);
  const { data: page, error, busy, load: loadPage } = useOnDemand<EventsPage>();
  const [aggregate, setAggregate] = useState<{ category: string; id: string } | undefined>();
  const [tailOn, setTailOn] = useState(false);
  const [tail, setTail] = useState<readonly ExplorerEvent[]>([]);

  const load = (f: Filter, cursor: string | undefined): Promise<void> =>
    loadPage(() => {
      const q = queryOf(f, true);
      if (cursor) q.set("cursor", cursor);
      return api.get<EventsPage>(`/v1/events?${q.toString()}`);
    });
  useEffect(() => void load(EMPTY, undefined), [api]);

  const search = (e: Event): void => {
    e.preventDefault();
    setApplied(draft);
    setCursors([]);
    void load(draft, undefined);
  };
  const next = (): void => {
    if (!page?.next) return;
    const c = [...cursors, page.next];
    setCursors(c);
    void load(applied, page.next);
  };
  const previous = (): void => {
    const c = cursors.slice(0, -1);
    setCursors(c);
    void load(applied, c.at(-1));
  };

  const tailPath = tailOn ? `/v1/events/live?${queryOf(applied, false).toString()}` : undefined;
  const live = useLiveFeed(api, tailPath, (m: SseMessage) => {
    if (m.event === "event") setTail((old) => [m.data as ExplorerEvent, ...old].slice(0, TAIL_MAX));
  });
  const field = (name: keyof Filter) => (e: Event): void => {
    const v = (e.currentTarget as HTMLInputElement).value;
    setDraft((d) => ({ ...d, [name]: name === "limit" ? Number(v) : v }));
  };

  return (
    <section aria-labelledby="page-title" class="explorer">
      <h1 id="page-title" tabIndex={-1}>Event explorer</h1>
      <form class="filters" onSubmit={search} aria-label="Event filter">
        <div><label for="f-category">Category</label><input id="f-category" value={draft.category} onInput={field("category")} maxLength={128} placeholder="any" /></div>
        <div><label for="f-id">Aggregate id</label><input id="f-id" value={draft.id} onInput={field("id")} maxLength={128} placeholder="any" /></div>
        <div><label for="f-type">Type</label><input id="f-type" value={draft.type} onInput={field("type")} maxLength={256} placeholder="any" /></div>
        <div><label for="f-since">Stored from</label><input id="f-since" type="datetime-local" step={1} value={draft.since} onInput={field("since")} /></div>
        <div><label for="f-until">Stored until</label><input id="f-until" type="datetime-local" step={1} value={draft.until} onInput={field("until")} /></div>
        <div>
          <label for="f-limit">Per page</label>
          <select id="f-limit" value={String(draft.limit)} onChange={field("limit")}>
            {PAGE_SIZES.map((n) => <option key={n} value={String(n)}>{n}</option>)}
          </select>
        </div>
        <div class="actions"><button type="submit" disabled={busy}>Search</button></div>
      </form>
      <p class="muted">Your tenant's events only (<code>evt.&lt;tenant&gt;.&lt;category&gt;.&lt;id&gt;</code>), oldest first. Category and id are single names: no dots or wildcards.</p>
      <ErrorBox error={error} />

      <div class="tail">
        <h2>Live tail</h2>
        <p>
          <button type="button" aria-pressed={tailOn} onClick={() => { setTailOn(!tailOn); if (!tailOn) setTail([]); }}>
            {tailOn ? "Stop live tail" : "Start live tail"}
          </button>{" "}
          <span data-testid="tail-state" class="muted">{tailOn ? live.state : "off"}</span>
          {tailOn ? <span class="muted"> — new events matching the category, id and type above, newest first</span> : null}
        </p>
        <ErrorBox error={live.error} />
        {tailOn ? (
          <div class="tail-list" role="log" aria-live="polite" aria-label="New events" data-testid="tail">
            {tail.length === 0 ? <p class="muted">Waiting for events…</p> : (
              <ol>
                {tail.map((e) => (
                  <li key={e.seq}><code>{e.seq}</code> {time(e.storedAt)} <strong>{e.category}/{e.stream}</strong> {e.type} <code>{json(e.data, 100)}</code></li>
                ))}
              </ol>
            )}
          </div>
        ) : null}
      </div>

      <table data-testid="events-table">
        <caption>Events{page ? ` (${page.events.length} on this page)` : ""}</caption>
        <thead><tr><th scope="col">Seq</th><th scope="col">Stored</th><th scope="col">Aggregate</th><th scope="col">Type</th><th scope="col">Data</th></tr></thead>
        <tbody>
          {!page ? <tr><td colSpan={5}>{busy ? "Loading…" : "—"}</td></tr> : page.events.length === 0 ? <tr><td colSpan={5}>No events on this page.</td></tr> : page.events.map((e) => (
            <tr key={e.seq}>
              <td>{e.seq}</td>
              <td>{time(e.storedAt)}</td>
              <td><button type="button" class="link" onClick={() => setAggregate({ category: e.category, id: e.stream })} aria-label={`History of ${e.category}/${e.stream}`}>{e.category}/{e.stream}</button></td>
              <td>{e.type}</td>
              <td><code>{json(e.data)}</code></td>
            </tr>
          ))}
        </tbody>
      </table>
      <p class="pager">
        <button type="button" onClick={previous} disabled={busy || cursors.length === 0}>Previous page</button>{" "}
        <button type="button" onClick={next} disabled={busy || !page?.next}>Next page</button>{" "}
        {page && page.next && page.events.length < applied.limit ? <span class="muted">Read up to sequence {page.scannedTo}; more may follow.</span> : null}
      </p>

      {aggregate ? <History category={aggregate.category} id={aggregate.id} onClose={() => setAggregate(undefined)} /> : null}
    </section>
  );
}

interface StateView {
  readonly state: unknown;
  readonly revision: number;
  readonly seq: number;
}

/** An aggregate's events, its state as of one of them (or a time) beside its current state. */
function History({ category, id, onClose }: { category: string; id: string; onClose: () => void }) {
  const { api } = useConsole();
  const [events, setEvents] = useState<readonly ExplorerEvent[]>([]);
  const [current, setCurrent] = useState<StateView | undefined>();
  const [asOf, setAsOf] = useState<string>("");
  const [asOfTime, setAsOfTime] = useState<string>("");
  const [past, setPast] = useState<StateView | undefined>();
  const [error, setError] = useState<ApiError | undefined>();
  const base = `/v1/streams/${encodeURIComponent(category)}/${encodeURIComponent(id)}`;
  const title = useRef<HTMLHeadingElement>(null);
  // Opening a history moves the focus to it, so keyboard users land where it appeared.
  useEffect(() => title.current?.focus(), [base]);

  useEffect(() => {
    let stop = false;
    setPast(undefined);
    setAsOf("");
    setAsOfTime("");
    void (async () => {
      try {
        const [h, s] = await Promise.all([
          api.get<{ events: ExplorerEvent[] }>(`${base}?direction=backward&limit=100`),
          api.get<StateView>(`${base}?view=state`),
        ]);
        if (stop) return;
        setEvents(h.events);
        setCurrent(s);
        setError(undefined);
      } catch (err) {
        if (!stop) setError(err as ApiError);
      }
    })();
    return () => void (stop = true);
  }, [api, base]);

  const travel = async (point: string): Promise<void> => {
    if (!point) return setPast(undefined);
    try {
      setPast(await api.get<StateView>(`${base}?view=state&asOf=${encodeURIComponent(point)}`));
      setError(undefined);
    } catch (err) {
      setPast(undefined);
      setError(err as ApiError);
    }
  };

  return (
    <section class="history" aria-labelledby="history-title">
      <h2 id="history-title" tabIndex={-1} ref={title}>History of {category}/{id}</h2>
      <p><button type="button" onClick={onClose}>Close history</button></p>
      <ErrorBox error={error} />
      <div class="travel">
        <label for="as-of">State as of revision</label>
        <select id="as-of" value={asOf} onChange={(e) => { const v = (e.currentTarget as HTMLSelectElement).value; setAsOf(v); setAsOfTime(""); void travel(v); }}>
          <option value="">choose…</option>
          {events.map((e) => <option key={e.seq} value={String(e.seq)}>revision {e.revision ?? "?"}: {e.type} ({time(e.storedAt)})</option>)}
        </select>
        <label for="as-of-time">or as of time</label>
        <input id="as-of-time" type="datetime-local" step={1} value={asOfTime} onChange={(e) => { const v = (e.currentTarget as HTMLInputElement).value; setAsOfTime(v); setAsOf(""); void travel(v ? new Date(v).toISOString() : ""); }} />
      </div>
      <div class="side-by-side">
        <figure>
          <figcaption>{past ? `As of revision ${past.revision} (sequence ${past.seq})` : "As of: choose a revision or a time"}</figcaption>
          <pre data-testid="state-as-of">{past ? JSON.stringify(past.state, null, 2) : "—"}</pre>
        </figure>
        <figure>
          <figcaption>{current ? `Current: revision ${current.revision} (sequence ${current.seq})` : "Current"}</figcaption>
          <pre data-testid="state-current">{current ? JSON.stringify(current.state, null, 2) : "…"}</pre>
        </figure>
      </div>
      <table>
        <caption>Latest events of {category}/{id}, newest first</caption>
        <thead><tr><th scope="col">Revision</th><th scope="col">Seq</th><th scope="col">Stored</th><th scope="col">Type</th><th scope="col">Data</th></tr></thead>
        <tbody>
          {events.map((e) => (
            <tr key={e.seq}><td>{e.revision ?? "?"}</td><td>{e.seq}</td><td>{time(e.storedAt)}</td><td>{e.type}</td><td><code>{json(e.data)}</code></td></tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
