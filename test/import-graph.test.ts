// The import graph of the project's own source (tests excluded): no circles, type-only
// imports included, and an area reaches another only through its index.ts (DESIGN.md), its
// testing.ts (the face it offers tests and benchmarks: fixtures, child-process hosts), or its
// api-types.ts (the face browser code may read: plain types, importing nothing but other
// areas' api-types.ts, type-only, so the console's bundle never pulls in server code).
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { describe, expect, it } from "vitest";

const ROOT = resolve(import.meta.dirname, "..");
/** The files of an area that other areas may import. */
const FACES = ["index.ts", "testing.ts", "api-types.ts"];
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
        if (!FACES.includes(rest.join("/"))) deep.push(`${relative(ROOT, file)} -> ${relative(ROOT, dep)}`);
      }
    }
    expect(deep).toEqual([]);
  });

  it("keeps every api-types.ts plain: type-only imports of other api-types.ts, no runtime code", () => {
    const faces = [...edges.keys()].filter((f) => f.endsWith(`${sep}api-types.ts`));
    expect(faces.map((f) => relative(ROOT, f)).sort()).toEqual(expect.arrayContaining(["gateway/api-types.ts", "streams/api-types.ts"]));
    const bad: string[] = [];
    for (const file of faces) {
      const text = readFileSync(file, "utf8");
      for (const m of text.matchAll(/^(import|export)(\s+type)?\s[^;]*?\sfrom\s+"([^"]+)"/gmsu)) {
        if (!m[2] || !/^\.\.\/[a-z]+\/api-types\.js$/u.test(m[3]!)) bad.push(`${relative(ROOT, file)}: ${m[0].split("\n")[0]}`);
      }
      if (/^\s*(export\s+)?(const|let|var|function|class|enum)\s/mu.test(text)) bad.push(`${relative(ROOT, file)}: declares runtime code`);
    }
    expect(bad).toEqual([]);
  });
});
