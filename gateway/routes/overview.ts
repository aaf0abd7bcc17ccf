import { createOverviewReader } from "../overview.js";
import type { RouteContext } from "../route-context.js";

/** `GET /v1/overview`: the caller's tenant's figures for the console's overview page (see `gateway/overview.ts`). */
export function registerOverviewRoutes(ctx: RouteContext): void {
  const { app, nc, jsm, readModels, plugins, deadline } = ctx;
  const reader = createOverviewReader({ nc, jsm, readModels, plugins });
  app.get("/v1/overview", {
    config: { policy: "overview.read" },
    schema: {
      tags: ["ops"],
      summary: "Your tenant's events, processor outputs and dead letters (totals: the console derives rates), projection and processor lags (deployment-wide), and the plugins you can use",
    },
  }, async (req) => deadline(reader.read(req.principal!.tenant)));
}
