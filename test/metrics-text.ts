/** One sample of a Prometheus text exposition. */
export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** Parses the Prometheus text format (what `/metrics` serves) into samples; comments are skipped. */
export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/u.exec(line);
    if (!m) throw new Error(`not a Prometheus sample: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/gu)) labels[l[1]!] = l[2]!.replace(/\\(.)/gu, (_, c: string) => (c === "n" ? "\n" : c));
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** Sum of the samples named `name` whose labels include `labels`. */
export function sumOf(samples: readonly Sample[], name: string, labels: Readonly<Record<string, string>> = {}): number | undefined {
  const hits = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return hits.length === 0 ? undefined : hits.reduce((a, s) => a + s.value, 0);
}

/** Metric family names in a scrape: `x_bucket`/`x_sum`/`x_count` count as `x` too. */
export function metricNames(samples: readonly Sample[]): Set<string> {
  const names = new Set<string>();
  for (const s of samples) {
    names.add(s.name);
    const base = /^(.*)_(bucket|sum|count)$/u.exec(s.name)?.[1];
    if (base) names.add(base);
  }
  return names;
}

// Words of PromQL that are not metric names when they stand alone.
const PROMQL_WORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"]);

/** The metric names a PromQL expression reads (functions, labels, strings, ranges and grouping left out). */
export function promqlMetricNames(expr: string): Set<string> {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/gu, "\"\"")
    .replace(/\{[^}]*\}/gu, " ")
    .replace(/\[[^\]]*\]/gu, " ")
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/gu, " ");
  const names = new Set<string>();
  for (const m of bare.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?/gu)) {
    const word = m[0].replace(/\s*\($/u, "");
    if (m[1] !== undefined || PROMQL_WORDS.has(word.toLowerCase())) continue;
    // A word right after a digit is a number's exponent or a duration unit, not a name.
    if (/\d$/u.test(bare.slice(0, m.index))) continue;
    names.add(word);
  }
  return names;
}
