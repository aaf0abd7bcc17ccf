/**
 * Option readers of the built-in ML processors, over the area's validators in
 * `../options.ts`: each reads `o[key]` and throws a `ConfigError` naming the full path
 * (`processors[2].options.k: expected integer ≥ 2 and ≤ 1000, got "ten"`). Unknown keys
 * are errors naming the key. Also the checks of input events (`badInput`).
 */
import { InvalidEventError } from "../../streams/index.js";
import { at, boolean, integer, number, object, oneOf } from "../options.js";

export type RawOptions = Readonly<Record<string, unknown>>;

/** Checks that `raw` is an object (or absent) whose keys are all in `known`. */
export function readObject(raw: unknown, path: string, known: readonly string[]): RawOptions {
  return object(raw, path, known, true);
}

export function readInteger(o: RawOptions, path: string, key: string, fallback: number, min: number, max?: number): number {
  return integer(o[key], at(path, key), fallback, max === undefined ? { min } : { min, max });
}

/** A finite number in `[min, max]` (`open` makes the bounds exclusive). */
export function readNumber(o: RawOptions, path: string, key: string, fallback: number, min: number, max: number, open = false): number {
  return number(o[key], at(path, key), fallback, open ? { above: min, below: max } : { min, max });
}

export function readBoolean(o: RawOptions, path: string, key: string, fallback: boolean): boolean {
  return boolean(o[key], at(path, key), fallback);
}

export function readEnum<T extends string>(o: RawOptions, path: string, key: string, fallback: T, values: readonly T[]): T {
  return oneOf(o[key], at(path, key), values, fallback);
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
