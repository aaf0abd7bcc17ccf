import { loadConsoleAssets } from "../console-assets.js";
import type { ConsoleAssets } from "../console-assets.js";
import { ConsoleNotBuiltError, NotFoundError } from "../errors.js";
import type { RouteContext } from "../route-context.js";

/**
 * The console's Content-Security-Policy: only the gateway's own script, stylesheet and API;
 * no inline script or style, no framing, no forms posting elsewhere. uPlot sizes its
 * elements through the CSSOM (`el.style.x = ...`), which `style-src 'self'` allows.
 */
export const CONSOLE_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** Hashed assets never change under their name. */
const IMMUTABLE = "public, max-age=31536000, immutable";
// A missing build is looked for again at most this often, so building while the gateway runs works.
const RETRY_MISSING_MS = 1_000;

const TYPES: Readonly<Record<string, string>> = {
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  map: "application/json; charset=utf-8",
};

const SECURITY_HEADERS = {
  "content-security-policy": CONSOLE_CSP,
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cross-origin-opener-policy": "same-origin",
} as const;

/**
 * `/console`: the operations console's static files from the built folder (`dir`). Public:
 * the files hold no data; every figure comes through the authenticated API. Answers 503
 * `FLEX_CONSOLE_NOT_BUILT` when the folder has no build.
 */
export function registerConsoleRoutes(ctx: RouteContext, dir: string): void {
  const { app } = ctx;
  let loaded: Promise<ConsoleAssets | undefined> | undefined;
  let missingAt = 0;
  const assets = async (): Promise<ConsoleAssets> => {
    if (!loaded || (missingAt !== 0 && Date.now() - missingAt > RETRY_MISSING_MS)) {
      loaded = loadConsoleAssets(dir);
      loaded.then((a) => (missingAt = a ? 0 : Date.now()), () => (loaded = undefined));
    }
    const a = await loaded;
    if (!a) throw new ConsoleNotBuiltError(dir);
    return a;
  };
  const hide = { schema: { hide: true } } as const;

  // The page lives at `/console/` so that its relative URLs (assets, `../v1/...`) also work behind a path prefix.
  app.get("/console", hide, async (_req, reply) => reply.code(308).header("location", "console/").send());
  app.get("/console/", hide, async (_req, reply) => {
    const a = await assets();
    return reply.headers({ ...SECURITY_HEADERS, "cache-control": "no-cache" }).type("text/html; charset=utf-8").send(a.index);
  });
  app.get<{ Params: { file: string } }>("/console/assets/:file", hide, async (req, reply) => {
    const a = await assets();
    const body = a.files.get(req.params.file);
    if (!body) throw new NotFoundError(`Console file \`${req.params.file}\``);
    const type = TYPES[req.params.file.slice(req.params.file.lastIndexOf(".") + 1)] ?? "application/octet-stream";
    return reply.headers({ ...SECURITY_HEADERS, "cache-control": IMMUTABLE }).type(type).send(body);
  });
}
