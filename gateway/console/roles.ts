/**
 * What a role may do in the console: the gateway's route policies (`gateway/policy.ts`),
 * copied because the browser bundle must not pull in the gateway's modules
 * (`roles.test.ts` fails when the two differ). Pages use {@link can} to hide controls a
 * user may not use; the API refuses them anyway.
 */
export const ACTIONS = {
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
} as const satisfies Record<string, readonly string[]>;

/** An action: the policy name of the route that does it. */
export type Action = keyof typeof ACTIONS;

/** Whether a user holding `role` (one role or all of the user's) may do `action`. */
export function can(role: string | readonly string[], action: Action): boolean {
  const allowed: readonly string[] = ACTIONS[action];
  return (typeof role === "string" ? [role] : role).some((r) => allowed.includes(r));
}
