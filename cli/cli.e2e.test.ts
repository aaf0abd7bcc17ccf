import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile, spawn } from "node:child_process";
import { createServer } from "node:net";
import type { Server } from "node:net";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { startTestNats, uniqueName } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { credentialsToEnv, ensureTopology, natsConnectOptions, STREAMS } from "../streams/index.js";

const CLI = join(import.meta.dirname, "main.ts");
/** Debian 12's own nats-server package: older than FlexCore's minimum. */
const DEBIAN_12_SERVER = "/usr/sbin/nats-server";

/** A TCP port nothing listens on right now. */
async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((res) => probe.listen(0, "127.0.0.1", () => res()));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((res) => probe.close(() => res()));
  return port;
}

function run(args: string[], env: Record<string, string> = {}, timeoutMs = 0): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import", "tsx", CLI, ...args], { env: { ...process.env, NATS_URL: "", ...credentialsToEnv(nats.credentials), ...env }, maxBuffer: 64 * 1024 * 1024, timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

let nats: TestNats;
let dir: string;
beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  dir = await mkdtemp(join(tmpdir(), "flexcore-cli-"));
});
afterAll(async () => {
  await nats?.close();
  await rm(dir, { recursive: true, force: true });
});

describe("flexcore CLI", () => {
  it("publish, publish --file with a summary, replay as NDJSON, streams", async () => {
    const tenant = uniqueName("cli");
    const one = await run(["publish", "--nats", nats.server.url, `evt.${tenant}.sensor.s1`, '{"temp":21.5}', "--type", "ReadingRecorded", "--id", "first"]);
    expect(one.code).toBe(0);
    expect(JSON.parse(one.stdout)).toMatchObject({ id: "first", stream: STREAMS.events, duplicate: false });

    const lines = Array.from({ length: 300 }, (_, i) => JSON.stringify({ subject: `evt.${tenant}.sensor.s${i % 3}`, type: "R", data: { i } }));
    lines.splice(100, 0, "not json", JSON.stringify({ subject: `evt.${tenant}.bad token.x`, type: "R", data: 1 }));
    const file = join(dir, "events.ndjson");
    await writeFile(file, `${lines.join("\n")}\n`);
    const many = await run(["publish", "--nats", nats.server.url, "--file", file]);
    expect(many.code).toBe(1);
    expect(many.stderr).toMatch(/published 300 events .* 2 failed/);
    expect(many.stderr).toMatch(/line 101: .*JSON/);
    expect(many.stderr).toMatch(/line 102: .*category/);

    const replay = await run(["replay", "--nats", nats.server.url, `evt.${tenant}.>`]);
    expect(replay.code).toBe(0);
    const events = replay.stdout.trim().split("\n").map((l) => JSON.parse(l) as { id: string; data: { i?: number }; seq: number });
    expect(events).toHaveLength(301);
    expect(events[0]!.id).toBe("first");
    expect(events.slice(1).map((e) => e.data.i)).toEqual(Array.from({ length: 300 }, (_, i) => i));
    expect(replay.stderr).toMatch(/replayed 301 events/);

    const until = await run(["replay", "--nats", nats.server.url, `evt.${tenant}.sensor.s1`, "--until", String(events[10]!.seq)]);
    expect(until.stdout.trim().split("\n").map((l) => (JSON.parse(l) as { seq: number }).seq).every((s) => s <= events[10]!.seq)).toBe(true);

    const streams = await run(["streams", "--nats", nats.server.url, "--json"]);
    const rows = JSON.parse(streams.stdout) as Array<{ stream: string; messages: number }>;
    expect(rows.find((r) => r.stream === STREAMS.events)!.messages).toBeGreaterThanOrEqual(301);

    const bad = await run(["publish", "--nats", nats.server.url, "evt.x.y", "{}"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/FLEX_SUBJECT_TOKEN/);
  }, 180_000);

  it("doctor reports the server's version, that it has what FlexCore uses, and the topology", async () => {
    const r = await run(["doctor", "--nats", nats.server.url]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/server reachable .* version 2\.\d+\.\d+/);
    expect(r.stdout).toMatch(/ok +the server is 2\.12\.0 or newer/);
    expect(r.stdout).toMatch(/ok +nats-server binary 2\.15\.1 at .*nats-server \((pinned|NATS_SERVER_BIN|system)\)/);
    expect(r.stdout).toMatch(/topology present, no drift/);
    expect(r.stdout).toMatch(/ok +the server refuses anonymous clients/);
    // The sandbox, and pasta for networked steps (fail-closed: without them such steps are refused).
    expect(r.stdout).toMatch(/ok +script steps run in the bubblewrap/);
    expect(r.stdout).toMatch(/ok +script steps with network: true run under pasta \(passt/);
    if (!nats.server.version.startsWith("2.9.")) {
      expect(r.stdout).toMatch(/ok +atomic appends: on/);
      expect(r.stdout).toMatch(/ok +per-message TTL: on/);
      expect(r.stdout).toMatch(/fast-ingest batches: /);
    }
    const down = await run(["doctor", "--nats", "nats://127.0.0.1:1"]);
    expect(down.code).toBe(1);
    expect(down.stdout).toMatch(/FAIL .*Cannot reach/);
  }, 120_000);

  it.skipIf(!existsSync(DEBIAN_12_SERVER))("up and doctor refuse a nats-server older than 2.12 reached through NATS_URL, and up provisions nothing there", async () => {
    const store = await mkdtemp(join(tmpdir(), "flexcore-old-nats-"));
    const port = await freePort();
    const old = spawn(DEBIAN_12_SERVER, ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", store], { stdio: "ignore" });
    const url = `nats://127.0.0.1:${port}`;
    try {
      let nc;
      for (let i = 0; i < 100 && !nc; i++) nc = await connect({ servers: url, maxReconnectAttempts: 0 }).catch(() => sleep(100).then(() => undefined));
      expect(nc?.info?.version).toBe("2.9.10");
      // An up that is not refused would run on: stopped (SIGTERM) after 30 s, so the test fails instead of hanging.
      const up = await run(["up"], { NATS_URL: url, FLEXCORE_DATA: join(dir, "data-old"), FLEXCORE_TEST: "1" }, 30_000);
      expect(up.code).not.toBe(0);
      expect(up.stderr).toMatch(/FLEX_NATS_SERVER|NatsServerError/);
      expect(up.stderr).toMatch(/nats-server 2\.9\.10 \(nats:\/\/127\.0\.0\.1:\d+\) is too old: FlexCore needs 2\.12\.0 or newer/);
      // Refused before the topology: no stream was created on the old server.
      const jsm = await jetstreamManager(nc!);
      await expect(jsm.streams.info(STREAMS.events)).rejects.toThrow(/not found/i);
      await nc!.close();
      const doctor = await run(["doctor", "--nats", url]);
      expect(doctor.code).toBe(1);
      expect(doctor.stdout).toMatch(/FAIL +nats-server 2\.9\.10 .*too old/);
    } finally {
      old.kill("SIGKILL");
      await rm(store, { recursive: true, force: true });
    }
  }, 120_000);

  it("up starts an embedded server on a free port when 4222 is taken, records its URL, and stops on SIGTERM", async () => {
    const data = join(dir, "data");
    let blocker: Server | undefined = createServer();
    await new Promise<void>((res) => {
      blocker!.once("error", () => {
        blocker = undefined; // something else already holds 4222: just as good
        res();
      });
      blocker!.listen(4222, "127.0.0.1", () => res());
    });
    const child = spawn(process.execPath, ["--import", "tsx", CLI, "up"], {
      env: { ...process.env, NATS_URL: "", FLEXCORE_DATA: data, FLEXCORE_TEST: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    try {
      const urlFile = join(data, "nats.url");
      for (let i = 0; i < 600 && !/flexcore: up/.test(stderr) && child.exitCode === null; i++) await sleep(100);
      expect(stderr, stderr).toMatch(/flexcore: up/);
      const url = (await readFile(urlFile, "utf8")).trim();
      expect(url).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/);
      expect(url).not.toBe("nats://127.0.0.1:4222");
      // Authorization is on: anonymous clients are refused, the service user's seed is in the data directory.
      await expect(connect({ servers: url, maxReconnectAttempts: 0 })).rejects.toThrow(/authoriz/i);
      const nc = await connect(natsConnectOptions(url, { nkeySeedFile: join(data, "nats-seeds", "flexcore.nk") }));
      const jsm = await jetstreamManager(nc);
      expect((await jsm.streams.info(STREAMS.events)).config.subjects).toEqual(["evt.>"]);
      await nc.close();
      expect(existsSync(join(data, "nats"))).toBe(true);
      const exited = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
      expect(existsSync(urlFile)).toBe(false);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      blocker?.close();
    }
  }, 120_000);

  it("tenant NATS users coexist with FlexCore: nats-users on a running up lets the tenant publish at once; the CLI uses the embedded service user", async () => {
    const data = join(dir, "data-tenants");
    const env = { ...process.env, NATS_URL: "", FLEXCORE_DATA: data, FLEXCORE_TEST: "1" };
    const up = await startUp([CLI, "up"], env);
    try {
      const url = (await readFile(join(data, "nats.url"), "utf8")).trim();
      const added = await run(["nats-users", "--tenant", "acme"], { FLEXCORE_DATA: data });
      expect(added.code, added.stderr).toBe(0);
      expect(added.stderr).toMatch(/reloaded/);
      let acme;
      for (let i = 0; i < 50 && !acme; i++) {
        acme = await connect(natsConnectOptions(url, { nkeySeedFile: join(data, "nats-seeds", "acme.nk") }, { inboxPrefix: "_INBOX_acme", maxReconnectAttempts: 0 })).catch(() => undefined);
        if (!acme) await sleep(100);
      }
      expect(acme).toBeDefined();
      const { jetstream } = await import("@nats-io/jetstream");
      const { encodeEvent } = await import("../streams/index.js");
      const e = encodeEvent({ type: "ReadingRecorded", data: { v: 7 } });
      const ack = await jetstream(acme!).publish("evt.acme.sensor.s1", e.data, { headers: e.headers });
      expect(ack.seq).toBeGreaterThan(0);
      await acme!.close();
      // No credentials in the environment: the CLI finds the embedded server's service user.
      const replay = await run(["replay", "evt.acme.>"], { FLEXCORE_DATA: data, NATS_NKEY: "" });
      expect(replay.code, replay.stderr).toBe(0);
      expect(replay.stdout).toContain('"v":7');
    } finally {
      const exited = new Promise((res) => up.child.once("exit", res));
      up.child.kill("SIGTERM");
      await exited;
    }
  }, 120_000);

  it("a nats-server left by a SIGKILLed up is stopped before the next up starts one on the same store", async () => {
    const data = join(dir, "data-leftover");
    const env = { ...process.env, NATS_URL: "", FLEXCORE_DATA: data, FLEXCORE_TEST: "1" };
    const first = await startUp([CLI, "up"], env);
    const leftover = Number((await readFile(join(data, "nats.pid"), "utf8")).trim());
    first.child.kill("SIGKILL");
    await new Promise((res) => first.child.once("exit", res));
    expect(alive(leftover)).toBe(true);
    const second = await startUp([CLI, "up"], env);
    try {
      expect(alive(leftover)).toBe(false);
      expect(second.stderr()).toMatch(new RegExp(`stopping nats-server pid ${leftover}`));
      const exited = new Promise<number | null>((res) => second.child.once("exit", (code) => res(code)));
      second.child.kill("SIGTERM");
      expect(await exited).toBe(0);
      expect(existsSync(join(data, "nats.pid"))).toBe(false);
    } finally {
      // A failed assertion must not leave the second up's server running either.
      const current = Number((await readFile(join(data, "nats.pid"), "utf8").catch(() => "")).trim());
      if (second.child.exitCode === null) second.child.kill("SIGKILL");
      for (const pid of [leftover, current]) if (pid > 0 && alive(pid)) process.kill(pid, "SIGKILL");
    }
  }, 120_000);

  it("under an npm script, up stops (with its nats-server) when the shell npm ran it in is killed", async () => {
    const data = join(dir, "data-orphan");
    const env = { ...process.env, NATS_URL: "", FLEXCORE_DATA: data, FLEXCORE_TEST: "1", npm_lifecycle_event: "start" };
    // `; exit` keeps the shell as the parent instead of letting it exec node. The heap
    // flag is the one `npm start` passes: processor worker threads must start under it.
    const shell = await startUp(["-c", `"${process.execPath}" --max-semi-space-size=64 --import tsx "${CLI}" up; exit $?`], env, "/bin/sh");
    const server = Number((await readFile(join(data, "nats.pid"), "utf8")).trim());
    const up = await childrenOf(shell.child.pid);
    expect(up.length).toBe(1);
    try {
      shell.child.kill("SIGKILL");
      for (let i = 0; i < 200 && (alive(server) || alive(up[0]!)); i++) await sleep(100);
      expect(alive(up[0]!)).toBe(false);
      expect(alive(server)).toBe(false);
      expect(existsSync(join(data, "nats.url"))).toBe(false);
    } finally {
      for (const pid of [server, ...up]) if (alive(pid)) process.kill(pid, "SIGKILL");
    }
  }, 120_000);
});

// The processes whose parent is `pid`.
async function childrenOf(pid: number | undefined): Promise<number[]> {
  if (pid === undefined) return [];
  const out = await new Promise<string>((res) => execFile("pgrep", ["-P", String(pid)], (_err, stdout) => res(stdout)));
  return out.split(/\s+/).filter(Boolean).map(Number);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// Spawns `up` (or a shell running it) and waits until it reports that it is up.
async function startUp(args: string[], env: NodeJS.ProcessEnv, command = process.execPath) {
  const child = spawn(command, command === process.execPath ? ["--import", "tsx", ...args] : args, { env, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
  for (let i = 0; i < 600 && !/flexcore: up/.test(stderr) && child.exitCode === null; i++) await sleep(100);
  if (!/flexcore: up/.test(stderr)) {
    child.kill("SIGKILL");
    throw new Error(`up did not start:\n${stderr}`);
  }
  return { child, stderr: () => stderr };
}
