/**
 * `nlp`: per text event, tokens, keywords by TF-IDF against the last `window` texts of
 * the same key (document frequencies are updated event by event), text statistics and
 * lexicon-based sentiment with negation.
 */
import { compileSchema } from "../../streams/index.js";
import { sentiment } from "../ml/sentiment.js";
import type { Sentiment } from "../ml/sentiment.js";
import { STOP_WORDS, textStats, tokenize } from "../ml/text.js";
import type { TextStats } from "../ml/text.js";
import type { ProcessorDefinition, ProcessorOutput } from "../types.js";
import { badInput, isRecord } from "./input-checks.js";
import { booleanSchema, camelKeys, checkOptions, integerSchema, numberSchema, objectSchema } from "../options.js";

/** Options of the `nlp` processor (validated, frozen). In `flexcore.yaml` the keys are snake_case (`refit_every` for `refitEvery`). */
export interface NlpOptions {
  /** Texts per key the document frequencies cover (the current one included). @default 100 */
  readonly window: number;
  /** Keywords per text. @default 5 */
  readonly keywords: number;
  /** Include the token list in outputs. @default false */
  readonly emitTokens: boolean;
  /** |score| below which sentiment is `neutral`. @default 0 */
  readonly neutralBelow: number;
  /** Texts longer than this many characters are rejected. @default 100000 */
  readonly maxLength: number;
}

/** Per-key state (JSON): the window's distinct terms per text and their document frequencies. */
export interface NlpState {
  docs: string[][];
  df: Record<string, number>;
  seen: number;
}

export interface Keyword {
  readonly term: string;
  /** tf × idf, tf = count / tokens, idf = ln((1 + N) / (1 + df)) + 1 (smoothed, as scikit-learn). */
  readonly score: number;
}

/** `data` of an `nlp.analyzed` output. */
export interface NlpResult {
  readonly tokens?: readonly string[];
  readonly keywords: readonly Keyword[];
  readonly stats: TextStats;
  readonly sentiment: Sentiment;
}

export const NLP_OUTPUT = "TextAnalyzed";
const OPTIONS = compileSchema<Record<string, unknown>>(objectSchema({
  window: integerSchema(100, 1, 100_000),
  keywords: integerSchema(5, 0, 1000),
  emit_tokens: booleanSchema(false),
  neutral_below: numberSchema(0, 0, 1000),
  max_length: integerSchema(100_000, 1),
}));
const MIN_KEYWORD_LENGTH = 2;

/** Accepts a string or `{ text: string }`. */
export function readText(data: unknown, field: string, maxLength: number): string {
  const text = isRecord(data) ? data["text"] : data;
  const at = isRecord(data) ? `${field}.text` : field;
  if (typeof text !== "string") throw badInput(at, text, "a string (or { text: string })");
  if (text.length > maxLength) throw badInput(at, text, `a text of at most ${maxLength} characters`);
  return text;
}

const isKeywordCandidate = (t: string): boolean => t.length >= MIN_KEYWORD_LENGTH && !STOP_WORDS.has(t) && !/^\d+$/.test(t);

export const nlp: ProcessorDefinition<NlpOptions, NlpState> = {
  kind: "nlp",
  description: "Tokens, TF-IDF keywords over a sliding window of texts per key, text statistics and lexicon sentiment with negation.",
  validateOptions(raw, path) {
    return Object.freeze(camelKeys<NlpOptions>(checkOptions(OPTIONS, raw, path)));
  },
  optionsSchema: OPTIONS.schema,
  initialState() {
    return { docs: [], df: {}, seen: 0 };
  },
  process(prev, inputs, options) {
    const state: NlpState = structuredClone(prev);
    // A Map, so terms such as `__proto__` or `constructor` are plain keys.
    const df = new Map(Object.entries(state.df));
    const outputs = inputs.map((input, i): ProcessorOutput[] => {
      const text = readText(input.data, `inputs[${i}].data`, options.maxLength);
      const tokens = tokenize(text);
      const terms = [...new Set(tokens.filter(isKeywordCandidate))].sort();
      state.docs.push(terms);
      for (const t of terms) df.set(t, (df.get(t) ?? 0) + 1);
      if (state.docs.length > options.window) {
        for (const t of state.docs.shift()!) {
          const left = df.get(t)! - 1;
          if (left === 0) df.delete(t);
          else df.set(t, left);
        }
      }
      state.seen++;
      const counts = new Map<string, number>();
      for (const t of tokens) if (isKeywordCandidate(t)) counts.set(t, (counts.get(t) ?? 0) + 1);
      const n = state.docs.length;
      const keywords = [...counts]
        .map(([term, c]): Keyword => ({ term, score: (c / tokens.length) * (Math.log((1 + n) / (1 + df.get(term)!)) + 1) }))
        .sort((a, b) => b.score - a.score || (a.term < b.term ? -1 : 1))
        .slice(0, options.keywords);
      const data: NlpResult = {
        ...(options.emitTokens ? { tokens } : {}),
        keywords,
        stats: textStats(text, tokens),
        sentiment: sentiment(text, options.neutralBelow),
      };
      return [{ type: NLP_OUTPUT, data }];
    });
    state.df = Object.fromEntries(df);
    return { state, outputs };
  },
};
