// The boundary between a networked script step and the host's loopback services: a step with
// `network: true` gets outbound network in a namespace of its own (pasta), and NATS, the
// gateway or any other service listening on the host's 127.0.0.1 stays out of its reach.
import { createSocket } from "node:dgram";
import type { Socket as UdpSocket } from "node:dgram";
import { createServer as createHttpServer } from "node:http";
import type { Server as HttpServer } from "node:http";
import { createServer } from "node:net";
import type { AddressInfo, Server } from "node:net";
import { networkInterfaces } from "node:os";
import { chmod, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestNats } from "../../test/nats-server.js";
import type { TestNats } from "../../test/nats-server.js";
import { createScriptRunner, SandboxNetworkUnavailableError, sandboxSupport } from "../index.js";
import type { ScriptRunner } from "../index.js";

const INSTALL = "script steps with network: true need bubblewrap and pasta here: apt-get install -y bubblewrap passt, and chmod 0666 /dev/net/tun";

/** A TCP listener that counts the connections it accepted. */
interface Counted {
  readonly port: number;
  accepted: number;
  close(): Promise<void>;
}

async function tcpListener(host: string): Promise<Counted> {
  const c = { port: 0, accepted: 0, close: async () => undefined } as Counted;
  const server: Server = createServer((sock) => {
    c.accepted += 1;
    sock.on("error", () => undefined);
    sock.end("hello\n");
  });
  await new Promise<void>((r) => server.listen(0, host, r));
  return Object.assign(c, { port: (server.address() as AddressInfo).port, close: () => new Promise<void>((r) => server.close(() => r())) });
}

/** The host's address on its default-route interface (pasta gives the namespace the same one). */
function hostAddress(): string | undefined {
  for (const addrs of Object.values(networkInterfaces())) for (const a of addrs ?? []) if (a.family === "IPv4" && !a.internal) return a.address;
  return undefined;
}

let nats: TestNats;
const natsLog: string[] = [];
let loopback: Counted;
let anyAddress: Counted;
let http: HttpServer;
let httpPort = 0;
let httpConnections = 0;
let udp: UdpSocket;
let udpPort = 0;
let udpReceived = 0;
let workRoot: string;

beforeAll(async () => {
  // -D: the server logs each client connection, so the test can show none came from a step.
  nats = await startTestNats({ args: ["-D"], log: (line) => natsLog.push(line) });
  loopback = await tcpListener("127.0.0.1");
  anyAddress = await tcpListener("0.0.0.0");
  // Stands in for the gateway: an HTTP server on the host's loopback.
  http = createHttpServer((_req, res) => res.end("{}"));
  http.on("connection", () => (httpConnections += 1));
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
  httpPort = (http.address() as AddressInfo).port;
  udp = createSocket("udp4");
  udp.on("message", () => (udpReceived += 1));
  await new Promise<void>((r) => udp.bind(0, "127.0.0.1", r));
  udpPort = udp.address().port;
  workRoot = await mkdtemp(join(tmpdir(), "flexcore-net-test-"));
  await chmod(workRoot, 0o755);
});
afterAll(async () => {
  await loopback?.close();
  await anyAddress?.close();
  await new Promise<void>((r) => (http ? http.close(() => r()) : r()));
  udp?.close();
  await nats?.close();
  await rm(workRoot, { recursive: true, force: true });
});

const natsConnections = (): number => natsLog.filter((l) => /Client connection created/i.test(l)).length;

/**
 * Bash that tries every way to the host's services it knows and reports each as
 * `target=connected|refused|timeout`, plus the namespace's default route.
 */
function probeSource(targets: readonly string[]): string {
  return `
G=""; IF=""
while read -r ifc dst gw rest; do if [ "$dst" = 00000000 ]; then IF=$ifc; G=$gw; fi; done < /proc/net/route
GW=""
[ -n "$G" ] && GW=$(printf '%d.%d.%d.%d' 0x\${G:6:2} 0x\${G:4:2} 0x\${G:2:2} 0x\${G:0:2})
out=$(mktemp)
for t in ${targets.join(" ")} \${GW:+$GW:${loopback.port} $GW:${nats.server.port} $GW:${httpPort}}; do
  ( timeout 2 bash -c "exec 3<>/dev/tcp/\${t%:*}/\${t##*:}" 2>/dev/null; rc=$?
    case $rc in 0) r=connected;; 124) r=timeout;; *) r=refused;; esac
    echo "$t=$r" >> "$out" ) &
done
wait
for u in 127.0.0.1 \${GW}; do echo ping > /dev/udp/$u/${udpPort} 2>/dev/null; done
echo "{\\"iface\\": \\"$IF\\", \\"gateway\\": \\"$GW\\", \\"results\\": \\"$(sort "$out" | tr '\\n' ' ')\\"}"`;
}

interface Probe {
  readonly iface: string;
  readonly gateway: string;
  readonly results: Record<string, string>;
}

async function probe(runner: ScriptRunner, network: boolean): Promise<Probe> {
  const host = hostAddress();
  const targets = [
    `127.0.0.1:${loopback.port}`, `127.0.0.1:${nats.server.port}`, `127.0.0.1:${httpPort}`,
    `127.0.0.2:${loopback.port}`, `localhost:${nats.server.port}`,
    ...(host ? [`${host}:${anyAddress.port}`] : []),
  ];
  const r = await runner.run({ language: "bash", source: probeSource(targets), network, limits: { timeoutMs: 20_000 } }, {});
  expect(r.status, `${r.error ?? ""} ${r.stderr}`).toBe("succeeded");
  const o = r.output as { iface: string; gateway: string; results: string };
  const results = Object.fromEntries(o.results.trim().split(/\s+/).filter(Boolean).map((kv) => kv.split("=") as [string, string]));
  return { iface: o.iface, gateway: o.gateway, results };
}

const support = await sandboxSupport();

describe("a networked step in the sandbox", () => {
  it("runs where bubblewrap and pasta are installed", () => {
    // Never skipped: a machine that should sandbox but cannot is a failure to fix.
    expect(support.bwrapProblem, INSTALL).toBeUndefined();
    expect(support.pastaProblem, INSTALL).toBeUndefined();
  });

  it("has a non-loopback interface with a default route, and reaches none of the host's loopback services", async () => {
    await using runner = await createScriptRunner({ sandbox: "bwrap", workRoot, maxConcurrent: 2 });
    const before = { loopback: loopback.accepted, any: anyAddress.accepted, http: httpConnections, nats: natsConnections(), udp: udpReceived };
    const p = await probe(runner, true);
    expect(p.iface).not.toBe("");
    expect(p.iface).not.toBe("lo");
    expect(p.gateway).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    // Every attempt was refused or went unanswered...
    expect(Object.keys(p.results).length).toBeGreaterThanOrEqual(8);
    for (const [target, outcome] of Object.entries(p.results)) expect(outcome, target).not.toBe("connected");
    // ...and no listener of the host saw a connection or a datagram.
    await new Promise((r) => setTimeout(r, 200));
    expect({ loopback: loopback.accepted, any: anyAddress.accepted, http: httpConnections, nats: natsConnections(), udp: udpReceived }).toEqual(before);
  }, 60_000);

  it("a step without network has no interface but loopback and no route", async () => {
    await using runner = await createScriptRunner({ sandbox: "bwrap", workRoot, maxConcurrent: 2 });
    const p = await probe(runner, false);
    expect(p.iface).toBe("");
    expect(p.gateway).toBe("");
    for (const [target, outcome] of Object.entries(p.results)) expect(outcome, target).toBe("refused");
  }, 60_000);

  it("the same probe run as an explicitly plain child process does connect (so the probe can see a hole)", async () => {
    await using runner = await createScriptRunner({ sandbox: "plain", workRoot, maxConcurrent: 2 });
    const before = { loopback: loopback.accepted, http: httpConnections, nats: natsConnections() };
    const p = await probe(runner, true);
    expect(p.results[`127.0.0.1:${loopback.port}`]).toBe("connected");
    expect(p.results[`127.0.0.1:${nats.server.port}`]).toBe("connected");
    expect(p.results[`127.0.0.1:${httpPort}`]).toBe("connected");
    await new Promise((r) => setTimeout(r, 200));
    expect(loopback.accepted).toBeGreaterThan(before.loopback);
    expect(httpConnections).toBeGreaterThan(before.http);
    expect(natsConnections()).toBeGreaterThan(before.nats);
  }, 60_000);

  it("is refused with FLEX_SANDBOX_NETWORK_UNAVAILABLE where pasta cannot run, and nothing runs", async () => {
    await using runner = await createScriptRunner({ sandbox: "bwrap", workRoot, maxConcurrent: 2, pastaPath: "/nonexistent/pasta" });
    const before = { loopback: loopback.accepted, nats: natsConnections() };
    const err = await runner.run({ language: "bash", source: `exec 3<>/dev/tcp/127.0.0.1/${loopback.port}; echo '{}'`, network: true }, {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxNetworkUnavailableError);
    expect((err as SandboxNetworkUnavailableError).code).toBe("FLEX_SANDBOX_NETWORK_UNAVAILABLE");
    expect((err as Error).message).toContain("/nonexistent/pasta");
    expect((err as Error).message).toContain("apt-get install -y passt");
    // No step directory was created and no connection came.
    const [base] = await readdir(workRoot).then((names) => names.filter((n) => n.startsWith(`flexcore-steps-${process.pid}-`)));
    expect(base && (await readdir(join(workRoot, base)))).toEqual([]);
    expect({ loopback: loopback.accepted, nats: natsConnections() }).toEqual(before);
    // A step without network still runs in the sandbox.
    const ok = await runner.run({ language: "bash", source: "echo '{\"ok\": true}'" }, {});
    expect(ok).toMatchObject({ status: "succeeded", output: { ok: true }, isolation: "bwrap" });
  }, 60_000);

  it("a failing pasta binary is refused the same way", async () => {
    const s = await sandboxSupport({ pastaPath: "/bin/false", fresh: true });
    expect(s.pastaPath).toBeUndefined();
    expect(s.pastaProblem).toContain("/bin/false");
    expect(s.warnings.join("\n")).toContain("FLEX_SANDBOX_NETWORK_UNAVAILABLE");
  });
});
