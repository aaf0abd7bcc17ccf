import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { generateNatsUsers } from "../gateway/index.js";
import { CREDENTIAL_ENV, resolveNatsServerBinary } from "../streams/index.js";

const run = promisify(execFile);
const here = import.meta.dirname;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "flexcore-deploy-"));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("deploy/ and docker-compose.yml", () => {
  it("the cluster configuration with the users nats-auth writes is accepted by nats-server -t, and has no anonymous access", async () => {
    await copyFile(join(here, "nats-cluster.conf"), join(dir, "cluster.conf"));
    await mkdir(join(dir, "auth"));
    const users = await generateNatsUsers({ tenants: ["acme"], seedsDir: join(dir, "seeds") });
    await import("node:fs/promises").then((fs) => fs.writeFile(join(dir, "auth", "users.conf"), users.config));
    const { binary: bin } = await resolveNatsServerBinary();
    const text = await readFile(join(dir, "cluster.conf"), "utf8");
    expect(text).toMatch(/^\s*sync_interval: always$/mu);
    const { stdout, stderr } = await run(bin, ["-t", "-c", join(dir, "cluster.conf")]);
    expect(`${stdout}${stderr}`).toMatch(/configuration file .* (is valid|test is successful)/i);
    expect(text).not.toMatch(/no_auth_user/);
  });

  it("compose gives the instances credentials and publishes NATS only on loopback", async () => {
    const compose = await readFile(join(here, "..", "docker-compose.yml"), "utf8");
    expect(compose).toMatch(/NATS_NKEY: \/seeds\/flexcore\.nk/);
    expect(compose).toMatch(/"127\.0\.0\.1:4222:4222"/);
    expect(compose).not.toMatch(/"4222:4222"/);
    for (const node of ["nats-1", "nats-2", "nats-3"]) expect(compose).toMatch(new RegExp(`nats-auth:/etc/nats/auth:ro", "${node}:/data"`));
  });
});

interface Service {
  image?: string;
  build?: unknown;
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  healthcheck?: { test: string[]; interval?: string };
  restart?: string;
  depends_on?: Record<string, { condition: string }> | string[];
  security_opt?: string[];
  privileged?: boolean;
  devices?: string[];
  cap_add?: string[];
}
interface Compose {
  services: Record<string, Service>;
  volumes: Record<string, unknown>;
}

const root = join(here, "..");
const loadYaml = async <T>(file: string): Promise<T> => parse(await readFile(join(root, file), "utf8"), { merge: true }) as T;
const isFlexCore = (s: Service): boolean => s.image === "flexcore:local";
// One-shots run to completion (restart "no") and others wait for them with service_completed_successfully.
const isOneShot = (s: Service): boolean => s.restart === "no";

/**
 * The environment variables FlexCore's server code reads: `process.env.NAME`, `env.NAME`,
 * and the names it keeps in string constants (`CREDENTIAL_ENV`, the `FLEXCORE_EXTERNAL_*` map).
 */
async function variablesReadByFlexCore(): Promise<Set<string>> {
  const names = new Set<string>(Object.values(CREDENTIAL_ENV));
  for (const area of ["cli", "gateway", "processors", "projections", "workflows", "streams", "plugins"]) {
    const dir = join(root, area);
    if (!existsSync(dir)) continue;
    for (const entry of await readdir(dir, { recursive: true })) {
      const file = String(entry);
      if (!file.endsWith(".ts") || file.endsWith(".test.ts")) continue;
      const text = await readFile(join(dir, file), "utf8");
      for (const m of text.matchAll(/\benv\??\.([A-Z][A-Z0-9_]+)\b/gu)) names.add(m[1]!);
      for (const m of text.matchAll(/["'`]((?:FLEXCORE|NATS|LOG)_[A-Z0-9_]+)["'`]/gu)) names.add(m[1]!);
    }
  }
  return names;
}

describe("docker-compose.yml would run", () => {
  it("every variable set on a FlexCore service is one FlexCore reads (a typo would be silently ignored)", async () => {
    const compose = await loadYaml<Compose>("docker-compose.yml");
    const known = await variablesReadByFlexCore();
    // The check itself must see what up reads.
    for (const name of ["NATS_URL", "NATS_NKEY", "FLEXCORE_DATA", "FLEXCORE_GATEWAY_HOST", "FLEXCORE_REPLICAS", "LOG_LEVEL"]) expect(known).toContain(name);
    expect(known).not.toContain("FLEXCORE_GATEWAY_HOSTS");
    const flexcore = Object.entries(compose.services).filter(([, s]) => isFlexCore(s));
    expect(flexcore.map(([n]) => n).sort()).toEqual(["flexcore-1", "flexcore-2", "gateway-keys", "nats-auth"]);
    const unknown = flexcore.flatMap(([n, s]) => Object.keys(s.environment ?? {}).filter((v) => !known.has(v)).map((v) => `${n}: ${v}`));
    expect(unknown).toEqual([]);
  });

  it("every mounted host file exists, and every named volume is declared", async () => {
    const compose = await loadYaml<Compose>("docker-compose.yml");
    const problems: string[] = [];
    for (const [name, s] of Object.entries(compose.services)) {
      for (const v of s.volumes ?? []) {
        const source = v.split(":")[0]!;
        if (source.startsWith(".") || source.startsWith("/")) {
          if (!existsSync(join(root, source))) problems.push(`${name}: ${source} does not exist`);
        } else if (!(source in (compose.volumes ?? {}))) problems.push(`${name}: volume ${source} is not declared`);
      }
    }
    expect(problems).toEqual([]);
  });

  it("every long-running service has a healthcheck and a restart policy; one-shots are awaited until they succeed", async () => {
    const compose = await loadYaml<Compose>("docker-compose.yml");
    const problems: string[] = [];
    const oneShots = new Set(Object.entries(compose.services).filter(([, s]) => isOneShot(s)).map(([n]) => n));
    expect([...oneShots].sort()).toEqual(["gateway-keys", "nats-auth"]);
    for (const [name, s] of Object.entries(compose.services)) {
      if (!oneShots.has(name)) {
        if (!s.healthcheck?.test?.length) problems.push(`${name}: no healthcheck`);
        if (s.restart !== "unless-stopped" && s.restart !== "always") problems.push(`${name}: restart is ${s.restart}`);
      }
      const deps = Array.isArray(s.depends_on) ? Object.fromEntries(s.depends_on.map((d) => [d, { condition: "service_started" }])) : (s.depends_on ?? {});
      for (const [dep, { condition }] of Object.entries(deps)) {
        if (!(dep in compose.services)) problems.push(`${name}: depends on unknown ${dep}`);
        const expected = oneShots.has(dep) ? "service_completed_successfully" : "service_healthy";
        if (condition !== expected) problems.push(`${name}: waits for ${dep} with ${condition}, expected ${expected}`);
      }
    }
    expect(problems).toEqual([]);
    // The instances are healthy when ready, asked with what the image has (node, no wget).
    expect(compose.services["flexcore-1"]!.healthcheck!.test.join(" ")).toMatch(/^CMD node -e .*127\.0\.0\.1:8080\/readyz/u);
  });

  it("only the gateways are published beyond loopback; the containers stay confined unless the sandbox override is added", async () => {
    const compose = await loadYaml<Compose>("docker-compose.yml");
    const published = Object.entries(compose.services).flatMap(([n, s]) => (s.ports ?? []).map((p) => [n, p] as const));
    for (const [name, port] of published) {
      if (name === "flexcore-1" || name === "flexcore-2") expect(port).toMatch(/^808[01]:8080$/u);
      else expect(port, name).toMatch(/^127\.0\.0\.1:/u);
    }
    expect(published.map(([, p]) => p).filter((p) => p.includes("8222"))).toEqual([]);
    for (const [name, s] of Object.entries(compose.services)) {
      expect(s.privileged, name).toBeUndefined();
      expect(s.security_opt, name).toBeUndefined();
      expect(s.cap_add, name).toBeUndefined();
    }
    const sandbox = await loadYaml<{ services: Record<string, Service> }>("deploy/compose.sandbox.yml");
    expect(Object.keys(sandbox.services).sort()).toEqual(["flexcore-1", "flexcore-2"]);
    for (const s of Object.values(sandbox.services)) {
      expect(s.security_opt).toEqual(["seccomp=unconfined", "apparmor=unconfined"]);
      expect(s.devices).toEqual(["/dev/net/tun:/dev/net/tun"]);
      expect(s.privileged).toBeUndefined();
    }
  });

  it("FlexCore's image runs as a non-root user that owns the directories compose mounts volumes on", async () => {
    const compose = await loadYaml<Compose>("docker-compose.yml");
    const dockerfile = await readFile(join(root, "Dockerfile"), "utf8");
    const final = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
    const user = /^USER\s+(\S+)/mu.exec(final)?.[1];
    expect(user).toBeDefined();
    expect(["root", "0", "0:0"]).not.toContain(user);
    const owned = new Set([...final.matchAll(/chown\s+(\S+)\s+([^\n&]+)/gu)].filter((m) => m[1]!.split(":")[0] === user).flatMap((m) => m[2]!.trim().split(/\s+/u)));
    const created = final.indexOf("chown") < final.indexOf("USER");
    expect(created).toBe(true);
    const targets = Object.values(compose.services).filter(isFlexCore).flatMap((s) => (s.volumes ?? []).filter((v) => !v.startsWith(".")).map((v) => v.split(":")[1]!));
    expect(targets.length).toBeGreaterThan(0);
    for (const t of targets) expect(owned, t).toContain(t);
  });

  it("Prometheus scrapes compose services on the ports they serve: the gateways and a NATS exporter per node", async () => {
    const compose = await loadYaml<Compose>("docker-compose.yml");
    const prom = await loadYaml<{ scrape_configs: Array<{ job_name: string; metrics_path?: string; static_configs: Array<{ targets: string[] }> }> }>("deploy/prometheus/prometheus.yml");
    const ports: Record<string, string> = { flexcore: "8080", nats: "7777" };
    const jobs = Object.fromEntries(prom.scrape_configs.map((j) => [j.job_name, j]));
    expect(Object.keys(jobs).sort()).toEqual(["flexcore", "nats"]);
    for (const job of Object.values(jobs)) {
      expect(job.metrics_path ?? "/metrics").toBe("/metrics");
      for (const target of job.static_configs.flatMap((c) => c.targets)) {
        const [host, port] = target.split(":");
        expect(compose.services, target).toHaveProperty([host!]);
        expect(port, target).toBe(ports[job.job_name]);
      }
    }
    // Each NATS node has its exporter, pointed at that node's monitoring port.
    const exporters = Object.entries(compose.services).filter(([, s]) => s.image?.startsWith("natsio/prometheus-nats-exporter:"));
    expect(exporters.map(([, s]) => s.command!.at(-1)).sort()).toEqual(["http://nats-1:8222", "http://nats-2:8222", "http://nats-3:8222"]);
    for (const [, s] of exporters) expect(s.command).toEqual(expect.arrayContaining(["-varz", "-jsz=all"]));
    expect(jobs.nats!.static_configs.flatMap((c) => c.targets).sort()).toEqual(exporters.map(([n]) => `${n}:7777`).sort());
  });

  it("Grafana provisions the dashboards from the directory compose mounts, on the provisioned data source", async () => {
    const compose = await loadYaml<Compose>("docker-compose.yml");
    const provider = await loadYaml<{ providers: Array<{ type: string; options: { path: string } }> }>("deploy/grafana/provisioning/dashboards/flexcore.yml");
    const datasources = await loadYaml<{ datasources: Array<{ uid: string; url: string }> }>("deploy/grafana/provisioning/datasources/prometheus.yml");
    const mounts = compose.services.grafana!.volumes!.map((v) => v.split(":"));
    expect(mounts).toContainEqual(["./deploy/grafana/dashboards", provider.providers[0]!.options.path, "ro"]);
    expect(mounts).toContainEqual(["./deploy/grafana/provisioning", "/etc/grafana/provisioning", "ro"]);
    expect(datasources.datasources[0]!.url).toBe("http://prometheus:9090");
    const uid = datasources.datasources[0]!.uid;
    const files = (await readdir(join(root, "deploy/grafana/dashboards"))).filter((f) => f.endsWith(".json"));
    const uids = new Set<string>();
    for (const f of files) {
      const board = JSON.parse(await readFile(join(root, "deploy/grafana/dashboards", f), "utf8")) as { uid: string; panels: Array<{ datasource: { uid: string }; targets: Array<{ datasource: { uid: string } }> }> };
      uids.add(board.uid);
      for (const p of board.panels) {
        expect(p.datasource.uid, f).toBe(uid);
        for (const t of p.targets) expect(t.datasource.uid, f).toBe(uid);
      }
    }
    expect(uids.size).toBe(files.length);
    const home = compose.services.grafana!.environment!.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH!;
    expect(files.map((f) => `${provider.providers[0]!.options.path}/${f}`)).toContain(home);
  });
});
