// The import graph of the project's own source (tests excluded): no circles, type-only
// imports included, and an area reaches another only through its index.ts (DESIGN.md), or
// its testing.ts (the face it offers tests and benchmarks: fixtures, child-process hosts).
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { describe, expect, it } from "vitest";

const ROOT = resolve(import.meta.dirname, "..");
const AREAS = ["streams", "projections", "processors", "workflows", "plugins", "gateway", "cli", "bench"];

function sources(dir: string, out: string[] = []): string[] {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === "node_modules" || entry.name === "dist" || entry.name.startsWith(".")) continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) sources(path, out);
    else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".d.ts") && !/\.test\.ts$/u.test(entry.name)) out.push(path);
  }
  return out;
}

function graph(): Map<string, string[]> {
  const edges = new Map<string, string[]>();
  for (const area of AREAS) {
    let files: string[];
    try {
      files = sources(join(ROOT, area));
    } catch {
      continue;
    }
    for (const file of files) {
      const text = readFileSync(file, "utf8");
      const deps = [...text.matchAll(/^(?:import|export)\s[^;]*?\sfrom\s+"(\.{1,2}\/[^"]+)"/gmsu)].map((m) => resolve(dirname(file), m[1]!.replace(/\.js$/u, ".ts")));
      edges.set(file, deps);
    }
  }
  return edges;
}

/** Strongly connected components of more than one file (Tarjan). */
function circles(edges: Map<string, string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next);
    next += 1;
    stack.push(v);
    onStack.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!edges.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const component: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      component.push(relative(ROOT, w));
    } while (w !== v);
    if (component.length > 1) found.push(component.sort());
  };
  for (const v of edges.keys()) if (!index.has(v)) visit(v);
  return found;
}

describe("the import graph", () => {
  const edges = graph();

  it("has no circles, type-only imports included", () => {
    expect(edges.size).toBeGreaterThan(100);
    expect(circles(edges)).toEqual([]);
  });

  it("reaches another area only through its index.ts (or testing.ts)", () => {
    const deep: string[] = [];
    for (const [file, deps] of edges) {
      const from = relative(ROOT, file).split(sep)[0];
      for (const dep of deps) {
        const [area, ...rest] = relative(ROOT, dep).split(sep);
        if (area === from || area === "test" || !AREAS.includes(area!)) continue;
        if (rest.join("/") !== "index.ts" && rest.join("/") !== "testing.ts") deep.push(`${relative(ROOT, file)} -> ${relative(ROOT, dep)}`);
      }
    }
    expect(deep).toEqual([]);
  });
});
