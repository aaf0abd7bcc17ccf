/** Whether a concrete subject matches a NATS filter (`*` one token, `>` the rest). */
export function subjectMatches(filter: string, subject: string): boolean {
  const f = filter.split(".");
  const s = subject.split(".");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === ">") return s.length > i;
    if (i >= s.length) return false;
    if (f[i] !== "*" && f[i] !== s[i]) return false;
  }
  return f.length === s.length;
}

/**
 * One filter matching everything the given filters match (for servers whose consumers
 * take a single filter): token by token, equal tokens stay and others become `*`; filters
 * of different lengths or with `>` share their common prefix followed by `>`.
 */
export function coverFilters(filters: readonly string[]): string {
  const split = filters.map((f) => f.split("."));
  const first = split[0] ?? [">"];
  const sameShape = split.every((t) => t.length === first.length && !t.includes(">"));
  if (sameShape) return first.map((tok, i) => (split.every((t) => t[i] === tok) ? tok : "*")).join(".");
  const prefix: string[] = [];
  for (let i = 0; ; i++) {
    const tok = first[i];
    if (tok === undefined || tok === ">" || !split.every((t) => t[i] === tok && i < t.length - 1)) break;
    prefix.push(tok);
  }
  return [...prefix, ">"].join(".");
}
