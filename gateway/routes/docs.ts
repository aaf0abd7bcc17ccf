import type { FastifyInstance } from "fastify";

/**
 * The OpenAPI viewer at `/docs`: one HTML page and one script, both served by the gateway
 * (no CDN, no extra package), that read `/docs/json` and list every operation by tag with
 * its roles, parameters, body and responses. Text from the document is inserted as text,
 * never as HTML, and the page's CSP allows only the gateway's own script.
 */
const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FlexCore gateway API</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem 1.5rem 3rem; color: #1d2330; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #d8dde6; text-transform: capitalize; }
details { border: 1px solid #d8dde6; border-radius: 6px; margin: .5rem 0; } details[open] { background: #fafbfc; }
summary { cursor: pointer; padding: .45rem .7rem; } summary code { font-size: .95rem; }
.m { display: inline-block; min-width: 4.2rem; font-weight: 600; text-transform: uppercase; font-size: .8rem; }
.GET { color: #0b6bcb; } .POST { color: #17803d; } .PUT, .PATCH { color: #a05a00; } .DELETE { color: #b4232a; }
.body { padding: 0 1rem .8rem; } table { border-collapse: collapse; margin: .3rem 0; } td, th { border: 1px solid #d8dde6; padding: .2rem .5rem; text-align: left; vertical-align: top; }
pre { background: #f0f2f5; padding: .5rem; overflow: auto; font-size: .85rem; } .muted { color: #5b6475; } .lock { font-size: .8rem; color: #5b6475; }
</style>
</head>
<body>
<h1 id="title">FlexCore gateway API</h1>
<p id="about" class="muted">Loading <a href="docs/json">the OpenAPI document</a>…</p>
<p class="muted">Machine-readable: <a href="docs/json">JSON</a> · <a href="docs/yaml">YAML</a>. Authenticated routes take <code>Authorization: Bearer &lt;access token&gt;</code>.</p>
<div id="ops"></div>
<script src="docs/viewer.js"></script>
</body>
</html>
`;

const SCRIPT = `"use strict";
(async () => {
  const el = (tag, props, ...kids) => {
    const e = document.createElement(tag);
    Object.assign(e, props || {});
    for (const k of kids) if (k !== undefined && k !== null) e.append(k);
    return e;
  };
  const text = (s) => (s === undefined || s === null ? "" : String(s));
  const typeOf = (s) => (s ? text(s.type ?? (s.enum ? "enum" : "")) + (s.enum ? " (" + s.enum.join(" | ") + ")" : "") : "");
  const ops = document.getElementById("ops");
  let doc;
  try {
    const res = await fetch("docs/json", { headers: { accept: "application/json" } });
    doc = await res.json();
  } catch (err) {
    document.getElementById("about").textContent = "Could not load docs/json: " + err;
    return;
  }
  document.getElementById("title").textContent = text(doc.info?.title) + " " + text(doc.info?.version);
  document.getElementById("about").textContent = text(doc.info?.description);
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push({ path, method: method.toUpperCase(), op });
    }
  }
  for (const [tag, list] of byTag) {
    ops.append(el("h2", { textContent: tag }));
    for (const { path, method, op } of list) {
      const head = el("summary", {}, el("span", { className: "m " + method, textContent: method }), el("code", { textContent: path }), " ", el("span", { className: "muted", textContent: text(op.summary) }), op.security ? el("span", { className: "lock", textContent: "  (token)" }) : null);
      const body = el("div", { className: "body" });
      if (op.description) for (const para of op.description.split("\\n\\n")) body.append(el("p", { textContent: para }));
      if (op.parameters && op.parameters.length) {
        const t = el("table", {}, el("tr", {}, ...["name", "in", "required", "type", "description"].map((h) => el("th", { textContent: h }))));
        for (const p of op.parameters) t.append(el("tr", {}, ...[p.name, p.in, p.required ? "yes" : "", typeOf(p.schema), p.description ?? p.schema?.description].map((v) => el("td", { textContent: text(v) }))));
        body.append(el("h4", { textContent: "Parameters" }), t);
      }
      const content = op.requestBody?.content;
      if (content) for (const [type, media] of Object.entries(content)) body.append(el("h4", { textContent: "Body (" + type + ")" }), el("pre", { textContent: JSON.stringify(media.schema, null, 2) }));
      if (op.responses) {
        const t = el("table", {}, el("tr", {}, el("th", { textContent: "status" }), el("th", { textContent: "description" })));
        for (const [code, r] of Object.entries(op.responses)) t.append(el("tr", {}, el("td", { textContent: code }), el("td", { textContent: text(r.description) })));
        body.append(el("h4", { textContent: "Responses" }), t);
      }
      ops.append(el("details", {}, head, body));
    }
  }
})();
`;

/** `GET /docs` (the viewer for browsers, the JSON document otherwise), `/docs/json`, `/docs/yaml`, `/docs/viewer.js`. */
export function registerDocsRoutes(app: FastifyInstance): void {
  const hide = { schema: { hide: true } } as const;
  app.get("/docs", hide, async (req, reply) => {
    void reply.header("vary", "accept");
    // Browsers ask for text/html first; API clients and `curl` get the document itself.
    if (/^\s*text\/html/iu.test(req.headers.accept ?? "")) {
      return reply
        .type("text/html; charset=utf-8")
        .header("content-security-policy", "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'")
        .send(PAGE);
    }
    return app.swagger();
  });
  app.get("/docs/viewer.js", hide, async (_req, reply) => reply.type("text/javascript; charset=utf-8").send(SCRIPT));
  app.get("/docs/json", hide, async () => app.swagger());
  app.get("/docs/yaml", hide, async (_req, reply) => reply.type("application/yaml").send(app.swagger({ yaml: true })));
}
