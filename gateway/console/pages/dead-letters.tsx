import { useState } from "preact/hooks";
import type { DeadLetter, DeadLetterPage, DeadLetterSources, PurgeReport, RedriveReport } from "../../api-types.js";
import type { ApiError } from "../api.js";
import { Confirm } from "../confirm.js";
import { useConsole } from "../context.js";
import { ErrorBox } from "../error-box.js";
import { JsonView, when } from "../json-view.js";
import { can } from "../roles.js";
import { useLoad } from "../use-load.js";

interface Filter {
  readonly source?: string;
  readonly reason?: string;
  readonly since?: string;
  readonly until?: string;
  readonly seq?: number;
}
/** A pending action the admin must confirm. */
interface Pending {
  readonly kind: "redrive" | "purge";
  readonly filter: Filter;
  readonly what: string;
}

const query = (f: Filter): string => new URLSearchParams(Object.entries(f).filter(([, v]) => v !== undefined && v !== "").map(([k, v]) => [k, String(v)])).toString();
/** `datetime-local` → RFC 3339 (local time as the user entered it). */
const rfc3339 = (local: string): string | undefined => (local ? new Date(local).toISOString() : undefined);

/**
 * Dead letters: counts by source, a filtered list, one message inspected (reasons, attempts,
 * original subject and sequence, headers, body); redrive and purge for admins, both after a
 * confirmation dialog that says how many messages they touch.
 */
export function DeadLetters() {
  const { api, session } = useConsole();
  const admin = { redrive: can(session.roles, "dlq.redrive"), purge: can(session.roles, "dlq.purge") };
  const counts = useLoad("counts", () => api.get<DeadLetterSources>("/v1/dlq"), 5_000);
  const [filter, setFilter] = useState<Filter | undefined>();
  const list = useLoad(filter ? query(filter) : undefined, () => api.get<DeadLetterPage>(`/v1/dlq/messages?${query(filter!)}`));
  const [seq, setSeq] = useState<number | undefined>();
  const one = useLoad(seq === undefined ? undefined : String(seq), () => api.get<DeadLetter>(`/v1/dlq/messages/${seq}`));
  const [pending, setPending] = useState<Pending | undefined>();
  const [done, setDone] = useState<string | undefined>();
  const [actionError, setActionError] = useState<ApiError | undefined>();

  const search = (e: Event): void => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    const f: Filter = { source: String(form.get("source") ?? ""), reason: String(form.get("reason") ?? ""), since: rfc3339(String(form.get("since") ?? "")), until: rfc3339(String(form.get("until") ?? "")) };
    setFilter(f);
    setSeq(undefined);
  };
  const act = async (p: Pending): Promise<void> => {
    setPending(undefined);
    setActionError(undefined);
    setDone(undefined);
    try {
      const body = Object.fromEntries(Object.entries(p.filter).filter(([, v]) => v !== undefined && v !== ""));
      if (p.kind === "redrive") {
        const r = await api.post<RedriveReport>("/v1/dlq/redrive", body);
        setDone(`Redrove ${r.redriven.length} dead letter(s)${r.duplicates ? ` (${r.duplicates} already redriven before)` : ""}${r.more ? "; more match: redrive again" : ""}.`);
      } else {
        const r = await api.post<PurgeReport>("/v1/dlq/purge", { ...body, confirm: true });
        setDone(`Purged ${r.purged} dead letter(s)${r.more ? "; more match: purge again" : ""}.`);
      }
      if (p.filter.seq !== undefined) setSeq(undefined);
      counts.reload();
      list.reload();
    } catch (err) {
      setActionError(err as ApiError);
    }
  };
  const sources = counts.data?.sources ?? [];
  const d = one.data?.seq === seq ? one.data : undefined;

  return (
    <section aria-labelledby="page-title">
      <h1 id="page-title" tabIndex={-1}>Dead letters</h1>
      <p class="muted">Messages a processor or projection failed past its retry budget. A redrive sends a message back to the component that failed it (not to everyone); repeating a redrive is harmless.</p>
      <ErrorBox error={counts.error} />
      {done ? <p role="status" class="done">{done}</p> : null}
      <ErrorBox error={actionError} />
      <table data-testid="dlq-sources">
        <caption>By source</caption>
        <thead><tr><th scope="col">Source</th><th scope="col">Messages</th><th scope="col">Redrives pending</th><th scope="col">Actions</th></tr></thead>
        <tbody>
          {sources.length === 0 ? <tr><td colSpan={4}>No dead letters.</td></tr> : sources.map((s) => (
            <tr key={s.source}>
              <th scope="row">{s.source}</th>
              <td data-testid={`dlq-count-${s.source}`}>{s.count}</td>
              <td>{s.redrivePending}</td>
              <td class="actions">
                <button type="button" class="secondary" onClick={() => { setFilter({ source: s.source }); setSeq(undefined); }}>List {s.source}</button>
                {admin.redrive && s.count > 0 ? <button type="button" onClick={() => setPending({ kind: "redrive", filter: { source: s.source }, what: `all ${s.count} dead letter(s) of ${s.source}` })}>Redrive all of {s.source}</button> : null}
                {admin.purge && s.count > 0 ? <button type="button" class="danger" onClick={() => setPending({ kind: "purge", filter: { source: s.source }, what: `all ${s.count} dead letter(s) of ${s.source}` })}>Purge {s.source}…</button> : null}
              </td>
            </tr>
          ))}
        </tbody>
      </table>

      <form class="panel filters" onSubmit={search} aria-label="Find dead letters">
        <div>
          <label for="dlq-source">Source</label>
          <select id="dlq-source" name="source" required>
            {sources.map((s) => <option key={s.source} value={s.source} selected={filter?.source === s.source}>{s.source}</option>)}
          </select>
        </div>
        <div><label for="dlq-reason">Reason contains</label><input id="dlq-reason" name="reason" maxLength={256} /></div>
        <div><label for="dlq-since">Stored since</label><input id="dlq-since" name="since" type="datetime-local" /></div>
        <div><label for="dlq-until">Stored until</label><input id="dlq-until" name="until" type="datetime-local" /></div>
        <button type="submit" disabled={sources.length === 0}>Find</button>
      </form>

      {filter === undefined ? null : (
        <>
          <ErrorBox error={list.error} />
          <table data-testid="dlq-messages">
            <caption>Dead letters of {filter.source}{filter.reason ? ` with “${filter.reason}”` : ""} (oldest first){list.data?.more ? ", first page" : ""}</caption>
            <thead><tr><th scope="col">Seq</th><th scope="col">Stored</th><th scope="col">Reason</th><th scope="col">Attempts</th><th scope="col">Original subject</th></tr></thead>
            <tbody>
              {(list.data?.deadLetters ?? []).length === 0 ? <tr><td colSpan={5}>None match.</td></tr> : list.data!.deadLetters.map((m) => (
                <tr key={m.seq}>
                  <th scope="row"><button type="button" class="link" aria-pressed={m.seq === seq} onClick={() => setSeq(m.seq)}>Inspect {m.seq}</button></th>
                  <td>{when(m.storedAt)}</td>
                  <td>{m.reason}</td>
                  <td>{m.attempts ?? "—"}</td>
                  <td><code>{m.originalSubject ?? "—"}</code></td>
                </tr>
              ))}
            </tbody>
          </table>
          {admin.redrive && (list.data?.deadLetters.length ?? 0) > 0 && (filter.reason || filter.since || filter.until) ? (
            <button type="button" onClick={() => setPending({ kind: "redrive", filter, what: `the dead letters of ${filter.source} matching this filter` })}>Redrive the matching</button>
          ) : null}
        </>
      )}

      {seq === undefined ? null : (
        <section class="panel" aria-labelledby="dl-title">
          <h2 id="dl-title">Dead letter {seq}</h2>
          <ErrorBox error={one.error} />
          {d === undefined ? <p>Loading…</p> : (
            <>
              <dl class="facts" data-testid="dead-letter">
                <dt>Source</dt><dd>{d.source} ({d.kind})</dd>
                <dt>Stored</dt><dd>{when(d.storedAt)}</dd>
                <dt>Attempts</dt><dd>{d.attempts ?? "not recorded"}</dd>
                <dt>Original subject</dt><dd><code>{d.originalSubject ?? "—"}</code> (sequence {d.originalSeq ?? "—"})</dd>
                <dt>Event</dt><dd>{d.eventType ?? "—"} at {when(d.eventTime)}</dd>
                <dt>Error code</dt><dd>{d.errorCode ?? "—"}</dd>
                <dt>Reasons (oldest first)</dt>
                <dd><ol>{d.reasons.map((r, i) => <li key={i}>{r}</li>)}</ol></dd>
              </dl>
              <table>
                <caption>Headers</caption>
                <thead><tr><th scope="col">Header</th><th scope="col">Value</th></tr></thead>
                <tbody>{Object.entries(d.headers).map(([k, v]) => <tr key={k}><th scope="row">{k}</th><td><code>{v}</code></td></tr>)}</tbody>
              </table>
              <h3>Body</h3>
              <JsonView label={`Body of dead letter ${seq}`} value={d.data} />
              <div class="actions">
                {admin.redrive ? <button type="button" onClick={() => setPending({ kind: "redrive", filter: { seq: d.seq }, what: `dead letter ${d.seq}` })}>Redrive {d.seq}</button> : null}
                {admin.purge ? <button type="button" class="danger" onClick={() => setPending({ kind: "purge", filter: { seq: d.seq }, what: `dead letter ${d.seq}` })}>Purge {d.seq}…</button> : null}
              </div>
            </>
          )}
        </section>
      )}

      {pending === undefined ? null : (
        <Confirm
          title={pending.kind === "redrive" ? "Redrive dead letters?" : "Purge dead letters?"}
          action={pending.kind === "redrive" ? "Redrive" : "Purge for good"}
          onConfirm={() => void act(pending)}
          onCancel={() => setPending(undefined)}
        >
          {pending.kind === "redrive"
            ? <p>Send {pending.what} back to the component that failed them? A message that fails again returns here with both reasons.</p>
            : <p>Delete {pending.what}? This cannot be undone: the messages are gone from FLEX_DLQ.</p>}
        </Confirm>
      )}
    </section>
  );
}
