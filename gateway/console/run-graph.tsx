/** A step as the graph draws it. */
export interface GraphStep {
  readonly id: string;
  readonly needs: readonly string[];
  readonly status: string;
}

const W = 150;
const H = 40;
const GAP_X = 50;
const GAP_Y = 16;

/** Fill per status; text is dark on all of them (contrast ≥ 4.5:1). */
const FILL: Readonly<Record<string, string>> = {
  pending: "#eef0f3",
  running: "#cfe3fa",
  retrying: "#fde7b0",
  succeeded: "#cdebd4",
  failed: "#f8d0d0",
  skipped: "#e4e4e4",
  cancelled: "#e4e4e4",
};

/** Column of each step: one after the furthest step it needs (needs form no cycle: the definition is validated). */
function columns(steps: readonly GraphStep[]): Map<string, number> {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const col = new Map<string, number>();
  const depth = (id: string, seen: Set<string>): number => {
    const known = col.get(id);
    if (known !== undefined) return known;
    if (seen.has(id)) return 0;
    seen.add(id);
    const needs = byId.get(id)?.needs.filter((n) => byId.has(n)) ?? [];
    const d = needs.length === 0 ? 0 : 1 + Math.max(...needs.map((n) => depth(n, seen)));
    col.set(id, d);
    return d;
  };
  for (const s of steps) depth(s.id, new Set());
  return col;
}

/**
 * A run's steps as a flow graph (SVG): columns by dependency depth, an arrow per `needs`,
 * each box coloured and labelled with its status. The same facts are in the steps table next
 * to it, for screen readers.
 */
export function RunGraph({ steps, label }: { steps: readonly GraphStep[]; label: string }) {
  const col = columns(steps);
  const rows = new Map<number, number>();
  const pos = new Map<string, { x: number; y: number }>();
  for (const s of steps) {
    const c = col.get(s.id) ?? 0;
    const r = rows.get(c) ?? 0;
    rows.set(c, r + 1);
    pos.set(s.id, { x: 8 + c * (W + GAP_X), y: 8 + r * (H + GAP_Y) });
  }
  const width = 16 + (Math.max(0, ...col.values()) + 1) * (W + GAP_X) - GAP_X;
  const height = 16 + Math.max(1, ...rows.values()) * (H + GAP_Y) - GAP_Y;
  return (
    <svg class="run-graph" viewBox={`0 0 ${width} ${height}`} width={width} height={height} role="img" aria-label={label} data-testid="run-graph">
      <defs>
        <marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
          <path d="M 0 0 L 10 5 L 0 10 z" fill="#4f5868" />
        </marker>
      </defs>
      {steps.flatMap((s) => s.needs.filter((n) => pos.has(n)).map((n) => {
        const a = pos.get(n)!;
        const b = pos.get(s.id)!;
        const x1 = a.x + W;
        const y1 = a.y + H / 2;
        const x2 = b.x;
        const y2 = b.y + H / 2;
        const mid = (x1 + x2) / 2;
        return <path key={`${n}->${s.id}`} d={`M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`} fill="none" stroke="#4f5868" stroke-width="1.5" marker-end="url(#arrow)" />;
      }))}
      {steps.map((s) => {
        const p = pos.get(s.id)!;
        return (
          <g key={s.id} data-step={s.id} data-status={s.status}>
            <rect x={p.x} y={p.y} width={W} height={H} rx="6" fill={FILL[s.status] ?? "#eef0f3"} stroke="#4f5868" />
            <text x={p.x + 8} y={p.y + 16} font-size="13" font-weight="600" fill="#1d2330">{s.id.length > 20 ? `${s.id.slice(0, 19)}…` : s.id}</text>
            <text x={p.x + 8} y={p.y + 32} font-size="12" fill="#1d2330">{s.status}</text>
          </g>
        );
      })}
    </svg>
  );
}
