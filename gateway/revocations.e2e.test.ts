import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { BUCKETS, ensureTopology } from "../streams/index.js";
import { createGateway } from "./index.js";
import type { Gateway } from "./index.js";

// The revocation watch runs for the gateway's whole life, outside any request. When its
// bucket or its connection fails it must neither take the process down (an unhandled
// rejection ends a Node process by default) nor stop the gateway answering; when the
// bucket comes back, revocations flow again.
let nats: TestNats;
let dir: string;
const rejections: unknown[] = [];
const onRejection = (err: unknown): void => {
  rejections.push(err);
};

beforeAll(async () => {
  nats = await startTestNats();
  dir = await mkdtemp(join(tmpdir(), "flexcore-revocations-"));
  process.on("unhandledRejection", onRejection);
});
afterAll(async () => {
  process.off("unhandledRejection", onRejection);
  await nats?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});
beforeEach(async () => {
  await ensureTopology(nats.nc);
  rejections.length = 0;
});
afterEach(() => {
  expect(rejections).toEqual([]);
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function open(nc = nats.nc): Promise<{ gw: Gateway; url: string }> {
  // The sweep runs often, so it too meets the missing bucket.
  const gw = await createGateway({ nc, dataDir: dir, port: 0, workflows: false, metricsIntervalMs: 0, authSweepIntervalMs: 300 });
  return { gw, url: await gw.listen() };
}

async function status(url: string, path: string, token?: string): Promise<number> {
  return (await fetch(`${url}${path}`, token ? { headers: { authorization: `Bearer ${token}` } } : {})).status;
}

describe("the revocation watch fails without taking the gateway down", () => {
  it("its bucket is deleted: the gateway keeps answering, and revocations arrive again once the bucket is back", async () => {
    const tenant = uniqueName("acme");
    const a = await open();
    const b = await open(await nats.connect());
    try {
      await a.gw.users.add(tenant, "alice", "correct horse", ["reader"]);
      const token = (await a.gw.issuer!.issueAccess({ tenant, subject: "alice", roles: ["reader"] })).token;
      const other = await a.gw.issuer!.issueAccess({ tenant, subject: "alice", roles: ["reader"] });
      expect(await status(a.url, "/v1/auth/me", token)).toBe(200);

      const jsm = await jetstreamManager(nats.nc);
      await jsm.streams.delete(`KV_${BUCKETS.auth}`);
      await sleep(1_500);
      expect(await status(a.url, "/healthz")).toBe(200);
      expect(await status(a.url, "/v1/auth/me", token)).toBe(200);
      // A route that needs the bucket answers with an error, not a crash.
      expect((await fetch(`${a.url}/v1/auth/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ tenant, username: "alice", password: "correct horse" }) })).status).toBeGreaterThanOrEqual(400);

      await ensureTopology(nats.nc);
      // Instance b revokes; instance a hears of it through its re-opened watch.
      const started = Date.now();
      await b.gw.revocations.revoke(other.jti, other.expiresAt);
      while ((await status(a.url, "/v1/auth/me", other.token)) !== 401) {
        expect(Date.now() - started).toBeLessThan(10_000);
        await sleep(100);
      }
      expect(await status(a.url, "/v1/auth/me", token)).toBe(200);
    } finally {
      await a.gw.close();
      await b.gw.close();
    }
  });

  it("its connection is closed: no unhandled rejection, the gateway still answers (and says it is not ready)", async () => {
    const nc = await nats.connect();
    const { gw, url } = await open(nc);
    try {
      const token = (await gw.issuer!.issueAccess({ tenant: uniqueName("acme"), subject: "svc", roles: ["reader"] })).token;
      expect(await status(url, "/v1/auth/me", token)).toBe(200);
      await nc.close();
      await sleep(1_500);
      expect(await status(url, "/healthz")).toBe(200);
      expect(await status(url, "/readyz")).toBe(503);
      expect(await status(url, "/v1/auth/me", token)).toBe(200);
    } finally {
      await gw.close();
    }
  });
});
