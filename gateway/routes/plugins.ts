import { NotFoundError, PluginSystemOwnedError, UnavailableError } from "../errors.js";
import type { PluginsApi, PluginView, RouteContext } from "../route-context.js";

const nameParams = { type: "object", required: ["name"], properties: { name: { type: "string", minLength: 1, maxLength: 64 } } } as const;

function need(api: PluginsApi | undefined): PluginsApi {
  if (!api) throw new UnavailableError("The plugin host");
  return api;
}

/** What a tenant may see: the system plugins and its own, never another tenant's. */
function visible(p: PluginView, tenant: string): boolean {
  return p.tenant === null || p.tenant === tenant;
}

/**
 * `/v1/plugins`: the plugins a tenant can use (system ones and its own); an admin switches
 * its tenant's own plugins on and off. System plugins are the operator's (403); another
 * tenant's plugin looks like one that does not exist (404).
 */
export function registerPluginRoutes(ctx: RouteContext): void {
  const { app } = ctx;
  app.get("/v1/plugins", {
    config: { policy: "plugin.list" },
    schema: { tags: ["plugins"], summary: "The plugins your tenant can use: the system plugins and your own" },
  }, async (req) => {
    const tenant = req.principal!.tenant;
    return { plugins: need(ctx.plugins).list().filter((p) => visible(p, tenant)) };
  });
  for (const [verb, enabled] of [["enable", true], ["disable", false]] as const) {
    app.post<{ Params: { name: string } }>(`/v1/plugins/:name/${verb}`, {
      config: { policy: "plugin.manage" },
      schema: { tags: ["plugins"], summary: `${enabled ? "Enable" : "Disable"} one of your tenant's plugins on every instance (system plugins are the operator's)`, params: nameParams },
    }, async (req) => {
      const tenant = req.principal!.tenant;
      const api = need(ctx.plugins);
      const p = api.list().find((x) => x.name === req.params.name && visible(x, tenant));
      if (!p) throw new NotFoundError(`Plugin \`${req.params.name}\``);
      if (p.tenant === null) throw new PluginSystemOwnedError(p.name);
      // A tenancy: tenant plugin: the tenant's own instance set only, never another tenant's.
      await ctx.deadline(api.setEnabled(p.instance ?? p.name, enabled, `tenant:${tenant}/${req.principal!.subject}`));
      return { plugin: p.name, enabled };
    });
  }
}
