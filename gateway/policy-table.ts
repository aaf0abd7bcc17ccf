/**
 * The gateway's roles and route policies as plain data, with no imports: the gateway
 * (`policy.ts`) and the console's browser bundle (`console/roles.ts`) read the same table,
 * so a control the console hides is exactly one the API refuses.
 */
/**
 * Roles a gateway user can hold; a user may hold several. `admin`, `writer` and `reader` act
 * within the token's tenant; `operator` adds the deployment's own operations (a projection
 * rebuild replaces the read model of every tenant) and is granted only by whoever runs the
 * deployment (`flexcore users add|roles`), never through the HTTP API: see
 * {@link TENANT_GRANTABLE_ROLES}.
 */
export const ROLES = ["admin", "writer", "reader", "operator"] as const;
export type Role = (typeof ROLES)[number];

/** The deployment-level role: see {@link ROLES}. */
export const OPERATOR_ROLE = "operator" satisfies Role;

/** Roles a tenant's admin may grant or take away through `POST /v1/users` and `PATCH /v1/users/:username`. */
export const TENANT_GRANTABLE_ROLES = ["admin", "writer", "reader"] as const satisfies readonly Role[];

/**
 * Which roles may call each route: the policy table of `docs/gateway.md`. A route not
 * listed here is public (health, metrics, docs, JWKS, sign-in). Every authenticated route
 * names its policy, and the gateway refuses to start a route whose policy is missing.
 */
export const POLICY = {
  "stream.append": ["writer", "admin"],
  "events.ingest": ["writer", "admin"],
  "stream.read": ["reader", "admin"],
  "projection.query": ["reader", "admin"],
  "projection.live": ["reader", "admin"],
  "derived.read": ["reader", "admin"],
  "dlq.read": ["reader", "admin"],
  "dlq.redrive": ["admin"],
  "dlq.purge": ["admin"],
  "workflow.list": ["reader", "writer", "admin"],
  "workflow.define": ["admin"],
  "workflow.run": ["writer", "admin"],
  "run.read": ["reader", "writer", "admin"],
  "users.manage": ["admin"],
  "plugin.list": ["reader", "writer", "admin"],
  "plugin.manage": ["admin"],
  "auth.logout": ["reader", "writer", "admin", "operator"],
  "auth.me": ["reader", "writer", "admin", "operator"],
  "overview.read": ["reader", "writer", "admin"],
  "projection.rebuild": ["operator"],
} as const satisfies Record<string, readonly Role[]>;

export type PolicyName = keyof typeof POLICY;

/** Whether a token holding `roles` may call a route with `policy`. */
export function allows(policy: PolicyName, roles: readonly string[]): boolean {
  const allowed: readonly string[] = POLICY[policy];
  return roles.some((r) => allowed.includes(r));
}
