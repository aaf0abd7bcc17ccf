/**
 * Matrix factorisation for implicit feedback by alternating least squares (Hu, Koren &
 * Volinsky 2008): preference p = 1 for observed pairs, confidence c = 1 + α·weight,
 * minimise Σ c (p − uᵀv)² + λ(‖U‖² + ‖V‖²). Each half-step solves one small f × f
 * symmetric positive definite system per user (or item) with ml-matrix's Cholesky.
 * `foldInUser` is the same solve for one user with the items fixed: the online update.
 */
import { CholeskyDecomposition, Matrix } from "ml-matrix";
import type { Random } from "./random.js";

export interface AlsParams {
  /** Latent factors. */
  readonly factors: number;
  /** L2 regularisation λ. */
  readonly lambda: number;
  /** Confidence scale α. */
  readonly alpha: number;
}

/** One observed (user, item) pair with its summed weight. */
export interface Interaction {
  readonly user: number;
  readonly item: number;
  readonly weight: number;
}

/** Small random factors (scale 0.1) for a new user or item. */
export function randomFactors(f: number, rng: Random): number[] {
  return Array.from({ length: f }, () => rng.normal() * 0.1);
}

/** Gram matrix YᵀY of the fixed side, shared by every row's system. */
export function gram(rows: readonly (readonly number[])[], f: number): Matrix {
  const g = Array.from({ length: f }, () => new Array<number>(f).fill(0));
  for (const y of rows) {
    for (let a = 0; a < f; a++) {
      const ya = y[a]!;
      const row = g[a]!;
      for (let b = a; b < f; b++) row[b] = row[b]! + ya * y[b]!;
    }
  }
  for (let a = 0; a < f; a++) for (let b = a + 1; b < f; b++) g[b]![a] = g[a]![b]!;
  return new Matrix(g);
}

/**
 * Solves one row: x = (YᵀY + Yᵀ(C − I)Y + λI)⁻¹ Yᵀ C p over the row's observed
 * `(index, weight)` pairs.
 */
export function solveRow(yty: Matrix, fixed: readonly (readonly number[])[], observed: readonly (readonly [number, number])[], params: AlsParams): number[] {
  const f = params.factors;
  // Built in plain arrays (ml-matrix's get/set per cell dominated the cost), then solved
  // with ml-matrix's Cholesky.
  const a = yty.to2DArray();
  const b = new Array<number>(f).fill(0);
  for (const [j, w] of observed) {
    const y = fixed[j]!;
    const c = 1 + params.alpha * w;
    for (let r = 0; r < f; r++) {
      b[r] = b[r]! + c * y[r]!;
      const scaled = (c - 1) * y[r]!;
      const row = a[r]!;
      for (let s = r; s < f; s++) row[s] = row[s]! + scaled * y[s]!;
    }
  }
  // Filled above the diagonal only; mirror so the matrix is exactly symmetric (Cholesky checks).
  for (let r = 0; r < f; r++) {
    a[r]![r] = a[r]![r]! + params.lambda;
    for (let s = r + 1; s < f; s++) a[s]![r] = a[r]![s]!;
  }
  return new CholeskyDecomposition(new Matrix(a)).solve(Matrix.columnVector(b)).getColumn(0);
}

/** Groups interactions by user or item: row index → [(other index, weight)]. */
export function byRow(interactions: readonly Interaction[], side: "user" | "item", rows: number): [number, number][][] {
  const out: [number, number][][] = Array.from({ length: rows }, () => []);
  for (const x of interactions) out[side === "user" ? x.user : x.item]!.push([side === "user" ? x.item : x.user, x.weight]);
  return out;
}

/** `iterations` full ALS sweeps (users, then items), in place, warm-started from the given factors. */
export function trainAls(users: number[][], items: number[][], interactions: readonly Interaction[], params: AlsParams, iterations: number): void {
  const perUser = byRow(interactions, "user", users.length);
  const perItem = byRow(interactions, "item", items.length);
  for (let it = 0; it < iterations; it++) {
    const vtv = gram(items, params.factors);
    for (let u = 0; u < users.length; u++) users[u] = solveRow(vtv, items, perUser[u]!, params);
    const utu = gram(users, params.factors);
    for (let i = 0; i < items.length; i++) items[i] = solveRow(utu, users, perItem[i]!, params);
  }
}

/** The online update: one user's vector given fixed item factors and `VᵀV`. */
export function foldInUserRow(vtv: Matrix, items: readonly (readonly number[])[], observed: readonly (readonly [number, number])[], params: AlsParams): number[] {
  return solveRow(vtv, items, observed, params);
}

/** Scores of every item for a user vector. */
export function scoreItems(user: readonly number[], items: readonly (readonly number[])[]): number[] {
  return items.map((v) => v.reduce((s, x, j) => s + x * user[j]!, 0));
}
