/**
 * Cron schedules of workflow triggers, on `croner`: five fields (minute hour day-of-month
 * month day-of-week) or a macro (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`),
 * in UTC or an IANA time zone. Names (`jan`, `mon`), `7` as Sunday, ranges, steps and lists
 * as in Vixie cron, and as there, when both day fields are restricted a day matches either.
 */
import { Cron } from "croner";

/** A parsed schedule. */
export interface CronSchedule {
  readonly source: string;
  /** IANA time zone the fields are read in. */
  readonly timezone: string;
  /** The first fire time strictly after `after`, or undefined when there is none. */
  next(after: Date): Date | undefined;
}

/** A schedule or time zone that cannot be used; `message` says which field and why. */
export class CronSyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CronSyntaxError";
  }
}

const FIELDS = [
  { name: "minute", expected: "0-59" },
  { name: "hour", expected: "0-23" },
  { name: "day of month", expected: "1-31" },
  { name: "month", expected: "1-12 or jan-dec" },
  { name: "day of week", expected: "0-7 (0 and 7 are Sunday) or sun-sat" },
] as const;

const MACROS = new Set(["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"]);

function checkTimezone(timezone: string): void {
  try {
    new Intl.DateTimeFormat("en", { timeZone: timezone });
  } catch {
    throw new CronSyntaxError(`timezone: \`${timezone}\` is not an IANA time zone (e.g. "UTC", "Europe/Berlin")`);
  }
}

/** Names the first field croner refuses on its own (croner's messages count days from 0). */
function whichField(text: string): string | undefined {
  const parts = text.split(/\s+/u);
  for (let i = 0; i < FIELDS.length; i++) {
    const probe = FIELDS.map((_, j) => (j === i ? parts[i] : "*")).join(" ");
    try {
      new Cron(probe, { paused: true, mode: "5-part" });
    } catch {
      const f = FIELDS[i]!;
      return `${f.name}: \`${parts[i]}\` is not valid; expected values ${f.expected}, ranges a-b, steps */n or a-b/n, lists a,b`;
    }
  }
  return undefined;
}

/** Parses a schedule read in `timezone`. @throws CronSyntaxError naming the field */
export function parseCron(source: string, timezone = "UTC"): CronSchedule {
  if (typeof source !== "string") throw new CronSyntaxError("expected a string");
  const text = source.trim();
  const macro = MACROS.has(text.toLowerCase());
  if (!macro) {
    const fields = text.split(/\s+/u).length;
    if (fields !== 5) throw new CronSyntaxError(`expected 5 fields (minute hour day-of-month month day-of-week) or a macro like @daily, got ${fields}`);
  }
  checkTimezone(timezone);
  let cron: Cron;
  try {
    // Paused: nothing runs inside croner; the workflow runner asks for fire times.
    cron = new Cron(macro ? text.toLowerCase() : text, { timezone, paused: true, mode: "5-part", domAndDow: false });
  } catch (err) {
    throw new CronSyntaxError(whichField(text) ?? String((err as Error).message).replace(/^CronPattern: /u, ""));
  }
  return {
    source,
    timezone,
    next: (after) => cron.nextRun(after) ?? undefined,
  };
}

/** Whether the schedule fires in the minute of `date`. */
export function cronMatches(s: CronSchedule, date: Date): boolean {
  const minute = Math.floor(date.getTime() / 60_000) * 60_000;
  return s.next(new Date(minute - 1))?.getTime() === minute;
}

/** The next minute after `from` at which the schedule fires. */
export function nextCronTime(s: CronSchedule, from: Date): Date | undefined {
  return s.next(from);
}

/**
 * The latest fire time in `(after, until]`, if any: what a trigger that was not checked
 * since `after` (a stall, a restart) owes. Several missed fires collapse into this one.
 */
export function latestFireTime(s: CronSchedule, after: Date, until: Date): Date | undefined {
  let latest: Date | undefined;
  let t = s.next(after);
  // Bounded: a schedule fires at most once a minute, and the window is at most a few hours.
  for (let i = 0; t !== undefined && t.getTime() <= until.getTime() && i < 100_000; i++) {
    latest = t;
    t = s.next(t);
  }
  return latest;
}
