import { InvalidOptionError } from "../streams/index.js";

/** Roles a gateway user can hold; a user may hold several. */
export const ROLES = ["admin", "writer", "reader"] as const;
export type Role = (typeof ROLES)[number];

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
  "auth.logout": ["reader", "writer", "admin"],
  "auth.me": ["reader", "writer", "admin"],
  "overview.read": ["reader", "writer", "admin"],
} as const satisfies Record<string, readonly Role[]>;

export type PolicyName = keyof typeof POLICY;

/** Whether a token holding `roles` may call a route with `policy`. */
export function allows(policy: PolicyName, roles: readonly string[]): boolean {
  const allowed: readonly string[] = POLICY[policy];
  return roles.some((r) => allowed.includes(r));
}

/** Checks a role list: non-empty, every entry one of {@link ROLES}, no repeats. */
export function checkRoles(roles: unknown): Role[] {
  if (!Array.isArray(roles) || roles.length === 0 || roles.some((r) => !(ROLES as readonly unknown[]).includes(r))) {
    throw new InvalidOptionError("roles", Array.isArray(roles) ? roles.join(",") : roles, `a non-empty list of ${ROLES.join(", ")}`);
  }
  return [...new Set(roles as Role[])];
}
