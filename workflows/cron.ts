/**
 * Five-field cron schedules (minute hour day-of-month month day-of-week), evaluated in UTC:
 * `*`, numbers, ranges `a-b`, steps `*\/n` and `a-b/n`, lists `a,b`, month and weekday
 * names (`jan`, `mon`), `7` as Sunday, and `@hourly`, `@daily`, `@weekly`, `@monthly`,
 * `@yearly`. As in Vixie cron, when both day fields are restricted a day matches either.
 */

/** A parsed schedule. */
export interface CronSchedule {
  readonly source: string;
  readonly minutes: ReadonlySet<number>;
  readonly hours: ReadonlySet<number>;
  readonly days: ReadonlySet<number>;
  readonly months: ReadonlySet<number>;
  readonly weekdays: ReadonlySet<number>;
  readonly dayRestricted: boolean;
  readonly weekdayRestricted: boolean;
}

const MACROS: Record<string, string> = {
  "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
};
const MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

interface Field {
  readonly name: string;
  readonly min: number;
  readonly max: number;
  readonly names?: readonly string[];
  readonly namesFrom?: number;
}
const FIELDS: readonly Field[] = [
  { name: "minute", min: 0, max: 59 },
  { name: "hour", min: 0, max: 23 },
  { name: "day of month", min: 1, max: 31 },
  { name: "month", min: 1, max: 12, names: MONTHS, namesFrom: 1 },
  { name: "day of week", min: 0, max: 7, names: WEEKDAYS, namesFrom: 0 },
];

/** A schedule that cannot be parsed; `message` says which field and why. */
export class CronSyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CronSyntaxError";
  }
}

function value(text: string, f: Field): number {
  const lower = text.toLowerCase();
  const named = f.names?.indexOf(lower) ?? -1;
  if (named >= 0) return named + (f.namesFrom ?? 0);
  if (!/^\d+$/.test(text)) throw new CronSyntaxError(`${f.name}: \`${text}\` is not a number${f.names ? " or a name" : ""}`);
  const n = Number(text);
  if (n < f.min || n > f.max) throw new CronSyntaxError(`${f.name}: ${n} is outside ${f.min}-${f.max}`);
  return n;
}

function field(text: string, f: Field): { set: Set<number>; restricted: boolean } {
  const set = new Set<number>();
  for (const part of text.split(",")) {
    if (part === "") throw new CronSyntaxError(`${f.name}: empty list item in \`${text}\``);
    const [range, stepText, extra] = part.split("/");
    if (extra !== undefined) throw new CronSyntaxError(`${f.name}: \`${part}\` has two steps`);
    let step = 1;
    if (stepText !== undefined) {
      if (!/^\d+$/.test(stepText) || Number(stepText) < 1) throw new CronSyntaxError(`${f.name}: step \`${stepText}\` is not a positive integer`);
      step = Number(stepText);
    }
    let lo: number;
    let hi: number;
    if (range === "*") {
      lo = f.min;
      hi = f.max;
    } else {
      const [a, b, more] = range!.split("-");
      if (more !== undefined || a === "") throw new CronSyntaxError(`${f.name}: \`${range}\` is not a value or a range`);
      lo = value(a!, f);
      hi = b === undefined ? (stepText === undefined ? lo : f.max) : value(b, f);
      if (hi < lo) throw new CronSyntaxError(`${f.name}: range \`${range}\` goes backwards`);
    }
    for (let v = lo; v <= hi; v += step) set.add(v);
  }
  return { set, restricted: text !== "*" };
}

/** Parses a schedule. @throws CronSyntaxError naming the field */
export function parseCron(source: string): CronSchedule {
  if (typeof source !== "string") throw new CronSyntaxError("expected a string");
  const expanded = MACROS[source.trim().toLowerCase()] ?? source.trim();
  const parts = expanded.split(/\s+/);
  if (parts.length !== 5) throw new CronSyntaxError(`expected 5 fields (minute hour day-of-month month day-of-week) or a macro like @daily, got ${parts.length}`);
  const [mi, h, d, mo, w] = parts.map((p, i) => field(p, FIELDS[i]!));
  const weekdays = new Set([...w!.set].map((x) => x % 7));
  return { source, minutes: mi!.set, hours: h!.set, days: d!.set, months: mo!.set, weekdays, dayRestricted: d!.restricted, weekdayRestricted: w!.restricted };
}

/** Whether the schedule fires in the UTC minute of `date`. */
export function cronMatches(s: CronSchedule, date: Date): boolean {
  if (!s.minutes.has(date.getUTCMinutes()) || !s.hours.has(date.getUTCHours()) || !s.months.has(date.getUTCMonth() + 1)) return false;
  const dom = s.days.has(date.getUTCDate());
  const dow = s.weekdays.has(date.getUTCDay());
  if (s.dayRestricted && s.weekdayRestricted) return dom || dow;
  return dom && dow;
}

/** The next minute (UTC) after `from` at which the schedule fires, within about 5 years. */
export function nextCronTime(s: CronSchedule, from: Date): Date | undefined {
  const t = new Date(from.getTime());
  t.setUTCSeconds(0, 0);
  for (let i = 0; i < 5 * 366 * 24 * 60; i++) {
    t.setUTCMinutes(t.getUTCMinutes() + 1);
    if (!s.months.has(t.getUTCMonth() + 1)) {
      t.setUTCMonth(t.getUTCMonth() + 1, 1);
      t.setUTCHours(0, -1);
      continue;
    }
    if (cronMatches(s, t)) return new Date(t.getTime());
  }
  return undefined;
}
