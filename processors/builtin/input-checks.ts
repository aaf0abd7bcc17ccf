/**
 * Checks of the built-in processors' input events: a malformed one is an
 * `InvalidEventError` naming the field (options are checked by each kind's JSON Schema).
 */
import { InvalidEventError } from "../../streams/index.js";

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
