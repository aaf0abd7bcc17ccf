/**
 * Templates and conditions. A string that is exactly `${{ expr }}` becomes the value of
 * `expr` (any JSON type); `${{ expr }}` inside a longer string is replaced by its text.
 * Expressions: paths from the roots `trigger`, `input`, `steps`, `run` (`steps.enrich.output.score`,
 * `trigger.data.items[0]`), JSON literals, `== != < <= > >=`, `&& || !` and parentheses.
 * A missing path is `null`; nothing else is evaluated (no calls, no code).
 */
import { FlexError } from "../streams/index.js";

export const TEMPLATE_ROOTS = ["trigger", "input", "steps", "run"] as const;

type Node =
  | { readonly t: "lit"; readonly v: unknown }
  | { readonly t: "path"; readonly root: string; readonly keys: readonly (string | number)[] }
  | { readonly t: "not"; readonly e: Node }
  | { readonly t: "bin"; readonly op: string; readonly a: Node; readonly b: Node };

/** An expression or template that cannot be parsed. */
export class ExpressionError extends FlexError {
  constructor(message: string) {
    super("FLEX_WORKFLOW_EXPRESSION", message);
    this.name = "ExpressionError";
  }
}

const TOKEN = /\s*(?:(\d+(?:\.\d+)?)|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(==|!=|<=|>=|&&|\|\||[<>!().[\]])|([A-Za-z_][A-Za-z0-9_-]*))/y;

function tokenize(src: string): string[] {
  const out: string[] = [];
  TOKEN.lastIndex = 0;
  let i = 0;
  while (i < src.length) {
    if (/^\s*$/.test(src.slice(i))) break;
    TOKEN.lastIndex = i;
    const m = TOKEN.exec(src);
    if (!m) throw new ExpressionError(`unexpected \`${src.slice(i).trim().slice(0, 20)}\` in \`${src}\``);
    out.push(m[0].trim());
    i = TOKEN.lastIndex;
  }
  return out;
}

/** Parses an expression. @throws ExpressionError */
export function parseExpression(src: string): Node {
  const toks = tokenize(src);
  let p = 0;
  const peek = (): string | undefined => toks[p];
  const take = (want?: string): string => {
    const t = toks[p];
    if (t === undefined || (want !== undefined && t !== want)) throw new ExpressionError(`expected ${want ? `\`${want}\`` : "more"} in \`${src}\`, got ${t === undefined ? "the end" : `\`${t}\``}`);
    p += 1;
    return t;
  };
  const primary = (): Node => {
    const t = take();
    if (t === "(") {
      const e = or();
      take(")");
      return e;
    }
    if (/^\d/.test(t)) return { t: "lit", v: Number(t) };
    if (t.startsWith('"')) return { t: "lit", v: JSON.parse(t) as unknown };
    if (t.startsWith("'")) return { t: "lit", v: JSON.parse(`"${t.slice(1, -1).replace(/\\'/g, "'").replace(/"/g, '\\"')}"`) as unknown };
    if (t === "true" || t === "false" || t === "null") return { t: "lit", v: JSON.parse(t) as unknown };
    if (/^[A-Za-z_]/.test(t)) {
      if (!(TEMPLATE_ROOTS as readonly string[]).includes(t)) throw new ExpressionError(`unknown name \`${t}\` in \`${src}\`; paths start with ${TEMPLATE_ROOTS.join(", ")}`);
      const keys: (string | number)[] = [];
      for (;;) {
        if (peek() === ".") {
          take(".");
          const k = take();
          if (!/^[A-Za-z0-9_-]+$/.test(k)) throw new ExpressionError(`expected a name after \`.\` in \`${src}\`, got \`${k}\``);
          keys.push(/^\d+$/.test(k) ? Number(k) : k);
        } else if (peek() === "[") {
          take("[");
          const k = take();
          if (/^\d+$/.test(k)) keys.push(Number(k));
          else if (/^["']/.test(k)) keys.push(String((primaryOf(k) as { v: unknown }).v));
          else throw new ExpressionError(`expected an index or a quoted key in \`[...]\` of \`${src}\``);
          take("]");
        } else break;
      }
      return { t: "path", root: t, keys };
    }
    throw new ExpressionError(`unexpected \`${t}\` in \`${src}\``);
  };
  const primaryOf = (t: string): Node => (t.startsWith('"') ? { t: "lit", v: JSON.parse(t) as unknown } : { t: "lit", v: t.slice(1, -1) });
  const unary = (): Node => (peek() === "!" ? (take(), { t: "not", e: unary() }) : primary());
  const cmp = (): Node => {
    const a = unary();
    const op = peek();
    if (op && ["==", "!=", "<", "<=", ">", ">="].includes(op)) {
      take();
      return { t: "bin", op, a, b: unary() };
    }
    return a;
  };
  const and = (): Node => {
    let a = cmp();
    while (peek() === "&&") {
      take();
      a = { t: "bin", op: "&&", a, b: cmp() };
    }
    return a;
  };
  const or = (): Node => {
    let a = and();
    while (peek() === "||") {
      take();
      a = { t: "bin", op: "||", a, b: and() };
    }
    return a;
  };
  if (toks.length === 0) throw new ExpressionError("empty expression");
  const node = or();
  if (p < toks.length) throw new ExpressionError(`unexpected \`${toks[p]}\` in \`${src}\``);
  return node;
}

function truthy(v: unknown): boolean {
  return !(v === null || v === undefined || v === false || v === 0 || v === "");
}

function equal(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined) return (a ?? null) === (b ?? null);
  return typeof a === "object" && typeof b === "object" && JSON.stringify(a) === JSON.stringify(b);
}

/** Evaluates a parsed expression against a context. */
export function evaluate(node: Node, ctx: Readonly<Record<string, unknown>>): unknown {
  switch (node.t) {
    case "lit":
      return node.v;
    case "path": {
      let v: unknown = ctx[node.root];
      for (const k of node.keys) {
        if (v === null || typeof v !== "object") return null;
        v = (v as Record<string | number, unknown>)[k];
      }
      return v === undefined ? null : v;
    }
    case "not":
      return !truthy(evaluate(node.e, ctx));
    case "bin": {
      if (node.op === "&&") return truthy(evaluate(node.a, ctx)) && truthy(evaluate(node.b, ctx));
      if (node.op === "||") return truthy(evaluate(node.a, ctx)) || truthy(evaluate(node.b, ctx));
      const a = evaluate(node.a, ctx);
      const b = evaluate(node.b, ctx);
      if (node.op === "==") return equal(a, b);
      if (node.op === "!=") return !equal(a, b);
      if ((typeof a !== "number" || typeof b !== "number") && (typeof a !== "string" || typeof b !== "string")) return false;
      if (node.op === "<") return a < b;
      if (node.op === "<=") return a <= b;
      if (node.op === ">") return a > b;
      return a >= b;
    }
  }
}

/** Step ids an expression reads (`steps.<id>...`). */
export function stepRefs(node: Node, out: Set<string> = new Set()): Set<string> {
  if (node.t === "path" && node.root === "steps" && node.keys.length > 0) out.add(String(node.keys[0]));
  if (node.t === "not") stepRefs(node.e, out);
  if (node.t === "bin") {
    stepRefs(node.a, out);
    stepRefs(node.b, out);
  }
  return out;
}

const PLACEHOLDER = /\$\{\{([\s\S]*?)\}\}/g;
const WHOLE = /^\s*\$\{\{([\s\S]*?)\}\}\s*$/;

/** Parses every placeholder in a JSON value; calls `visit(node, where)` for each. @throws ExpressionError */
export function scanTemplate(value: unknown, visit: (node: Node, where: string) => void, where = ""): void {
  if (typeof value === "string") {
    for (const m of value.matchAll(PLACEHOLDER)) visit(parseExpression(m[1]!), where);
  } else if (Array.isArray(value)) value.forEach((v, i) => scanTemplate(v, visit, `${where}[${i}]`));
  else if (value !== null && typeof value === "object") for (const [k, v] of Object.entries(value)) scanTemplate(v, visit, `${where}.${k}`);
}

/** Renders a template value. */
export function render(value: unknown, ctx: Readonly<Record<string, unknown>>): unknown {
  if (typeof value === "string") {
    const whole = WHOLE.exec(value);
    if (whole && !whole[1]!.includes("}}")) return evaluate(parseExpression(whole[1]!), ctx);
    return value.replace(PLACEHOLDER, (_, expr: string) => {
      const v = evaluate(parseExpression(expr), ctx);
      return typeof v === "string" ? v : JSON.stringify(v ?? null);
    });
  }
  if (Array.isArray(value)) return value.map((v) => render(v, ctx));
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, render(v, ctx)]));
  return value;
}

/** Evaluates a `when` condition: a bare expression or one `${{ expr }}`. */
export function condition(src: string, ctx: Readonly<Record<string, unknown>>): boolean {
  const whole = WHOLE.exec(src);
  return truthy(evaluate(parseExpression(whole ? whole[1]! : src), ctx));
}

/** Parses a `when` condition for validation. */
export function parseCondition(src: string): Node {
  const whole = WHOLE.exec(src);
  return parseExpression(whole ? whole[1]! : src);
}
