/**
 * Seeded pseudo-random numbers whose whole state is one unsigned 32-bit integer, so it
 * fits in a processor's JSON state and a replay draws the same numbers.
 * Generator: mulberry32 (period 2^32, passes gjrand/PractRand to 2^32 draws) — enough
 * for initialisation and sampling, and an order of magnitude cheaper than a CSPRNG.
 */

/** A seeded generator. `state` can be stored and passed to {@link createRandom} later. */
export interface Random {
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform integer in [0, n). */
  int(n: number): number;
  /** Standard normal (Box–Muller; one draw per call, no cached spare, so state stays one integer). */
  normal(): number;
  /** Current state; `createRandom(r.state)` continues the same sequence. */
  readonly state: number;
}

const GOLDEN = 0x6d2b79f5;

export function createRandom(seed: number): Random {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + GOLDEN) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n: number): number => Math.floor(next() * n),
    normal: (): number => {
      // 1 - u keeps the logarithm finite.
      const u = 1 - next();
      const v = next();
      return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    },
    get state(): number {
      return s;
    },
  };
}

/** FNV-1a hash of a string mixed with a seed: a per-key seed that does not depend on key order. */
export function seedFor(seed: number, key: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** Fisher–Yates shuffle in place, driven by `rng`. */
export function shuffle<T>(items: T[], rng: Random): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const tmp = items[i]!;
    items[i] = items[j]!;
    items[j] = tmp;
  }
  return items;
}
