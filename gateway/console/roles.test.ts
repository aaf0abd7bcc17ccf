import { describe, expect, it } from "vitest";
import { POLICY } from "../policy.js";
import { ACTIONS, can } from "./roles.js";

describe("console roles", () => {
  it("are the gateway's route policies (the same table), so a hidden control is exactly one the API refuses", () => {
    expect(ACTIONS).toBe(POLICY);
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

  it("let only an operator rebuild a projection, and an operator alone nothing of a tenant's", () => {
    expect(can("operator", "projection.rebuild")).toBe(true);
    for (const role of ["admin", "writer", "reader"]) expect(can(role, "projection.rebuild")).toBe(false);
    expect(can("operator", "projection.query")).toBe(false);
    expect(can("operator", "users.manage")).toBe(false);
    expect(can(["operator", "reader"], "projection.query")).toBe(true);
  });
});
