import { InvalidEventError, MAX_SUMMARY_CHARS } from "../../streams/index.js";
import type { StoredEvent } from "../../streams/index.js";

/** Subject tokens of an event: `[root, tenant, category, id]`. */
export function tokens(subject: string): [string, string, string, string] {
  const t = subject.split(".");
  return [t[0] ?? "", t[1] ?? "", t[2] ?? "", t.slice(3).join(".")];
}

/** The event's data as an object. @throws InvalidEventError */
export function objectData(e: StoredEvent): Record<string, unknown> {
  const d = e.data;
  if (d === null || typeof d !== "object" || Array.isArray(d)) throw new InvalidEventError(`${e.type}.data`, d, "an object");
  return d as Record<string, unknown>;
}

export function requiredString(e: StoredEvent, d: Record<string, unknown>, name: string): string {
  const v = d[name];
  if (typeof v !== "string" || v.length === 0) throw new InvalidEventError(`${e.type}.${name}`, v, "a non-empty string");
  return v;
}

export function optionalString(e: StoredEvent, d: Record<string, unknown>, name: string): string | null {
  const v = d[name];
  if (v === undefined || v === null) return null;
  if (typeof v !== "string") throw new InvalidEventError(`${e.type}.${name}`, v, "a string");
  return clip(v);
}

export function requiredNumber(e: StoredEvent, d: Record<string, unknown>, name: string, min = 0): number {
  const v = d[name];
  if (typeof v !== "number" || !Number.isFinite(v) || v < min) throw new InvalidEventError(`${e.type}.${name}`, v, `a number from ${min} and up`);
  return v;
}

export function optionalNumber(e: StoredEvent, d: Record<string, unknown>, name: string): number | null {
  const v = d[name];
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isFinite(v)) throw new InvalidEventError(`${e.type}.${name}`, v, "a finite number");
  return v;
}

/** `{ message, code? }` as one line of text: `CODE: message`. */
export function errorInfo(e: StoredEvent, d: Record<string, unknown>, name: string): string {
  const v = d[name];
  if (typeof v === "string" && v.length > 0) return clip(v);
  if (v === null || typeof v !== "object" || typeof (v as { message?: unknown }).message !== "string") {
    throw new InvalidEventError(`${e.type}.${name}`, v, "{ message: string, code?: string }");
  }
  const { message, code } = v as { message: string; code?: unknown };
  return clip(typeof code === "string" && code ? `${code}: ${message}` : message);
}

export function clip(text: string): string {
  return text.length > MAX_SUMMARY_CHARS ? `${text.slice(0, MAX_SUMMARY_CHARS - 3)}...` : text;
}

/** ms between two RFC 3339 times, or null. */
export function durationMs(from: string | null | undefined, to: string): number | null {
  if (!from) return null;
  const a = Date.parse(from);
  const b = Date.parse(to);
  return Number.isNaN(a) || Number.isNaN(b) ? null : Math.max(0, b - a);
}
