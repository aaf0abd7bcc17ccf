import { InvalidOptionError } from "../streams/index.js";

export { allows, OPERATOR_ROLE, POLICY, ROLES, TENANT_GRANTABLE_ROLES } from "./policy-table.js";
export type { PolicyName, Role } from "./policy-table.js";
import { ROLES } from "./policy-table.js";
import type { Role } from "./policy-table.js";

/** Checks a role list: non-empty, every entry one of {@link ROLES}, no repeats. */
export function checkRoles(roles: unknown): Role[] {
  if (!Array.isArray(roles) || roles.length === 0 || roles.some((r) => !(ROLES as readonly unknown[]).includes(r))) {
    throw new InvalidOptionError("roles", Array.isArray(roles) ? roles.join(",") : roles, `a non-empty list of ${ROLES.join(", ")}`);
  }
  return [...new Set(roles as Role[])];
}
