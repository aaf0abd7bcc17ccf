/**
 * The contract between the processor runtime and a processor implementation (built-in
 * or plugin). Implementations are pure and deterministic: the same options, state and
 * inputs give the same state and outputs, so a replay reproduces outputs byte for byte.
 * State must be JSON-serialisable (it is checkpointed to `flex_state`).
 */
import type { JsonSchema } from "../streams/index.js";

/** One source event handed to a processor. */
export interface ProcessorInput {
  readonly tenant: string;
  /** Partition key: the aggregate id (last subject token). */
  readonly key: string;
  readonly subject: string;
  /** Source stream sequence. */
  readonly seq: number;
  readonly type: string;
  readonly data: unknown;
  /** `Flex-Time` of the source event (RFC 3339). */
  readonly time: string;
}

/** One derived event; published to `drv.<tenant>.<processor>.<key>`. */
export interface ProcessorOutput {
  readonly type: string;
  readonly data: unknown;
  /** Output key when it differs from the input's key (e.g. a user id). @default the input key */
  readonly key?: string;
}

/** What a processor returns for a batch of one key's inputs. */
export interface ProcessResult<S> {
  readonly state: S;
  /** `outputs[i]` are the outputs of `inputs[i]` (possibly empty). */
  readonly outputs: ReadonlyArray<readonly ProcessorOutput[]>;
}

/** A processor kind (`anomaly`, `clustering`, ...). */
export interface ProcessorDefinition<O = unknown, S = unknown> {
  readonly kind: string;
  readonly description: string;
  /**
   * Validates raw options from `flexcore.yaml`; `path` is where they sit
   * (`processors[2].options`) and must prefix every error's field name.
   */
  validateOptions(raw: unknown, path: string): O;
  /**
   * The JSON Schema of the options (snake_case keys), when the kind has one: published in
   * `schemas/flexcore.schema.json` so editors complete and check `processors[].options`.
   */
  readonly optionsSchema?: JsonSchema;
  /** State of a key never seen before. */
  initialState(options: O, key: string): S;
  /** Folds one key's inputs, in order, into the state and returns the outputs. */
  process(state: S, inputs: readonly ProcessorInput[], options: O): ProcessResult<S>;
}
