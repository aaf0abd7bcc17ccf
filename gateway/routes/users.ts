import { Kvm } from "@nats-io/kv";
import { BUCKETS } from "../../streams/index.js";
import { RoleNotGrantableError } from "../errors.js";
import { OPERATOR_ROLE, TENANT_GRANTABLE_ROLES } from "../policy.js";
import type { RouteContext } from "../route-context.js";
import { revokeUserSessions } from "../sessions.js";
import type { UserStore } from "../users.js";

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

const grantable: readonly unknown[] = TENANT_GRANTABLE_ROLES;

/**
 * A tenant's admin manages the tenant roles only: `operator` acts on the whole deployment, so
 * it is neither granted here nor taken away (changing or removing an operator's account would
 * take it away), whatever the admin's tenant. `flexcore users` is the operator's way.
 */
function refuseDeploymentRoles(roles: unknown): void {
  // Anything else that is not a tenant role is not a role at all: checkRoles answers 400 naming it.
  const role = Array.isArray(roles) ? roles.find((r) => r === OPERATOR_ROLE) : undefined;
  if (role !== undefined) throw new RoleNotGrantableError(OPERATOR_ROLE, TENANT_GRANTABLE_ROLES, "a tenant admin cannot grant it through the HTTP API");
}

async function refuseOperatorTarget(users: UserStore, tenant: string, username: string, what: string): Promise<void> {
  const user = await users.get(tenant, username).catch(() => undefined);
  const held = user?.roles.find((r) => !grantable.includes(r));
  if (held !== undefined) throw new RoleNotGrantableError(held, TENANT_GRANTABLE_ROLES, `user \`${username}\` holds it, so a tenant admin cannot ${what} through the HTTP API`);
}

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
    refuseDeploymentRoles(req.body.roles);
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
    refuseDeploymentRoles(req.body.roles);
    await refuseOperatorTarget(users, tenant, req.params.username, "change its roles");
    const user = await users.setRoles(tenant, req.params.username, req.body.roles);
    await revokeUserSessions(await kv, revocations, tenant, req.params.username);
    return user;
  });

  app.delete<{ Params: { username: string } }>("/v1/users/:username", {
    config: { policy: "users.manage" },
    schema: { tags: ["users"], summary: "Remove a user of your tenant and end its sessions", params: { type: "object", properties: { username: { type: "string" } } }, response: { 204: { type: "null" } } },
  }, async (req, reply) => {
    const tenant = req.principal!.tenant;
    await refuseOperatorTarget(users, tenant, req.params.username, "remove it");
    await users.remove(tenant, req.params.username);
    await revokeUserSessions(await kv, revocations, tenant, req.params.username);
    return reply.code(204).send();
  });
}
