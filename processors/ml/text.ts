/**
 * English text basics: tokenisation, stop words, syllable estimate, text statistics.
 * Tokens are lower-cased NFKC words of letters and digits; inner apostrophes and hyphens
 * stay (`don't`, `well-made`), so negations remain visible to the sentiment scorer.
 */

const WORD = /[\p{L}\p{N}]+(?:['’\-][\p{L}\p{N}]+)*/gu;
const SENTENCE_END = /[.!?]+(?=\s|$)/g;

export function tokenize(text: string): string[] {
  return (text.normalize("NFKC").toLowerCase().match(WORD) ?? []).map((t) => t.replace(/’/g, "'"));
}

/** A short English stop-word list (function words that carry no topic). */
export const STOP_WORDS: ReadonlySet<string> = new Set(
  (
    "a about above after again against all am an and any are as at be because been before being below between both but by can could did do does doing " +
    "down during each few for from further had has have having he her here hers herself him himself his how i if in into is it its itself just let me " +
    "more most my myself no nor not of off on once only or other our ours ourselves out over own same she should so some such than that the their theirs " +
    "them themselves then there these they this those through to too under until up very was we were what when where which while who whom why will " +
    "with would you your yours yourself yourselves also get got im i'm it's don't didn't doesn't isn't wasn't can't won't i've i'll we're they're you're"
  ).split(" "),
);

/** Vowel-group count with the silent-e rule; about 90% right for English words. */
export function syllables(word: string): number {
  const w = word.toLowerCase().replace(/[^a-z]/g, "");
  if (w.length === 0) return 0;
  if (w.length <= 3) return 1;
  const trimmed = w.replace(/(?:[^laeiouy]es|[^laeiouy]ed|[^laeiouy]e)$/, "").replace(/^y/, "");
  const groups = trimmed.match(/[aeiouy]{1,2}/g);
  return Math.max(1, groups ? groups.length : 1);
}

/** Statistics of one text. */
export interface TextStats {
  readonly characters: number;
  readonly words: number;
  readonly sentences: number;
  readonly uniqueWords: number;
  /** Unique words / words. */
  readonly lexicalDiversity: number;
  readonly avgWordLength: number;
  readonly avgSentenceLength: number;
  readonly syllablesPerWord: number;
  /** Flesch reading ease: 206.835 − 1.015 words/sentence − 84.6 syllables/word (higher is easier). */
  readonly readingEase: number;
}

export function textStats(text: string, tokens: readonly string[] = tokenize(text)): TextStats {
  const words = tokens.length;
  const sentences = Math.max(words > 0 ? 1 : 0, (text.match(SENTENCE_END) ?? []).length + (/[.!?]\s*$/.test(text) || text.trim() === "" ? 0 : 1));
  const unique = new Set(tokens).size;
  const letters = tokens.reduce((s, t) => s + t.length, 0);
  const syl = tokens.reduce((s, t) => s + syllables(t), 0);
  const perSentence = sentences > 0 ? words / sentences : 0;
  const perWord = words > 0 ? syl / words : 0;
  return {
    characters: [...text].length,
    words,
    sentences,
    uniqueWords: unique,
    lexicalDiversity: words > 0 ? unique / words : 0,
    avgWordLength: words > 0 ? letters / words : 0,
    avgSentenceLength: perSentence,
    syllablesPerWord: perWord,
    readingEase: words > 0 ? 206.835 - 1.015 * perSentence - 84.6 * perWord : 0,
  };
}
