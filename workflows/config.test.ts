import { describe, expect, it } from "vitest";
import { ConfigError } from "../processors/index.js";
import { workflowsSection } from "./index.js";

describe("workflows section", () => {
  it("refuses a reserved tenant (starting with `_`), naming the path", () => {
    for (const tenant of ["_system", "_x"]) {
      try {
        workflowsSection({ tenant }, "workflows");
        expect.unreachable();
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as ConfigError).issues).toEqual([{ path: "workflows.tenant", message: expect.stringContaining("not starting with `_`") }]);
      }
    }
    expect(workflowsSection({ tenant: "demo_1" }, "workflows").tenant).toBe("demo_1");
  });
});
