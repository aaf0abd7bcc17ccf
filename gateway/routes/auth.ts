import { UnavailableError } from "../errors.js";
import type { RouteContext } from "../route-context.js";

const tokenResponse = {
  type: "object",
  properties: {
    access_token: { type: "string" },
    token_type: { type: "string", const: "Bearer" },
    expires_in: { type: "integer" },
    refresh_token: { type: "string" },
    refresh_expires_in: { type: "integer" },
  },
} as const;

/** Sign-in, refresh, sign-out and `me`. */
export function registerAuthRoutes(ctx: RouteContext): void {
  const { app, sessions, signInRateLimit } = ctx;
  const need = () => {
    if (!sessions) throw new UnavailableError("Sign-in (the gateway accepts an external issuer's tokens)");
    return sessions;
  };

  app.post<{ Body: { tenant: string; username: string; password: string } }>("/v1/auth/token", {
    config: { rateLimit: signInRateLimit },
    schema: {
      tags: ["auth"],
      summary: "Sign in: tenant, username and password give an access token and a refresh token",
      body: {
        type: "object",
        required: ["tenant", "username", "password"],
        properties: { tenant: { type: "string", minLength: 1, maxLength: 64 }, username: { type: "string", minLength: 1, maxLength: 64 }, password: { type: "string", minLength: 1, maxLength: 1024 } },
      },
      response: { 200: tokenResponse },
    },
  }, async (req) => {
    const s = need();
    return s.signIn(req.body.tenant, req.body.username, req.body.password);
  });

  app.post<{ Body: { refresh_token: string } }>("/v1/auth/refresh", {
    config: { rateLimit: signInRateLimit },
    schema: {
      tags: ["auth"],
      summary: "Exchange a refresh token for a new pair; the old refresh token stops working, and using it again revokes every session of the user",
      body: { type: "object", required: ["refresh_token"], properties: { refresh_token: { type: "string", minLength: 1, maxLength: 8192 } } },
      response: { 200: tokenResponse },
    },
  }, async (req) => {
    return need().refresh(req.body.refresh_token);
  });

  app.post("/v1/auth/logout", {
    config: { policy: "auth.logout" },
    schema: { tags: ["auth"], summary: "Revoke this access token (until it expires) and end its session", response: { 204: { type: "null" } } },
  }, async (req, reply) => {
    const p = req.principal!;
    if (sessions) await sessions.signOut(p);
    else await ctx.revocations.revoke(p.jti, p.expiresAt);
    return reply.code(204).send();
  });

  app.get("/v1/auth/me", {
    config: { policy: "auth.me" },
    schema: { tags: ["auth"], summary: "Who the token says you are" },
  }, async (req) => {
    const p = req.principal!;
    return { tenant: p.tenant, subject: p.subject, roles: p.roles, expiresAt: new Date(p.expiresAt * 1000).toISOString() };
  });
}
