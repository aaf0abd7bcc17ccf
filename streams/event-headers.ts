import { canonicalMIMEHeaderKey, Match } from "@nats-io/transport-node";
import type { MsgHdrs } from "@nats-io/transport-node";

const LINE_BREAK = /[\r\n]/u;

/**
 * The headers of an event being published: the {@link MsgHdrs} interface over a plain
 * list, encoded in one pass.
 *
 * nats.js's own headers are built for reading received messages: every `append`
 * canonicalises the name character by character, scans all names and compiles a RegExp,
 * and encoding concatenates a string per header. For the 6-7 headers of every published
 * event that was about 5 KB of garbage per event, the largest share of the publisher's
 * allocations. nats.js sends any headers object through its `encode()`, which this class
 * provides with the same wire format (`NATS/1.0\r\nName: value\r\n...\r\n\r\n`).
 */
export class EventHeaders implements MsgHdrs {
  readonly hasError = false;
  readonly status = "";
  readonly code = 0;
  readonly description = "";
  readonly #names: string[] = [];
  readonly #values: string[] = [];
  // The wire form, kept until the next change: a resent message is not encoded again.
  #encoded: Uint8Array | undefined;

  /** Appends a header whose name and value the caller already checked (a canonical name, one line). */
  appendChecked(name: string, value: string): void {
    this.#encoded = undefined;
    this.#names.push(name);
    // Trimmed as nats.js does (no copy when there is nothing to trim).
    this.#values.push(value.trim());
  }

  #matches(match: Match | undefined, k: string): (name: string) => boolean {
    if (match === Match.CanonicalMIME) {
      const c = canonicalMIMEHeaderKey(k);
      return (name) => name === c;
    }
    if (match === Match.IgnoreCase) {
      const l = k.toLowerCase();
      return (name) => name.toLowerCase() === l;
    }
    return (name) => name === k;
  }

  get(k: string, match?: Match): string {
    if (match === undefined || match === Match.Exact) {
      const i = this.#names.indexOf(k);
      return i < 0 ? "" : this.#values[i]!;
    }
    const is = this.#matches(match, k);
    const i = this.#names.findIndex(is);
    return i < 0 ? "" : this.#values[i]!;
  }

  last(k: string, match?: Match): string {
    const is = this.#matches(match, k);
    const i = this.#names.findLastIndex(is);
    return i < 0 ? "" : this.#values[i]!;
  }

  has(k: string, match?: Match): boolean {
    // The publisher asks this of every event (expectation headers): no closure for exact names.
    if (match === undefined || match === Match.Exact) return this.#names.includes(k);
    return this.#names.some(this.#matches(match, k));
  }

  values(k: string, match?: Match): string[] {
    const is = this.#matches(match, k);
    return this.#values.filter((_, i) => is(this.#names[i]!));
  }

  keys(): string[] {
    return [...new Set(this.#names)];
  }

  append(k: string, v: string, match?: Match): void {
    // The same checks and normalisation as nats.js: a valid name, a value on one line, trimmed.
    const canonical = canonicalMIMEHeaderKey(k);
    const name = match === Match.CanonicalMIME ? canonical : (this.#names.find(this.#matches(match, k)) ?? k);
    if (LINE_BREAK.test(v)) throw new TypeError(`header ${name}: values cannot contain \\r or \\n`);
    this.appendChecked(name, v);
  }

  set(k: string, v: string, match?: Match): void {
    this.delete(k, match);
    this.append(k, v, match);
  }

  delete(k: string, match?: Match): void {
    const is = this.#matches(match, k);
    for (let i = this.#names.length - 1; i >= 0; i--) {
      if (is(this.#names[i]!)) {
        this.#encoded = undefined;
        this.#names.splice(i, 1);
        this.#values.splice(i, 1);
      }
    }
  }

  *[Symbol.iterator](): IterableIterator<[string, string[]]> {
    for (const name of this.keys()) yield [name, this.#values.filter((_, i) => this.#names[i] === name)];
  }

  /** The header block as sent on the wire (what nats.js calls to publish). */
  encode(): Uint8Array {
    // Buffer.from, not TextEncoder: see encodeData in event.ts.
    return (this.#encoded ??= Buffer.from(this.toString(), "utf8"));
  }

  toString(): string {
    let s = "NATS/1.0\r\n";
    for (let i = 0; i < this.#names.length; i++) s += this.#names[i] + ": " + this.#values[i] + "\r\n";
    return s + "\r\n";
  }
}
