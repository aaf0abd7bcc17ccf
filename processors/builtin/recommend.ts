/**
 * `recommend`: collaborative filtering per key (a catalogue: a shop, a site) from
 * interaction events `{ user, item, weight? }`. Implicit-feedback matrix factorisation by
 * ALS on ml-matrix, retrained every `retrain_every` interactions; between retrains each
 * interaction folds the user's vector in at once (exact least squares with the items
 * fixed), so recommendations follow the user event by event. Requests `{ user }` get the
 * top `top_n` unseen items; unknown users (or before the first training) get the most
 * popular items.
 */
import { compileSchema } from "../../streams/index.js";
import { foldInUserRow, gram, randomFactors, scoreItems, trainAls } from "../ml/als.js";
import type { Interaction } from "../ml/als.js";
import { createRandom, seedFor } from "../ml/random.js";
import type { ProcessorDefinition, ProcessorOutput } from "../types.js";
import { badInput, isRecord } from "./input-checks.js";
import { booleanSchema, camelKeys, checkOptions, integerSchema, numberSchema, objectSchema, SEED_SCHEMA } from "../options.js";

/** Options of the `recommend` processor (validated, frozen). In `flexcore.yaml` the keys are snake_case (`refit_every` for `refitEvery`). */
export interface RecommendOptions {
  /** Latent factors. @default 16 */
  readonly factors: number;
  /** ALS regularisation λ (low values let each user's vector memorise its own items). @default 1 */
  readonly lambda: number;
  /** Confidence per unit of weight (c = 1 + α·weight). @default 10 */
  readonly alpha: number;
  /** ALS sweeps per retrain. @default 10 */
  readonly iterations: number;
  /** Retrain after this many interactions. @default 100 */
  readonly retrainEvery: number;
  /** Items per recommendation. @default 10 */
  readonly topN: number;
  /** Distinct (user, item) pairs kept; the least recently seen go first. @default 100000 */
  readonly maxInteractions: number;
  /** Leave out items the user already interacted with. @default true */
  readonly excludeSeen: boolean;
  /** Also emit the user's recommendations after each interaction. @default false */
  readonly emitOnInteraction: boolean;
  /** Seed of the factor initialisation. @default 42 */
  readonly seed: number;
}

/** Per-key state (JSON). */
export interface RecommendState {
  users: string[];
  items: string[];
  userFactors: number[][];
  itemFactors: number[][];
  /** `[user, item, weight, lastSeen]`. */
  pairs: [number, number, number, number][];
  /** Total weight per item. */
  popularity: number[];
  clock: number;
  sinceFit: number;
  modelVersion: number;
  rng: number;
}

export interface RecommendedItem {
  readonly item: string;
  readonly score: number;
}

/** `data` of a `recommend.items` output. */
export interface Recommendations {
  readonly user: string;
  readonly items: readonly RecommendedItem[];
  /** `model`: from the factorisation; `popularity`: the fallback. */
  readonly source: "model" | "popularity";
  readonly modelVersion: number;
}

export const RECOMMEND_OUTPUT = "ItemsRecommended";
const OPTIONS = compileSchema<Record<string, unknown>>(objectSchema({
  factors: integerSchema(16, 1, 256),
  lambda: numberSchema(1, 0, 1000, true),
  alpha: numberSchema(10, 0, 10_000),
  iterations: integerSchema(10, 1, 1000),
  retrain_every: integerSchema(100, 1),
  top_n: integerSchema(10, 1, 10_000),
  max_interactions: integerSchema(100_000, 1),
  exclude_seen: booleanSchema(true),
  emit_on_interaction: booleanSchema(false),
  seed: SEED_SCHEMA,
}));
const MAX_ID_LENGTH = 256;

function readId(v: unknown, field: string): string {
  if ((typeof v === "string" && v.length > 0 && v.length <= MAX_ID_LENGTH) || (typeof v === "number" && Number.isFinite(v))) return String(v);
  throw badInput(field, v, `a non-empty string (≤ ${MAX_ID_LENGTH} characters) or a number`);
}

/** Working indexes rebuilt from the state for one batch. */
class Catalogue {
  readonly userIndex: Map<string, number>;
  readonly itemIndex: Map<string, number>;
  pairIndex = new Map<string, number>();
  seenBy = new Map<number, Set<number>>();
  #vtv: ReturnType<typeof gram> | null = null;

  constructor(
    readonly state: RecommendState,
    readonly options: RecommendOptions,
  ) {
    this.userIndex = new Map(state.users.map((u, i) => [u, i]));
    this.itemIndex = new Map(state.items.map((u, i) => [u, i]));
    this.reindex();
  }

  reindex(): void {
    this.pairIndex = new Map(this.state.pairs.map(([u, i], at) => [`${u}:${i}`, at]));
    this.seenBy = new Map();
    for (const [u, i] of this.state.pairs) {
      let s = this.seenBy.get(u);
      if (!s) this.seenBy.set(u, (s = new Set()));
      s.add(i);
    }
  }

  #id(map: Map<string, number>, names: string[], factors: number[][], name: string): number {
    let at = map.get(name);
    if (at === undefined) {
      const rng = createRandom(this.state.rng);
      at = names.length;
      names.push(name);
      factors.push(randomFactors(this.options.factors, rng));
      this.state.rng = rng.state;
      map.set(name, at);
    }
    return at;
  }

  interact(user: string, item: string, weight: number): void {
    const s = this.state;
    const u = this.#id(this.userIndex, s.users, s.userFactors, user);
    const before = s.items.length;
    const i = this.#id(this.itemIndex, s.items, s.itemFactors, item);
    if (s.items.length > before) {
      s.popularity.push(0);
      this.#vtv = null;
    }
    s.popularity[i] = s.popularity[i]! + weight;
    const key = `${u}:${i}`;
    const at = this.pairIndex.get(key);
    if (at !== undefined) {
      const p = s.pairs[at]!;
      p[2] += weight;
      p[3] = s.clock++;
    } else {
      s.pairs.push([u, i, weight, s.clock++]);
      this.pairIndex.set(key, s.pairs.length - 1);
      let seen = this.seenBy.get(u);
      if (!seen) this.seenBy.set(u, (seen = new Set()));
      seen.add(i);
      if (s.pairs.length > this.options.maxInteractions) {
        let oldest = 0;
        for (let p = 1; p < s.pairs.length; p++) if (s.pairs[p]![3] < s.pairs[oldest]![3]) oldest = p;
        s.pairs.splice(oldest, 1);
        this.reindex();
      }
    }
    s.sinceFit++;
    if (s.sinceFit >= this.options.retrainEvery) {
      const interactions: Interaction[] = s.pairs.map(([user, item, w]) => ({ user, item, weight: w }));
      trainAls(s.userFactors, s.itemFactors, interactions, this.options, this.options.iterations);
      s.sinceFit = 0;
      s.modelVersion++;
      this.#vtv = null;
    } else if (s.modelVersion > 0) {
      this.#vtv ??= gram(s.itemFactors, this.options.factors);
      const observed = s.pairs.filter((p) => p[0] === u).map((p): [number, number] => [p[1], p[2]]);
      s.userFactors[u] = foldInUserRow(this.#vtv, s.itemFactors, observed, this.options);
    }
  }

  recommend(user: string): Recommendations {
    const s = this.state;
    const u = this.userIndex.get(user);
    const seen = (u !== undefined && this.options.excludeSeen ? this.seenBy.get(u) : undefined) ?? new Set<number>();
    const useModel = u !== undefined && s.modelVersion > 0;
    const scores = useModel ? scoreItems(s.userFactors[u]!, s.itemFactors) : s.popularity;
    const ranked = scores
      .map((score, i) => ({ i, score }))
      .filter((x) => !seen.has(x.i))
      .sort((a, b) => b.score - a.score || a.i - b.i)
      .slice(0, this.options.topN);
    return { user, items: ranked.map((x) => ({ item: s.items[x.i]!, score: x.score })), source: useModel ? "model" : "popularity", modelVersion: s.modelVersion };
  }
}

export const recommend: ProcessorDefinition<RecommendOptions, RecommendState> = {
  kind: "recommend",
  description: "Collaborative filtering per key: implicit-feedback ALS matrix factorisation (ml-matrix), online fold-in per interaction, top-N unseen items per user.",
  validateOptions(raw, path) {
    return Object.freeze(camelKeys<RecommendOptions>(checkOptions(OPTIONS, raw, path)));
  },
  optionsSchema: OPTIONS.schema,
  initialState(options, key) {
    return { users: [], items: [], userFactors: [], itemFactors: [], pairs: [], popularity: [], clock: 0, sinceFit: 0, modelVersion: 0, rng: seedFor(options.seed, key) };
  },
  process(prev, inputs, options) {
    const state: RecommendState = structuredClone(prev);
    const catalogue = new Catalogue(state, options);
    const outputs = inputs.map((input, i): ProcessorOutput[] => {
      const field = `inputs[${i}].data`;
      const data = input.data;
      if (!isRecord(data)) throw badInput(field, data, "{ user, item, weight? } or { user }");
      const user = readId(data["user"], `${field}.user`);
      if (data["item"] === undefined) return [{ type: RECOMMEND_OUTPUT, data: catalogue.recommend(user) }];
      const item = readId(data["item"], `${field}.item`);
      const weight = data["weight"] ?? 1;
      if (typeof weight !== "number" || !Number.isFinite(weight) || weight <= 0) throw badInput(`${field}.weight`, weight, "a number > 0");
      catalogue.interact(user, item, weight);
      return options.emitOnInteraction ? [{ type: RECOMMEND_OUTPUT, data: catalogue.recommend(user) }] : [];
    });
    return { state, outputs };
  },
};
