/**
 * English sentiment lexicon written for FlexCore: word → valence from −3 to +3. Lookup
 * also tries simple inflections (see `sentiment.ts`), so base forms suffice here.
 */

const LEVELS: ReadonlyArray<readonly [number, string]> = [
  [
    3,
    "amazing awesome brilliant excellent exceptional fantastic flawless magnificent marvelous marvellous outstanding perfect phenomenal superb " +
      "spectacular stellar stunning terrific wonderful incredible extraordinary sublime masterpiece love loved adore delighted thrilled ecstatic " +
      "best gorgeous breathtaking",
  ],
  [
    2,
    "good great nice lovely beautiful happy glad pleased enjoy enjoyable enjoyed fun impressive impressed recommend recommended reliable " +
      "helpful friendly kind pleasant satisfying satisfied smooth fast quick easy comfortable delicious tasty fresh clean cute charming elegant " +
      "generous polite favourite favorite win won winner success successful effective efficient useful valuable worth worthwhile solid sturdy " +
      "durable intuitive responsive crisp clear beautifully well-made well-designed handy fabulous cool neat sweet superior improve improved " +
      "improvement relaxing relaxed calm cozy cosy safe secure trustworthy honest joy joyful cheerful grateful thankful thanks thank appreciate " +
      "appreciated praise fantastic-looking fine-tuned seamless seamlessly painless affordable bargain exciting excited fascinating inspiring " +
      "insightful thoughtful professional skilled talented attentive spotless spacious bright welcoming warm hearty",
  ],
  [
    1,
    "fine okay ok decent fair adequate acceptable like liked works working worked fixed better reasonable reasonably stable simple " +
      "smoothly quickly easily promptly correct accurate ready hope hopeful interesting positive plus benefit benefits gain pretty " +
      "solved resolved tidy quiet modest",
  ],
  [
    -1,
    "slow slowly late delay delayed bland dull boring meh mediocre average noisy loud cramped crowded pricey expensive overpriced complicated " +
      "confusing confused odd weird strange issue issues problem problems bug bugs glitch glitches lag laggy flaky unclear tired tiring " +
      "difficult hard tough awkward clumsy cheap-looking flimsy thin stale lukewarm cold small tiny limited lacking lack lacks miss missed " +
      "missing wait waiting waited outdated old-fashioned wobbly sticky smelly dirty messy",
  ],
  [
    -2,
    "bad poor sad unhappy disappointing disappointed disappoint annoying annoyed annoy frustrating frustrated frustrate angry upset " +
      "broken break broke fail failed failure fails faulty defective damaged unreliable useless rude unfriendly unhelpful slowest worse " +
      "ugly nasty gross rotten inedible bitter sour burnt soggy greasy leak leaks leaked leaking crash crashes crashed crashing freeze froze " +
      "frozen wrong error errors lost lose losing stolen refund complain complaint complained regret regrettable waste wasted wasting " +
      "overcooked undercooked uncomfortable painful hurt pain dangerous unsafe scam fake misleading mislead lie lied lies cheated ripoff rip-off " +
      "hate hated dislike disliked mess unacceptable incompetent careless sloppy shoddy dreadful grim gloomy miserable stressful stress " +
      "worried worry nightmare avoid junk trash garbage",
  ],
  [
    -3,
    "terrible horrible awful atrocious abysmal appalling disgusting disgusted worst pathetic horrendous dreadful furious outrageous " +
      "unbearable unusable disaster disastrous catastrophe catastrophic hideous vile revolting despise loathe rubbish",
  ],
];

export const LEXICON: ReadonlyMap<string, number> = new Map(LEVELS.flatMap(([score, words]) => words.split(/\s+/).map((w) => [w, score] as const)));

/** Words that flip the valence of the next few words. */
export const NEGATORS: ReadonlySet<string> = new Set(
  "not no never none nothing nobody neither nor without hardly barely scarcely cannot can't won't don't doesn't didn't isn't wasn't aren't weren't shouldn't wouldn't couldn't haven't hasn't hadn't ain't".split(" "),
);

/** Multipliers of the next sentiment word. */
export const INTENSIFIERS: ReadonlyMap<string, number> = new Map([
  ["very", 1.5],
  ["really", 1.4],
  ["so", 1.3],
  ["extremely", 1.8],
  ["incredibly", 1.7],
  ["absolutely", 1.7],
  ["totally", 1.5],
  ["completely", 1.5],
  ["utterly", 1.8],
  ["super", 1.5],
  ["truly", 1.4],
  ["highly", 1.5],
  ["too", 1.3],
  ["quite", 1.2],
  ["slightly", 0.5],
  ["somewhat", 0.6],
  ["a-bit", 0.6],
  ["little", 0.6],
  ["kinda", 0.6],
  ["fairly", 0.8],
]);

/** Contrast words: what follows them weighs more than what precedes them. */
export const CONTRASTS: ReadonlySet<string> = new Set(["but", "however", "although", "though", "yet", "except"]);
