/**
 * CART classification tree (Gini impurity, binary splits on thresholds halfway between
 * sorted distinct values). Deterministic: ties between splits go to the lower feature
 * index and then the lower threshold. The tree is plain JSON.
 */

export type TreeNode =
  | { readonly leaf: true; readonly counts: Readonly<Record<string, number>> }
  | { readonly leaf: false; readonly feature: number; readonly threshold: number; readonly left: TreeNode; readonly right: TreeNode };

export interface TreeParams {
  /** Depth at most (the root is depth 0). */
  readonly maxDepth: number;
  /** Rows at least in each child of a split. */
  readonly minLeaf: number;
}

interface Row {
  readonly x: readonly number[];
  readonly y: string;
}

function counts(rows: readonly Row[]): Record<string, number> {
  // Counted in a Map so labels such as `__proto__` stay plain keys.
  const out = new Map<string, number>();
  for (const r of rows) out.set(r.y, (out.get(r.y) ?? 0) + 1);
  return Object.fromEntries(out);
}

function gini(c: ReadonlyMap<string, number>, n: number): number {
  if (n === 0) return 0;
  let s = 1;
  for (const v of c.values()) s -= (v / n) * (v / n);
  return s;
}

export function trainTree(rows: readonly Row[], params: TreeParams, depth = 0): TreeNode {
  const here = counts(rows);
  if (depth >= params.maxDepth || rows.length < 2 * params.minLeaf || Object.keys(here).length < 2) return { leaf: true, counts: here };
  const n = rows.length;
  const total = new Map(Object.entries(here));
  let best = { score: gini(total, n) - 1e-12, feature: -1, threshold: 0 };
  const d = rows[0]!.x.length;
  for (let f = 0; f < d; f++) {
    const sorted = [...rows].sort((a, b) => a.x[f]! - b.x[f]!);
    const left = new Map<string, number>();
    const right = new Map(total);
    for (let i = 0; i < n - 1; i++) {
      const y = sorted[i]!.y;
      left.set(y, (left.get(y) ?? 0) + 1);
      right.set(y, right.get(y)! - 1);
      const a = sorted[i]!.x[f]!;
      const b = sorted[i + 1]!.x[f]!;
      if (a === b || i + 1 < params.minLeaf || n - i - 1 < params.minLeaf) continue;
      const score = ((i + 1) / n) * gini(left, i + 1) + ((n - i - 1) / n) * gini(right, n - i - 1);
      if (score < best.score) best = { score, feature: f, threshold: (a + b) / 2 };
    }
  }
  if (best.feature < 0) return { leaf: true, counts: here };
  const l = rows.filter((r) => r.x[best.feature]! <= best.threshold);
  const r = rows.filter((r) => r.x[best.feature]! > best.threshold);
  return { leaf: false, feature: best.feature, threshold: best.threshold, left: trainTree(l, params, depth + 1), right: trainTree(r, params, depth + 1) };
}

/** Class frequencies of the leaf `x` falls into. */
export function predictTree(node: TreeNode, x: readonly number[]): Readonly<Record<string, number>> {
  let at = node;
  while (!at.leaf) at = x[at.feature]! <= at.threshold ? at.left : at.right;
  return at.counts;
}
