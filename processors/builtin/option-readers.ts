/**
 * Readers for processor options from `flexcore.yaml`. Each checks one value and throws
 * {@link InvalidOptionError} naming its full path (`processors[2].options.k`), the value
 * received and what was expected; nothing is half-applied because validation runs
 * before the processor is built. Unknown keys are errors that name the key.
 */
import { InvalidEventError, InvalidOptionError } from "../../streams/index.js";

export type RawOptions = Readonly<Record<string, unknown>>;

/** Checks that `raw` is an object (or absent) whose keys are all in `known`. */
export function readObject(raw: unknown, path: string, known: readonly string[]): RawOptions {
  if (raw === undefined || raw === null) return {};
  if (typeof raw !== "object" || Array.isArray(raw)) throw new InvalidOptionError(path, raw, "an object");
  for (const key of Object.keys(raw)) {
    if (!known.includes(key)) throw new InvalidOptionError(`${path}.${key}`, (raw as RawOptions)[key], `one of the known options (${known.join(", ")}); unknown key`);
  }
  return raw as RawOptions;
}

export function readInteger(o: RawOptions, path: string, key: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const v = o[key];
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new InvalidOptionError(`${path}.${key}`, v, max === Number.MAX_SAFE_INTEGER ? `an integer ≥ ${min}` : `an integer from ${min} to ${max}`);
  }
  return v;
}

/** A finite number in `[min, max]` (`open` makes the bounds exclusive). */
export function readNumber(o: RawOptions, path: string, key: string, fallback: number, min: number, max: number, open = false): number {
  const v = o[key];
  if (v === undefined) return fallback;
  const inRange = typeof v === "number" && Number.isFinite(v) && (open ? v > min && v < max : v >= min && v <= max);
  if (!inRange) throw new InvalidOptionError(`${path}.${key}`, v, `a number ${open ? `strictly between ${min} and ${max}` : `from ${min} to ${max}`}`);
  return v;
}

export function readBoolean(o: RawOptions, path: string, key: string, fallback: boolean): boolean {
  const v = o[key];
  if (v === undefined) return fallback;
  if (typeof v !== "boolean") throw new InvalidOptionError(`${path}.${key}`, v, "true or false");
  return v;
}

export function readEnum<T extends string>(o: RawOptions, path: string, key: string, fallback: T, values: readonly T[]): T {
  const v = o[key];
  if (v === undefined) return fallback;
  if (typeof v !== "string" || !(values as readonly string[]).includes(v)) throw new InvalidOptionError(`${path}.${key}`, v, `one of ${values.map((x) => `"${x}"`).join(", ")}`);
  return v as T;
}

/** Seed of a processor's PRNG: an unsigned 32-bit integer. */
export const DEFAULT_SEED = 42;
export function readSeed(o: RawOptions, path: string): number {
  return readInteger(o, path, "seed", DEFAULT_SEED, 0, 0xffffffff);
}

/**
 * A malformed input event: processors throw this so the runtime retries and then
 * dead-letters the message with the reason; the field is named from the batch
 * (`inputs[3].data.features[2]`).
 */
export function badInput(field: string, value: unknown, expected: string): InvalidEventError {
  return new InvalidEventError(field, value, expected);
}

/** A finite number vector, or an error naming the field. */
export function readVector(value: unknown, field: string, dimension?: number): number[] {
  if (!Array.isArray(value) || value.length === 0) throw badInput(field, value, dimension ? `an array of ${dimension} numbers` : "a non-empty array of numbers");
  if (dimension !== undefined && value.length !== dimension) throw badInput(field, value, `an array of ${dimension} numbers (the dimension of earlier inputs)`);
  value.forEach((x, i) => {
    if (typeof x !== "number" || !Number.isFinite(x)) throw badInput(`${field}[${i}]`, x, "a finite number");
  });
  return value as number[];
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
