/**
 * The console's pages, in nav order. To add a page: write `pages/<name>.tsx` exporting a
 * component, and add its entry here. `requires` hides the entry from users whose roles may
 * not use it.
 */
import type { ComponentType } from "preact";
import type { Action } from "../roles.js";
import { Overview } from "./overview.js";
// Event explorer and projections (console part 2b).
import { Events } from "./events.js";
import { Projections } from "./projections.js";
// console pages: processors, workflows, dead letters, users (issue #16 part 2c)
import { DeadLetters } from "./dead-letters.js";
import { Processors } from "./processors.js";
import { Users } from "./users.js";
import { Workflows } from "./workflows.js";

export interface PageEntry {
  /** Route: `#/<route>`. */
  readonly route: string;
  readonly title: string;
  readonly component: ComponentType;
  /** The action a user needs to see the page. */
  readonly requires?: Action;
}

export const PAGES: readonly PageEntry[] = [
  { route: "overview", title: "Overview", component: Overview, requires: "overview.read" },
  { route: "events", title: "Event explorer", component: Events, requires: "stream.read" },
  { route: "projections", title: "Projections", component: Projections, requires: "projection.query" },
  { route: "processors", title: "Processors", component: Processors, requires: "derived.read" },
  { route: "workflows", title: "Workflows", component: Workflows, requires: "workflow.list" },
  { route: "dead-letters", title: "Dead letters", component: DeadLetters, requires: "dlq.read" },
  { route: "users", title: "Users", component: Users, requires: "users.manage" },
];

/** The page shown after sign-in and for an empty route. */
export const HOME = "overview";
