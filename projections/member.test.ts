import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { STREAMS } from "../streams/index.js";
import type { StoredEvent } from "../streams/index.js";
import { genericProjection } from "./index.js";
import { Member } from "./member.js";
import type { WindowLimits } from "./member.js";

const dir = mkdtempSync(join(tmpdir(), "flexcore-member-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const event = (seq: number): StoredEvent => ({ id: `e${seq}`, type: "Set", data: { n: seq }, time: "2026-01-01T00:00:00.000Z", correlationId: undefined, causationId: undefined, schema: "1", subject: "evt.t.c.a", seq, revision: undefined, storedAt: 0 });

describe("commit windows", () => {
  it("close at once when caught up, after 50 ms when only briefly behind, after windowMs in a catch-up", () => {
    const member = new Member(genericProjection(), join(dir, "g.db"), 1, "full");
    try {
      const limits: WindowLimits = { foldWindow: 1_000, batchSize: 1_000, windowMs: 1_000, nearLivePending: 16_384, nearLiveWindowMs: 50 };
      member.takeOne(STREAMS.events, event(1));
      const opened = member.oldestWindow()!;
      expect(member.due(STREAMS.events, true, 0, opened, limits)).toBe(true);
      // Briefly behind (a pause while live): closes after nearLiveWindowMs.
      expect(member.due(STREAMS.events, false, 2_000, opened + 10, limits)).toBe(false);
      expect(member.due(STREAMS.events, false, 2_000, opened + 51, limits)).toBe(true);
      // A catch-up (large backlog): holds the window up to windowMs or foldWindow events.
      expect(member.due(STREAMS.events, false, 500_000, opened + 500, limits)).toBe(false);
      expect(member.due(STREAMS.events, false, 500_000, opened + 1_001, limits)).toBe(true);
      for (let s = 2; s <= 1_000; s++) member.takeOne(STREAMS.events, event(s));
      expect(member.due(STREAMS.events, false, 500_000, opened + 1, limits)).toBe(true);
    } finally {
      member.close();
    }
  });
});
