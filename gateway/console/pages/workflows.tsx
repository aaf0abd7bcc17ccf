import { useCallback, useEffect, useState } from "preact/hooks";
import type { ApiError } from "../api.js";
import { useConsole } from "../context.js";
import { ErrorBox } from "../error-box.js";
import { JsonView, when } from "../json-view.js";
import { can } from "../roles.js";
import { RunGraph } from "../run-graph.js";
import { useLoad } from "../use-load.js";

interface StepDef {
  readonly id: string;
  readonly kind: string;
  readonly needs?: readonly string[];
}
interface Definition {
  readonly name: string;
  readonly steps: readonly StepDef[];
  readonly [k: string]: unknown;
}
interface StoredWorkflow {
  readonly name: string;
  readonly version: number;
  readonly storedAt: string;
  readonly definition: Definition;
}
interface RunRow {
  readonly runId: string;
  readonly workflow: string | null;
  readonly version: string | null;
  readonly status: string;
  readonly trigger: string | null;
  readonly startedAt: string | null;
  readonly durationMs: number | null;
  readonly error: string | null;
}
interface RunState {
  readonly runId: string;
  readonly workflow: string;
  readonly version: number;
  readonly status: string;
  readonly input: unknown;
  readonly output: unknown;
  readonly startedAt?: string;
  readonly endedAt?: string;
  readonly error?: { message: string; code?: string };
  readonly steps: Record<string, { id: string; status: string; attempt: number; durationMs?: number; error?: { message: string; code?: string } }>;
}
interface RunEvent {
  readonly type: string;
  readonly time: string;
  readonly seq: number;
  readonly data: Record<string, unknown> | null;
}

const RUNNING = new Set(["running"]);
/** Runs and the open run are read again this often while something runs. */
const RUN_POLL_MS = 1_000;

/** A run's events as log lines: what happened, and each step's stdout, stderr and error. */
function logLines(events: readonly RunEvent[]): string[] {
  const lines: string[] = [];
  for (const e of events) {
    const d = e.data ?? {};
    const step = typeof d.step === "string" ? ` ${d.step}` : "";
    const attempt = typeof d.attempt === "number" ? ` (attempt ${d.attempt})` : "";
    const err = d.error && typeof d.error === "object" ? `: ${(d.error as { message?: string }).message ?? ""}` : "";
    const out = typeof d.output === "string" && d.output !== "" ? ` → ${d.output}` : "";
    lines.push(`${e.time} ${e.type}${step}${attempt}${err}${out}`);
    for (const stream of ["stdout", "stderr"] as const) {
      const text = d[stream];
      if (typeof text === "string" && text !== "") for (const l of text.replace(/\n$/u, "").split("\n")) lines.push(`    ${stream}| ${l}`);
    }
  }
  return lines;
}

/** Checks JSON text; undefined text is no input. */
function parseJson(text: string): { value?: unknown; error?: string } {
  if (text.trim() === "") return {};
  try {
    return { value: JSON.parse(text) as unknown };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

/** Workflows: definitions (view, upload a new version), runs with their step graph and logs, start with input, cancel. */
export function Workflows() {
  const { api, session } = useConsole();
  const defs = useLoad("defs", () => api.get<{ workflows: StoredWorkflow[] }>("/v1/workflows"));
  const [chosen, setChosen] = useState<string | undefined>();
  const name = chosen ?? defs.data?.workflows[0]?.name;
  const def = defs.data?.workflows.find((w) => w.name === name);
  const [runId, setRunId] = useState<string | undefined>();
  const runs = useLoad(name, () => api.get<{ runs: RunRow[] }>(`/v1/runs?workflow=${encodeURIComponent(name!)}&limit=20`), 2_000);
  // An open run is read every second until it has ended (then once more, for its last events).
  const [live, setLive] = useState(true);
  const run = useLoad(runId, () => api.get<RunState>(`/v1/runs/${encodeURIComponent(runId!)}`), live ? RUN_POLL_MS : 0);
  const logs = useLoad(runId, () => api.get<{ events: RunEvent[] }>(`/v1/runs/${encodeURIComponent(runId!)}/events`), live ? RUN_POLL_MS : 0);
  useEffect(() => setLive(run.data === undefined || run.data.runId !== runId || RUNNING.has(run.data.status)), [run.data, runId]);

  const [upload, setUpload] = useState("");
  const [uploadError, setUploadError] = useState<Error | ApiError | undefined>();
  const [uploaded, setUploaded] = useState<string | undefined>();
  const [input, setInput] = useState("");
  const inputCheck = parseJson(input);
  const [startError, setStartError] = useState<ApiError | undefined>();
  const [cancelError, setCancelError] = useState<ApiError | undefined>();

  const submitUpload = async (e: Event): Promise<void> => {
    e.preventDefault();
    setUploadError(undefined);
    setUploaded(undefined);
    const text = upload.trim();
    try {
      let stored: { name: string; version: number };
      if (text.startsWith("{")) {
        const parsed = parseJson(text);
        if (parsed.error) throw Object.assign(new Error(`The definition is not valid JSON: ${parsed.error}`), { code: "INVALID_JSON" });
        stored = await api.post("/v1/workflows", parsed.value);
      } else {
        stored = await api.postText("/v1/workflows", text, "application/yaml");
      }
      setUploaded(`Stored ${stored.name} version ${stored.version}.`);
      setChosen(stored.name);
      defs.reload();
    } catch (err) {
      setUploadError(err as ApiError);
    }
  };
  const start = async (e: Event): Promise<void> => {
    e.preventDefault();
    if (!name || inputCheck.error) return;
    setStartError(undefined);
    try {
      const r = await api.post<{ runId: string }>(`/v1/workflows/${encodeURIComponent(name)}/runs`, inputCheck.value === undefined ? {} : { input: inputCheck.value });
      setRunId(r.runId);
      runs.reload();
    } catch (err) {
      setStartError(err as ApiError);
    }
  };
  const cancel = useCallback(async () => {
    if (!runId) return;
    setCancelError(undefined);
    try {
      await api.post(`/v1/runs/${encodeURIComponent(runId)}/cancel`, { reason: `cancelled in the console by ${session.username}` });
      run.reload();
      runs.reload();
    } catch (err) {
      setCancelError(err as ApiError);
    }
  }, [api, runId, session.username, run, runs]);

  const state = run.data?.runId === runId ? run.data : undefined;
  const graphSteps = state
    ? (def && def.version === state.version ? def.definition.steps.map((s) => s.id) : Object.keys(state.steps)).map((id, i, all) => ({
      id,
      needs: def && def.version === state.version ? (def.definition.steps.find((s) => s.id === id)?.needs ?? (i > 0 ? [all[i - 1]!] : [])) : (i > 0 ? [all[i - 1]!] : []),
      status: state.steps[id]?.status ?? "pending",
    }))
    : [];

  return (
    <section aria-labelledby="page-title">
      <h1 id="page-title" tabIndex={-1}>Workflows</h1>
      <ErrorBox error={defs.error} />
      <table data-testid="workflow-table">
        <caption>Definitions (latest versions)</caption>
        <thead><tr><th scope="col">Workflow</th><th scope="col">Version</th><th scope="col">Steps</th><th scope="col">Stored</th></tr></thead>
        <tbody>
          {(defs.data?.workflows ?? []).length === 0 ? <tr><td colSpan={4}>No workflows yet.</td></tr> : defs.data!.workflows.map((w) => (
            <tr key={w.name}>
              <th scope="row"><button type="button" class="link" aria-pressed={w.name === name} onClick={() => { setChosen(w.name); setRunId(undefined); }}>{w.name}</button></th>
              <td>{w.version}</td>
              <td>{w.definition.steps.length}</td>
              <td>{when(w.storedAt)}</td>
            </tr>
          ))}
        </tbody>
      </table>

      {can(session.roles, "workflow.define") ? (
        <details class="panel">
          <summary>Upload a definition (a new workflow, or the next version of one)</summary>
          <form onSubmit={submitUpload}>
            <label for="definition-text">Definition (JSON or YAML)</label>
            <textarea id="definition-text" rows={8} value={upload} onInput={(e) => setUpload((e.currentTarget as HTMLTextAreaElement).value)} required spellcheck={false} />
            <ErrorBox error={uploadError} />
            {uploaded ? <p role="status">{uploaded}</p> : null}
            <button type="submit">Upload</button>
          </form>
        </details>
      ) : null}

      {def === undefined ? null : (
        <>
          <h2>{def.name} <span class="muted">version {def.version}</span></h2>
          <details class="panel">
            <summary>Definition</summary>
            <JsonView label={`Definition of ${def.name}`} value={def.definition} />
          </details>
          {can(session.roles, "workflow.run") ? (
            <form class="panel" onSubmit={start} aria-label={`Start ${def.name}`}>
              <label for="run-input">Input (JSON, optional)</label>
              <textarea id="run-input" rows={4} value={input} spellcheck={false} aria-invalid={inputCheck.error ? "true" : undefined} aria-describedby={inputCheck.error ? "run-input-error" : undefined} onInput={(e) => setInput((e.currentTarget as HTMLTextAreaElement).value)} />
              {inputCheck.error ? <p id="run-input-error" class="field-error">Not valid JSON: {inputCheck.error}</p> : null}
              <ErrorBox error={startError} />
              <button type="submit" disabled={inputCheck.error !== undefined}>Start a run</button>
            </form>
          ) : null}
          <ErrorBox error={runs.error} />
          <table data-testid="run-table">
            <caption>Runs of {def.name} (newest first)</caption>
            <thead><tr><th scope="col">Run</th><th scope="col">Status</th><th scope="col">Trigger</th><th scope="col">Started</th><th scope="col">Duration</th></tr></thead>
            <tbody>
              {(runs.data?.runs ?? []).length === 0 ? <tr><td colSpan={5}>No runs yet.</td></tr> : runs.data!.runs.map((r) => (
                <tr key={r.runId}>
                  <th scope="row"><button type="button" class="link" aria-pressed={r.runId === runId} onClick={() => setRunId(r.runId)}>{r.runId}</button></th>
                  <td><span class={`status status-${r.status}`}>{r.status}</span></td>
                  <td>{r.trigger ?? "—"}</td>
                  <td>{when(r.startedAt)}</td>
                  <td>{r.durationMs === null ? "—" : `${r.durationMs} ms`}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}

      {runId === undefined ? null : (
        <section class="run" aria-labelledby="run-title">
          <h2 id="run-title">Run <code>{runId}</code></h2>
          <ErrorBox error={run.error} />
          {state === undefined ? <p>Loading…</p> : (
            <>
              <p>Status: <strong data-testid="run-status" class={`status status-${state.status}`}>{state.status}</strong>{state.endedAt ? ` — ended ${when(state.endedAt)}` : ""}</p>
              {state.error ? <div class="error" role="alert">{state.error.code ? <code class="code">{state.error.code}</code> : null} {state.error.message}</div> : null}
              {RUNNING.has(state.status) && can(session.roles, "workflow.run") ? <button type="button" class="danger" onClick={() => void cancel()}>Cancel run</button> : null}
              <ErrorBox error={cancelError} />
              <div class="graph-box">
                <RunGraph steps={graphSteps} label={`Steps of run ${runId}: ${graphSteps.map((s) => `${s.id} ${s.status}`).join(", ")}`} />
              </div>
              <table>
                <caption>Steps</caption>
                <thead><tr><th scope="col">Step</th><th scope="col">Status</th><th scope="col">Attempts</th><th scope="col">Duration</th><th scope="col">Error</th></tr></thead>
                <tbody>
                  {graphSteps.map((g) => {
                    const s = state.steps[g.id];
                    return <tr key={g.id}><th scope="row">{g.id}</th><td>{g.status}</td><td>{s?.attempt ?? 0}</td><td>{s?.durationMs === undefined ? "—" : `${s.durationMs} ms`}</td><td>{s?.error?.message ?? ""}</td></tr>;
                  })}
                </tbody>
              </table>
              <h3>Input and output</h3>
              <JsonView label="Run input and output" value={{ input: state.input, output: state.output }} />
            </>
          )}
          <h3>Logs</h3>
          <ErrorBox error={logs.error} />
          <pre class="logs" tabIndex={0} aria-label={`Logs of run ${runId}`} data-testid="run-logs">{logLines(logs.data?.events ?? []).join("\n")}</pre>
        </section>
      )}
    </section>
  );
}
