/** JSON shown as indented text in a scrollable, focusable block (so keyboard users can scroll it). */
export function JsonView({ value, label }: { value: unknown; label: string }) {
  return (
    <pre class="json" tabIndex={0} aria-label={label}>{JSON.stringify(value, null, 2) ?? "undefined"}</pre>
  );
}

/** A time for people: the local date and time of an RFC 3339 string or ms since the epoch; "—" when absent. */
export function when(t: string | number | null | undefined): string {
  if (t === null || t === undefined || t === "") return "—";
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}
