/**
 * Quality of the built-in ML processors on data with a known answer
 * (`npm run bench -- ml-quality [--json FILE]`). Every figure goes through the processor
 * as the runtime calls it (`validateOptions`, `initialState`, `process`), with its
 * documented defaults unless a line below says otherwise. Data are generated from fixed
 * seeds or shipped in `processors/datasets/`, so the figures are reproducible.
 */
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { adjustedRandIndex, BUILTIN_PROCESSORS, createRandom, shuffle } from "../processors/index.js";
import type { ProcessorInput, ProcessorOutput } from "../processors/index.js";
import { median } from "./harness.js";
import type { BenchResult, Suite } from "./harness.js";

/** Splits of iris evaluated (100 rows train, 50 held out each). */
const IRIS_SPLITS = 5;
const IRIS_TRAIN = 100;
/** Recommendations per user scored by the hit rate. */
const HIT_AT = 10;
/** Least distance between blob centres, in blob standard deviations: "well separated". */
const MIN_CENTRE_GAP = 10;
/** The anomaly detector's configuration for the seasonal series (period 24). */
const ANOMALY_OPTIONS: Record<string, unknown> = { method: "zscore", season: 24, window: 200, threshold: 3.5, emit: "all" };
/**
 * Seeds of the scored series. The options above were chosen by a sweep (method ×
 * threshold × window, and `season_alpha` 0.05 / 0.1 / 0.2 once the seasonal baseline became
 * robust; its default 0.1 stayed) on series from seeds 100–104; the figures use other seeds.
 */
const ANOMALY_SEED_BASE = 600;

function dataset(name: string): string {
  // From bench/ under tsx, or from dist/bench/ after the build.
  for (const rel of ["../processors/datasets/", "../../processors/datasets/"]) {
    const path = fileURLToPath(new URL(rel + name, import.meta.url));
    if (existsSync(path)) return readFileSync(path, "utf8");
  }
  throw new Error(`data set ${name} not found under processors/datasets/`);
}

function run(kind: string, rawOptions: unknown, payloads: readonly unknown[], key = "k"): (readonly ProcessorOutput[])[] {
  const def = BUILTIN_PROCESSORS.get(kind);
  if (!def) throw new Error(`processor ${kind} is not registered in processors/builtin/index.ts`);
  const options: unknown = def.validateOptions(rawOptions, `bench.${kind}`);
  const inputs: ProcessorInput[] = payloads.map((data, i) => ({ tenant: "bench", key, subject: `evt.bench.${kind}.${key}`, seq: i + 1, type: "sample", data, time: "2026-01-01T00:00:00Z" }));
  return [...def.process(def.initialState(options, key), inputs, options).outputs];
}

const figure = (name: string, unit: string, samples: number[], extra: Record<string, unknown>): BenchResult => ({ name, unit, median: median(samples), samples, extra });

/** Noisy daily-seasonal series (period 24) with 1% injected spikes of 6–10 σ. */
export function anomalyQuality(options: Record<string, unknown> = ANOMALY_OPTIONS, seedBase = ANOMALY_SEED_BASE): BenchResult[] {
  const period = 24;
  const sd = 1;
  let tp = 0;
  let fp = 0;
  let fn = 0;
  const recalls: number[] = [];
  const precisions: number[] = [];
  for (let series = 0; series < 5; series++) {
    const rng = createRandom(seedBase + series);
    const n = 5000;
    const injected = new Set<number>();
    const values = Array.from({ length: n }, (_, t) => {
      let v = 50 + 10 * Math.sin((2 * Math.PI * t) / period) + 4 * Math.cos((4 * Math.PI * t) / period) + rng.normal() * sd;
      if (t >= 3 * period && rng.next() < 0.01) {
        injected.add(t);
        v += (rng.next() < 0.5 ? -1 : 1) * (6 + 4 * rng.next()) * sd;
      }
      return v;
    });
    const outputs = run("anomaly", options, values, `s${series}`);
    let stp = 0;
    let sfp = 0;
    outputs.forEach((out, t) => {
      const flagged = out.some((o) => (o.data as { flagged?: boolean }).flagged === true);
      if (flagged && injected.has(t)) stp++;
      else if (flagged) sfp++;
    });
    const sfn = injected.size - stp;
    tp += stp;
    fp += sfp;
    fn += sfn;
    recalls.push(stp / (stp + sfn));
    precisions.push(stp / Math.max(1, stp + sfp));
  }
  const extra = { options, series: 5, points: 5000, injected: tp + fn, truePositives: tp, falsePositives: fp, falseNegatives: fn };
  return [
    figure("anomaly.recall", "ratio", recalls, { ...extra, goal: "≥ 0.9", pooled: tp / (tp + fn) }),
    figure("anomaly.precision", "ratio", precisions, { ...extra, goal: "≥ 0.9", pooled: tp / (tp + fp) }),
  ];
}

/**
 * Five well-separated 3-D Gaussian blobs (sd 1, centres at least {@link MIN_CENTRE_GAP}
 * apart in a 40-wide box), 2,000 points, streaming (default) and window mode.
 */
function clusteringQuality(): BenchResult[] {
  const out: BenchResult[] = [];
  for (const mode of ["streaming", "window"] as const) {
    const aris: number[] = [];
    for (let s = 0; s < 3; s++) {
      const rng = createRandom(200 + s);
      const centres: number[][] = [];
      while (centres.length < 5) {
        const c = [rng.next() * 40, rng.next() * 40, rng.next() * 40];
        if (centres.every((o) => Math.hypot(o[0]! - c[0]!, o[1]! - c[1]!, o[2]! - c[2]!) >= MIN_CENTRE_GAP)) centres.push(c);
      }
      const labels: number[] = [];
      const points = Array.from({ length: 2000 }, () => {
        const c = rng.int(5);
        labels.push(c);
        return centres[c]!.map((x) => x + rng.normal());
      });
      const outputs = run("clustering", { k: 5, mode }, points, `b${s}`);
      const truth: number[] = [];
      const got: number[] = [];
      outputs.forEach((o, i) => {
        const first = o[0];
        if (!first) return;
        truth.push(labels[i]!);
        got.push((first.data as { cluster: number }).cluster);
      });
      aris.push(adjustedRandIndex(truth, got));
    }
    out.push(figure(mode === "streaming" ? "clustering.ari" : "clustering.ari.window", "ratio", aris, { k: 5, mode, points: 2000, dims: 3, sd: 1, minCentreGap: MIN_CENTRE_GAP, goal: mode === "streaming" ? "≥ 0.95" : undefined }));
  }
  return out;
}

/** Trend + two harmonics of period 24 + N(0, 2) noise; every forecast (h = 1..24) after the start is scored. */
function forecastQuality(): BenchResult[] {
  const period = 24;
  const horizon = 24;
  const mapes: number[] = [];
  for (let s = 0; s < 3; s++) {
    const rng = createRandom(300 + s);
    const n = 40 * period;
    const y = Array.from({ length: n }, (_, t) => 100 + 0.05 * t + 15 * Math.sin((2 * Math.PI * t) / period) + 5 * Math.cos((4 * Math.PI * t) / period) + rng.normal() * 2);
    const outputs = run("forecast", { period, horizon }, y, `f${s}`);
    let sum = 0;
    let count = 0;
    outputs.forEach((o, t) => {
      const first = o[0];
      if (!first) return;
      for (const p of (first.data as { forecasts: { step: number; value: number }[] }).forecasts) {
        const actual = y[t + p.step];
        if (actual === undefined) continue;
        sum += Math.abs(p.value - actual) / Math.abs(actual);
        count++;
      }
    });
    mapes.push(sum / count);
  }
  return [figure("forecast.mape", "ratio", mapes, { period, horizon, seasons: 40, noiseSd: 2, goal: "≤ 0.05" })];
}

/** Iris: 5 seeded splits, 100 labelled events then 50 unlabelled ones per split. */
function classifyQuality(): BenchResult[] {
  const rows = dataset("iris.csv")
    .trim()
    .split("\n")
    .slice(1)
    .map((line) => {
      const p = line.split(",");
      return { features: p.slice(0, 4).map(Number), label: p[4]! };
    });
  const out: BenchResult[] = [];
  for (const algorithm of ["naive-bayes", "logistic", "tree"] as const) {
    const accuracies: number[] = [];
    for (let split = 0; split < IRIS_SPLITS; split++) {
      const order = shuffle(rows.map((_, i) => i), createRandom(400 + split));
      const train = order.slice(0, IRIS_TRAIN).map((i) => rows[i]!);
      const test = order.slice(IRIS_TRAIN).map((i) => rows[i]!);
      const outputs = run("classify", { algorithm }, [...train, ...test.map((r) => ({ features: r.features }))], `iris${split}`);
      const right = outputs.slice(IRIS_TRAIN).filter((o, i) => (o[0]?.data as { label: string | null }).label === test[i]!.label).length;
      accuracies.push(right / test.length);
    }
    out.push(figure(algorithm === "naive-bayes" ? "classify.accuracy" : `classify.accuracy.${algorithm}`, "ratio", accuracies, { algorithm, splits: IRIS_SPLITS, train: IRIS_TRAIN, test: rows.length - IRIS_TRAIN, goal: algorithm === "naive-bayes" ? "≥ 0.9" : undefined }));
  }
  return out;
}

/** processors/datasets/sentiment.tsv through `nlp` with default options; neutral counts as wrong. */
function sentimentQuality(): BenchResult[] {
  const rows = dataset("sentiment.tsv")
    .trim()
    .split("\n")
    .map((line) => line.split("\t") as [string, string]);
  const outputs = run("nlp", { window: 1 }, rows.map(([, text]) => text));
  let right = 0;
  let neutral = 0;
  outputs.forEach((o, i) => {
    const label = (o[0]!.data as { sentiment: { label: string } }).sentiment.label;
    if (label === "neutral") neutral++;
    if ((label === "positive" ? "pos" : label === "negative" ? "neg" : "") === rows[i]![0]) right++;
  });
  const accuracy = right / rows.length;
  return [figure("sentiment.accuracy", "ratio", [accuracy], { sentences: rows.length, neutral, goal: "≥ 0.8" })];
}

/**
 * 300 users in 10 taste groups over 200 items (80% of a user's items from its group, 20%
 * popularity-skewed), 20 interactions each, shuffled; each user's 21st item is held out.
 * Hit rate at 10 of the processor's recommendations against the most popular unseen items.
 */
function recommendQuality(): BenchResult[] {
  const users = 300;
  const items = 200;
  const groups = 10;
  const per = 20;
  const rng = createRandom(500);
  const events: { user: string; item: string }[] = [];
  const held: string[] = [];
  for (let u = 0; u < users; u++) {
    const g = u % groups;
    const mine: number[] = [];
    while (mine.length < per + 1) {
      const it = rng.next() < 0.8 ? g * (items / groups) + rng.int(items / groups) : Math.floor(items * rng.next() ** 3);
      if (!mine.includes(it)) mine.push(it);
    }
    for (const it of mine.slice(0, per)) events.push({ user: `u${u}`, item: `i${it}` });
    held.push(`i${mine[per]}`);
  }
  shuffle(events, rng);
  const options = { top_n: HIT_AT, retrain_every: 2000 };
  const outputs = run("recommend", options, [...events, ...held.map((_, u) => ({ user: `u${u}` }))], "shop");
  const recs = outputs.slice(events.length).map((o) => (o[0]!.data as { items: { item: string }[] }).items.map((x) => x.item));
  const hits = recs.filter((r, u) => r.includes(held[u]!)).length;

  const popularity = new Map<string, number>();
  const seen = new Map<string, Set<string>>();
  for (const e of events) {
    popularity.set(e.item, (popularity.get(e.item) ?? 0) + 1);
    if (!seen.has(e.user)) seen.set(e.user, new Set());
    seen.get(e.user)!.add(e.item);
  }
  const ranked = [...popularity].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([item]) => item);
  const popHits = held.filter((h, u) => ranked.filter((x) => !seen.get(`u${u}`)!.has(x)).slice(0, HIT_AT).includes(h)).length;
  const extra = { users, items, groups, interactionsPerUser: per, at: HIT_AT, options };
  return [figure("recommend.hit-rate", "ratio", [hits / users], { ...extra, goal: "> recommend.popularity-hit-rate" }), figure("recommend.popularity-hit-rate", "ratio", [popHits / users], { ...extra, baseline: true })];
}

export const suite: Suite = {
  name: "ml-quality",
  description: "quality of the built-in ML processors on data with a known answer",
  run: async (ctx) => {
    const results: BenchResult[] = [];
    for (const [name, fn] of [
      ["anomaly", anomalyQuality],
      ["clustering", clusteringQuality],
      ["forecast", forecastQuality],
      ["classify", classifyQuality],
      ["sentiment", sentimentQuality],
      ["recommend", recommendQuality],
    ] as const) {
      const started = performance.now();
      const r = fn();
      ctx.log(`  ${name}: ${r.map((x) => `${x.name} ${x.median.toFixed(3)}`).join(", ")} (${Math.round(performance.now() - started)} ms)`);
      results.push(...r);
    }
    return results;
  },
};
