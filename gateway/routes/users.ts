import { Kvm } from "@nats-io/kv";
import { BUCKETS } from "../../streams/index.js";
import type { RouteContext } from "../route-context.js";
import { revokeUserSessions } from "../sessions.js";

const userSchema = {
  type: "object",
  properties: {
    tenant: { type: "string" },
    username: { type: "string" },
    roles: { type: "array", items: { type: "string" } },
    createdAt: { type: "integer" },
    updatedAt: { type: "integer" },
  },
} as const;

/** Users of the caller's tenant: admins only. */
export function registerUserRoutes(ctx: RouteContext): void {
  const { app, users, revocations, nc } = ctx;
  const kv = new Kvm(nc).open(BUCKETS.auth);
  kv.catch(() => undefined);

  app.get("/v1/users", {
    config: { policy: "users.manage" },
    schema: { tags: ["users"], summary: "Users of your tenant", response: { 200: { type: "object", properties: { users: { type: "array", items: userSchema } } } } },
  }, async (req) => ({ users: await users.list(req.principal!.tenant) }));

  app.post<{ Body: { username: string; password: string; roles: string[] } }>("/v1/users", {
    config: { policy: "users.manage" },
    schema: {
      tags: ["users"],
      summary: "Add a user to your tenant",
      body: {
        type: "object",
        required: ["username", "password", "roles"],
        properties: { username: { type: "string" }, password: { type: "string" }, roles: { type: "array", items: { type: "string" } } },
      },
      response: { 201: userSchema },
    },
  }, async (req, reply) => {
    const user = await users.add(req.principal!.tenant, req.body.username, req.body.password, req.body.roles);
    return reply.code(201).send(user);
  });

  // A role change ends the user's sessions: tokens carry roles, so an old token would keep the old rights until it expired.
  app.patch<{ Params: { username: string }; Body: { roles: string[] } }>("/v1/users/:username", {
    config: { policy: "users.manage", accepts: ["application/json"] },
    schema: {
      tags: ["users"],
      summary: "Change the roles of a user of your tenant; the user's sessions end (signs in again with the new roles)",
      params: { type: "object", properties: { username: { type: "string" } } },
      body: { type: "object", required: ["roles"], additionalProperties: false, properties: { roles: { type: "array", items: { type: "string" } } } },
      response: { 200: userSchema },
    },
  }, async (req) => {
    const tenant = req.principal!.tenant;
    const user = await users.setRoles(tenant, req.params.username, req.body.roles);
    await revokeUserSessions(await kv, revocations, tenant, req.params.username);
    return user;
  });

  app.delete<{ Params: { username: string } }>("/v1/users/:username", {
    config: { policy: "users.manage" },
    schema: { tags: ["users"], summary: "Remove a user of your tenant and end its sessions", params: { type: "object", properties: { username: { type: "string" } } }, response: { 204: { type: "null" } } },
  }, async (req, reply) => {
    const tenant = req.principal!.tenant;
    await users.remove(tenant, req.params.username);
    await revokeUserSessions(await kv, revocations, tenant, req.params.username);
    return reply.code(204).send();
  });
}
