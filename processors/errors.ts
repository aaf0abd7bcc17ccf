/**
 * Errors raised by the `processors/` area. Codes are listed in `docs/errors.md`.
 */
import { FlexError } from "../streams/index.js";

/** One problem in a configuration: where it is and what is wrong. */
export interface ConfigIssue {
  /** Path of the value, e.g. `processors[2].options.window`. */
  readonly path: string;
  /** What was expected and what was found, e.g. `expected integer ≥ 2, got "ten"`. */
  readonly message: string;
}

/**
 * A configuration (`flexcore.yaml`, a processor's options) is invalid. Every issue names
 * the path of the value; nothing was started.
 */
export class ConfigError extends FlexError {
  readonly issues: readonly ConfigIssue[];
  /** The file the configuration came from, when known. */
  readonly file: string | undefined;

  constructor(issues: readonly ConfigIssue[], file?: string, options?: { cause?: unknown }) {
    const lines = issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message));
    const head = file ? `Invalid configuration in ${file}` : "Invalid configuration";
    super("FLEX_CONFIG", lines.length === 1 && !file ? lines[0]! : `${head}:\n  ${lines.join("\n  ")}`, options);
    this.name = "ConfigError";
    this.issues = issues;
    this.file = file;
  }
}

/** A processor kind named in the configuration is neither built in nor loaded from a module. */
export class UnknownProcessorError extends FlexError {
  readonly kind: string;
  constructor(kind: string, known: readonly string[]) {
    super("FLEX_PROCESSOR_UNKNOWN", `Unknown processor kind ${JSON.stringify(kind)}; known kinds: ${known.join(", ") || "(none)"}`);
    this.name = "UnknownProcessorError";
    this.kind = kind;
  }
}

/**
 * A processor failed on a message (threw, ran out of memory, timed out). The message is
 * retried; after `max_deliver` attempts it goes to `FLEX_DLQ` with this error as the reason.
 */
export class ProcessorFailedError extends FlexError {
  readonly processor: string;
  /** Source stream sequence of the failing message. */
  readonly seq: number;
  constructor(processor: string, seq: number, reason: string, options?: { cause?: unknown }) {
    super("FLEX_PROCESSOR_FAILED", `Processor \`${processor}\` failed on sequence ${seq}: ${reason}`, options);
    this.name = "ProcessorFailedError";
    this.processor = processor;
    this.seq = seq;
  }
}

/**
 * A message was being processed when its host died (crash, process out of memory,
 * kill -9) `attempts` times in a row. It goes to `FLEX_DLQ` with this error as the reason,
 * without being processed again.
 */
export class ProcessorCrashedError extends FlexError {
  readonly processor: string;
  /** Source stream sequence of the message. */
  readonly seq: number;
  readonly attempts: number;
  constructor(processor: string, seq: number, attempts: number) {
    super("FLEX_PROCESSOR_CRASHED", `Processor \`${processor}\` failed on sequence ${seq}: the host stopped ${attempts} times while processing it (crash, out of memory or kill)`);
    this.name = "ProcessorCrashedError";
    this.processor = processor;
    this.seq = seq;
    this.attempts = attempts;
  }
}

/** The runtime (or its pool) was closed while the call was waiting. */
export class RuntimeClosedError extends FlexError {
  constructor(what: string) {
    super("FLEX_RUNTIME_CLOSED", `The processor runtime was closed before ${what} completed`);
    this.name = "RuntimeClosedError";
  }
}

/**
 * A processor with `scale: partitioned` has subject filters its partitions cannot be built
 * from: a filter that does not name FLEX_EVENTS' four tokens (`evt.<tenant>.<category>.<id>`,
 * a trailing `>` standing for the tokens left), or two filters that overlap (an event would be
 * copied into the partition stream twice).
 */
export class PartitionFilterError extends FlexError {
  readonly processor: string;
  readonly filter: string;
  /** What the filter should have been. */
  readonly expected: string;

  constructor(processor: string, filter: string, expected: string) {
    super("FLEX_PARTITION_FILTER", `Processor \`${processor}\`: subject filter ${JSON.stringify(filter)} cannot be partitioned: expected ${expected}`);
    this.name = "PartitionFilterError";
    this.processor = processor;
    this.filter = filter;
    this.expected = expected;
  }
}
