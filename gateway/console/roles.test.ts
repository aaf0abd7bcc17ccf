import { describe, expect, it } from "vitest";
import { POLICY } from "../policy.js";
import { ACTIONS, can } from "./roles.js";

describe("console roles", () => {
  it("are the gateway's route policies, so a hidden control is exactly one the API refuses", () => {
    expect(ACTIONS).toEqual(POLICY);
  });

  it("let a reader read but not manage, a writer append, an admin manage", () => {
    expect(can("reader", "overview.read")).toBe(true);
    expect(can("reader", "dlq.redrive")).toBe(false);
    expect(can("reader", "stream.append")).toBe(false);
    expect(can(["reader", "writer"], "stream.append")).toBe(true);
    expect(can(["admin"], "users.manage")).toBe(true);
    expect(can([], "overview.read")).toBe(false);
    expect(can("root", "users.manage")).toBe(false);
  });
});
