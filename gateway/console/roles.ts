import { POLICY } from "../policy-table.js";
import type { PolicyName } from "../policy-table.js";

/**
 * What a role may do in the console: the gateway's route policies themselves
 * (`gateway/policy-table.ts`, plain data the browser bundle can import). Pages use
 * {@link can} to hide controls a user may not use; the API refuses them anyway.
 */
export const ACTIONS = POLICY;

/** An action: the policy name of the route that does it. */
export type Action = PolicyName;

/** Whether a user holding `role` (one role or all of the user's) may do `action`. */
export function can(role: string | readonly string[], action: Action): boolean {
  const allowed: readonly string[] = ACTIONS[action];
  return (typeof role === "string" ? [role] : role).some((r) => allowed.includes(r));
}
