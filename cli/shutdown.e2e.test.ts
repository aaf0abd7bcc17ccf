import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTokenIssuer, openKeyStore } from "../gateway/index.js";
import { startUp } from "../test/flexcore-up.js";
import { uniqueName } from "../test/nats-server.js";

// `up` forces its exit this long after SIGTERM (cli/commands/up.ts).
const FORCED_EXIT_MS = 30_000;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-shutdown-"));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The environment that makes `up` start its own embedded nats-server (no NATS_URL). */
function embeddedServerEnv(data: string): Record<string, string> {
  return { NATS_URL: "", FLEXCORE_DATA: data };
}

/** Every line is in `log`, in this order. */
function expectInOrder(log: string, lines: readonly string[]): void {
  const order = lines.map((line) => {
    const at = log.indexOf(line);
    expect(at, `"${line}" in the log:\n${log}`).toBeGreaterThan(-1);
    return at;
  });
  expect(order).toEqual([...order].sort((a, b) => a - b));
}

/** A flexcore.yaml with one anomaly processor (pulls and acknowledgements that need the server until the end). */
async function configWithProcessor(file: string, processor: string, runner: boolean): Promise<string> {
  const config = join(dir, file);
  await writeFile(config, `runtime:\n  threads: 1\nprocessors:\n  - name: ${processor}\n    kind: anomaly\n    subjects: ["evt.*.sensor.*"]\nworkflows:\n  runner: ${runner}\n`);
  return config;
}

describe("flexcore up on SIGTERM", () => {
  it("ends open live feeds, closes every component in order and stops the embedded server, well before the forced exit", async () => {
    const config = join(dir, "flexcore.yaml");
    await writeFile(config, "runtime:\n  threads: 1\nprocessors: []\nworkflows:\n  runner: false\n");
    const keysDir = join(dir, "keys");
    await using up = await startUp({ config, env: { ...embeddedServerEnv(join(dir, "data")), FLEXCORE_GATEWAY_PORT: "0", FLEXCORE_GATEWAY_KEYS_DIR: keysDir } });
    const issuer = createTokenIssuer(await openKeyStore({ dir: keysDir }));
    const { token } = await issuer.issueAccess({ tenant: uniqueName("acme"), subject: "watcher", roles: ["reader"], ttlSeconds: 600 });
    const feeds = await Promise.all([1, 2].map(async () => {
      const res = await fetch(`${up.gatewayUrl}/v1/projections/pipeline_summary/live`, { headers: { authorization: `Bearer ${token}` } });
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
      const reader = res.body!.getReader();
      let text = "";
      while (!text.includes("event: ready")) text += new TextDecoder().decode((await reader.read()).value);
      // The rest of the stream, up to its end.
      const rest = (async () => {
        for (;;) {
          const { done, value } = await reader.read().catch(() => ({ done: true, value: undefined }));
          if (done) return text;
          text += new TextDecoder().decode(value);
        }
      })();
      // Wrapped: an async function returning the promise itself would wait for the stream's end.
      return { rest };
    }));
    const sent = Date.now();
    const code = await up.stop();
    const tookMs = Date.now() - sent;
    const log = up.stderr();
    expect(code, log).toBe(0);
    expect(tookMs, log).toBeLessThan(FORCED_EXIT_MS / 3);
    // Each feed was told why it ended, then closed (the client reconnects elsewhere).
    for (const text of await Promise.all(feeds.map((f) => f.rest))) expect(text).toMatch(/event: end\ndata: \{"reason":"server shutting down"\}/);
    // Last started, first stopped: the gateway, then what it served, then the server under them.
    expectInOrder(log, ["stopped gateway", "stopped projections", "stopped workflows", "stopped processors", "embedded nats-server stopped"]);
  }, 90_000);

  it("on Ctrl-C in a terminal (SIGINT to the whole process group) stops in the same order: the embedded server, in a process group of its own, does not get the signal and goes last", async () => {
    const config = await configWithProcessor("flexcore-group.yaml", "ctrlc-anomalies", false);
    await using up = await startUp({ config, processGroup: true, env: { ...embeddedServerEnv(join(dir, "data-group")), FLEXCORE_GATEWAY_PORT: "0", FLEXCORE_GATEWAY_KEYS_DIR: join(dir, "keys-group") } });
    const sent = Date.now();
    const code = await up.interrupt();
    const tookMs = Date.now() - sent;
    const log = up.stderr();
    expect(code, log).toBe(0);
    expect(tookMs, log).toBeLessThan(FORCED_EXIT_MS / 3);
    expect(log).not.toMatch(/server shutdown|Server Shutdown/u);
    expectInOrder(log, ["stopped gateway", "stopped projections", "stopped processors", "embedded nats-server stopped"]);
  }, 90_000);

  it("with its nats-server gone (kill -9), SIGTERM still stops every component at once instead of waiting for acknowledgements that cannot arrive", async () => {
    const config = await configWithProcessor("flexcore-gone.yaml", "gone-anomalies", true);
    const data = join(dir, "data-gone");
    await using up = await startUp({ config, env: { ...embeddedServerEnv(data), FLEXCORE_GATEWAY_PORT: "0", FLEXCORE_GATEWAY_KEYS_DIR: join(dir, "keys-gone") } });
    const pid = Number((await readFile(join(data, "nats.pid"), "utf8")).trim());
    process.kill(pid, "SIGKILL");
    await new Promise((r) => setTimeout(r, 1_000));
    const sent = Date.now();
    const code = await up.stop();
    const tookMs = Date.now() - sent;
    const log = up.stderr();
    expect(code, log).toBe(0);
    expect(tookMs, log).toBeLessThan(FORCED_EXIT_MS / 3);
    expect(log).toMatch(/NATS is unreachable: stopping without it/u);
    for (const line of ["stopped gateway", "stopped projections", "stopped processors"]) expect(log, line).toContain(line);
  }, 90_000);
});
