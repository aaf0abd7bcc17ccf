/**
 * Lexicon-based sentiment (in the spirit of VADER and AFINN, with its own lexicon):
 * valences of known words, scaled by a preceding intensifier, flipped and damped by a
 * negator up to {@link NEGATION_SCOPE} words before within the clause, and reweighted
 * around a contrast (`but`, `however`): the clause after it counts more.
 */
import { CONTRASTS, INTENSIFIERS, LEXICON, NEGATORS } from "./sentiment-lexicon.js";
import { tokenize } from "./text.js";

/** Words after a negator that it still flips. */
export const NEGATION_SCOPE = 3;
/** A negated word keeps this share of its valence, with the opposite sign ("not good" is milder than "bad"). */
export const NEGATION_FACTOR = -0.75;
/** Weights of the parts of a sentence before and after a contrast word. */
export const BEFORE_CONTRAST = 0.5;
export const AFTER_CONTRAST = 1.5;

export interface Sentiment {
  /** Sum of weighted valences. */
  readonly score: number;
  /** `score` per word, roughly in [−3, 3]. */
  readonly comparative: number;
  readonly label: "positive" | "negative" | "neutral";
  /** Lexicon words that counted positive / negative (after negation). */
  readonly positive: readonly string[];
  readonly negative: readonly string[];
}

const SUFFIXES = ["'s", "s", "es", "ed", "d", "ing", "ly", "er", "est"];

/** Valence of a word, trying common inflections of lexicon entries. */
export function valence(word: string): number {
  const direct = LEXICON.get(word);
  if (direct !== undefined) return direct;
  for (const suffix of SUFFIXES) {
    if (word.length > suffix.length + 2 && word.endsWith(suffix)) {
      const stem = word.slice(0, -suffix.length);
      const v = LEXICON.get(stem) ?? LEXICON.get(`${stem}e`);
      if (v !== undefined) return v;
    }
  }
  return 0;
}

/** Scores a text; `threshold` is the |score| below which the label is neutral. */
export function sentiment(text: string, threshold = 0): Sentiment {
  const positive: string[] = [];
  const negative: string[] = [];
  let score = 0;
  let words = 0;
  for (const sentence of text.split(/[.!?]+/)) {
    let before = 0;
    let after = 0;
    let contrasted = false;
    for (const clause of sentence.split(/[,;:()\u2014]+/)) {
      const tokens = tokenize(clause);
      words += tokens.length;
      let negatedUntil = -1;
      tokens.forEach((token, i) => {
        if (NEGATORS.has(token) || token.endsWith("n't")) {
          negatedUntil = i + NEGATION_SCOPE;
          return;
        }
        if (CONTRASTS.has(token)) {
          contrasted = true;
          negatedUntil = -1;
          return;
        }
        let v = valence(token);
        if (v === 0) return;
        const previous = tokens[i - 1];
        const boost = previous === undefined ? undefined : INTENSIFIERS.get(previous);
        if (boost !== undefined) v *= boost;
        if (i <= negatedUntil) v *= NEGATION_FACTOR;
        (v > 0 ? positive : negative).push(token);
        if (contrasted) after += v;
        else before += v;
      });
    }
    score += contrasted ? BEFORE_CONTRAST * before + AFTER_CONTRAST * after : before;
  }
  const label = score > threshold ? "positive" : score < -threshold ? "negative" : "neutral";
  return { score, comparative: words > 0 ? score / words : 0, label, positive, negative };
}
