import { describe, expect, it } from "vitest";
import { sentiment, valence } from "./sentiment.js";
import { syllables, textStats, tokenize } from "./text.js";

describe("text (unit)", () => {
  it("tokenizes words, keeps contractions and hyphenated words, drops punctuation", () => {
    expect(tokenize("Don’t STOP — it's well-made, 100%!")).toEqual(["don't", "stop", "it's", "well-made", "100"]);
    expect(tokenize("Café crème")).toEqual(["café", "crème"]);
    expect(tokenize("...")).toEqual([]);
  });

  it("counts words, sentences and syllables", () => {
    expect(syllables("cat")).toBe(1);
    expect(syllables("table")).toBe(1 + 0 + 1);
    expect(syllables("wonderful")).toBe(3);
    const s = textStats("The cat sat. The cat ran away!");
    expect(s).toMatchObject({ words: 7, sentences: 2, uniqueWords: 5, characters: 30 });
    expect(s.avgSentenceLength).toBe(3.5);
    expect(textStats("")).toMatchObject({ words: 0, sentences: 0, readingEase: 0 });
  });
});

describe("sentiment (unit)", () => {
  it("scores lexicon words with inflections", () => {
    expect(valence("good")).toBe(2);
    expect(valence("crashed")).toBe(-2);
    expect(valence("loved")).toBe(3);
    expect(valence("table")).toBe(0);
    expect(sentiment("The food was good").score).toBe(2);
  });

  it("flips and damps negated words, within the clause only", () => {
    expect(sentiment("The food was not good").score).toBe(-1.5);
    expect(sentiment("It isn't bad").label).toBe("positive");
    expect(sentiment("No, it was good").score).toBe(2);
  });

  it("applies intensifiers and weighs the clause after a contrast more", () => {
    expect(sentiment("very good").score).toBe(3);
    expect(sentiment("The screen is good but the battery is terrible").label).toBe("negative");
    expect(sentiment("nothing to say").label).toBe("neutral");
  });
});
