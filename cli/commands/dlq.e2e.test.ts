/**
 * `flexcore dlq` as a user runs it (a child process against a real nats-server with
 * authorization on): list, show, redrive to the failing processor's redrive subject only,
 * purge only with --yes (stdin is not a terminal here, so there is no one to ask), coded
 * errors for bad filters and for sources that cannot take a redrive back.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { startTestNats, uniqueName } from "../../test/nats-server.js";
import type { TestNats } from "../../test/nats-server.js";
import { createPublisher, DEFAULT_SCHEMA, dlqSubject, ensureTopology, STREAMS } from "../../streams/index.js";
import type { Publisher } from "../../streams/index.js";
import { DLQ_HEADERS, dlqSource } from "../../projections/index.js";
import { countMessages } from "../../processors/testing.js";

const CLI = join(import.meta.dirname, "..", "main.ts");

let nats: TestNats;
let publisher: Publisher;

// The server the CLI child talks to (one place to adapt when the suite's credentials change).
function cliEnv(): Record<string, string> {
  return { NATS_URL: "", ...nats.env };
}

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import", "tsx", CLI, ...args], { env: { ...process.env, ...cliEnv() } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

// A dead letter as the processor runtime writes it (its envelope and headers).
async function processorDeadLetter(tenant: string, processor: string, seq: number): Promise<number> {
  const h = natsHeaders();
  h.set("Nats-Msg-Id", `${processor}:${seq}:dlq`);
  h.set("Flex-Type", "ProcessingFailed");
  h.set("Flex-Source-Seq", String(seq));
  h.set("Flex-Source-Subject", `evt.${tenant}.m.k${seq}`);
  h.set("Flex-Error", `boom at ${seq}`);
  const body = { processor, seq, subject: `evt.${tenant}.m.k${seq}`, tenant, key: `k${seq}`, type: "Reading", time: "2026-01-01T00:00:00.000Z", attempts: 5, error: { name: "Error", code: null, message: `boom at ${seq}` }, reason: `boom at ${seq}`, data: { value: seq } };
  return (await publisher.publish(dlqSubject(tenant, processor), new TextEncoder().encode(JSON.stringify(body)), { headers: h })).seq;
}

async function projectionDeadLetter(tenant: string, projection: string, subject = `evt.${tenant}.m.k`): Promise<number> {
  const h = natsHeaders();
  h.set("Nats-Msg-Id", `dlq:projection:${projection}:FLEX_EVENTS:7`);
  h.set("Flex-Type", "Reading");
  h.set("Flex-Schema", DEFAULT_SCHEMA);
  h.set(DLQ_HEADERS.reason, "no such column");
  h.set(DLQ_HEADERS.source, `projection:${projection}`);
  h.set(DLQ_HEADERS.stream, STREAMS.events);
  h.set(DLQ_HEADERS.seq, "7");
  h.set(DLQ_HEADERS.subject, subject);
  h.set(DLQ_HEADERS.policy, "dlq");
  return (await publisher.publish(dlqSubject(tenant, dlqSource(projection)), new TextEncoder().encode('{"value":7}'), { headers: h })).seq;
}

beforeAll(async () => {
  nats = await startTestNats();
  await ensureTopology(nats.nc);
  publisher = createPublisher(nats.nc);
});
afterAll(async () => {
  await publisher?.close();
  await nats?.close();
});

it("list and show read a tenant's dead letters; redrive sends them to redrive.<tenant>.<processor> once; purge needs --yes", async () => {
  const t = uniqueName("cd");
  const other = uniqueName("co");
  const p = uniqueName("pr");
  const s1 = await processorDeadLetter(t, p, 1);
  await processorDeadLetter(t, p, 2);
  await processorDeadLetter(other, p, 3);

  const list = await run(["dlq", "list", "--tenant", t, "--json"]);
  expect(list.code, list.stderr).toBe(0);
  expect(JSON.parse(list.stdout)).toEqual([{ tenant: t, source: p, count: 2, redrivePending: 0 }]);
  const table = await run(["dlq", "list"]);
  expect(table.stdout).toContain(t);
  expect(table.stdout).toContain(other);

  const show = await run(["dlq", "show", String(s1), "--tenant", t, "--json"]);
  expect(show.code, show.stderr).toBe(0);
  expect(JSON.parse(show.stdout)).toMatchObject({ seq: s1, reason: "boom at 1", attempts: 5, originalSubject: `evt.${t}.m.k1`, data: { value: 1 } });
  // Another tenant's sequence is not found, whoever asks through --tenant.
  const foreign = await run(["dlq", "show", String(s1), "--tenant", other]);
  expect(foreign.code).toBe(1);
  expect(foreign.stderr).toContain("[FLEX_DLQ_NOT_FOUND]");

  const bad = await run(["dlq", "show", "--tenant", t, "--since", "last week"]);
  expect(bad.code).toBe(1);
  expect(bad.stderr).toMatch(/`since`.*RFC 3339.*"last week".*\[FLEX_INVALID_OPTION\]/u);

  const redrive = await run(["dlq", "redrive", "--tenant", t, "--seq", String(s1), "--json"]);
  expect(redrive.code, redrive.stderr).toBe(0);
  expect(JSON.parse(redrive.stdout)).toEqual({ redriven: [s1], duplicates: 0, more: false });
  expect(await countMessages(nats.nc, STREAMS.redrive, `redrive.${t}.${p}`)).toBe(1);
  expect(await countMessages(nats.nc, STREAMS.events, `evt.${t}.>`)).toBe(0);
  const twice = await run(["dlq", "redrive", "--tenant", t, "--seq", String(s1)]);
  expect(twice.code).toBe(1);
  expect(twice.stderr).toContain("[FLEX_DLQ_NOT_FOUND]");
  expect(await countMessages(nats.nc, STREAMS.redrive, `redrive.${t}.${p}`)).toBe(1);
  const pending = JSON.parse((await run(["dlq", "list", "--tenant", t, "--json"])).stdout);
  expect(pending).toEqual([{ tenant: t, source: p, count: 1, redrivePending: 1 }]);

  const refused = await run(["dlq", "purge", "--tenant", t, "--source", p]);
  expect(refused.code).toBe(1);
  expect(refused.stderr).toContain("[FLEX_DLQ_PURGE_UNCONFIRMED]");
  expect(await countMessages(nats.nc, STREAMS.dlq, dlqSubject(t, p))).toBe(1);
  const purged = await run(["dlq", "purge", "--tenant", t, "--source", p, "--yes"]);
  expect(purged.code, purged.stderr).toBe(0);
  expect(purged.stdout).toContain("purged 1 dead letter");
  expect(await countMessages(nats.nc, STREAMS.dlq, dlqSubject(t, p))).toBe(0);
  expect(await countMessages(nats.nc, STREAMS.dlq, dlqSubject(other, p))).toBe(1);
}, 60_000);

it("a projection's dead letter is redriven to reapply.<tenant>.projection_<name> once (every copy of the projection reads it); one naming another tenant's event moves nothing (coded)", async () => {
  const t = uniqueName("cp");
  const seq = await projectionDeadLetter(t, "orders");
  const show = await run(["dlq", "show", String(seq), "--tenant", t, "--json"]);
  expect(JSON.parse(show.stdout)).toMatchObject({ kind: "projection", source: "projection_orders", reason: "no such column", originalSeq: 7, data: { value: 7 } });
  const r = await run(["dlq", "redrive", "--tenant", t, "--source", "projection_orders", "--json"]);
  expect(r.code, r.stderr).toBe(0);
  expect(JSON.parse(r.stdout)).toEqual({ redriven: [seq], duplicates: 0, more: false });
  expect(await countMessages(nats.nc, STREAMS.dlq, dlqSubject(t, "projection_orders"))).toBe(0);
  expect(await countMessages(nats.nc, STREAMS.reapply, `reapply.${t}.projection_orders`)).toBe(1);
  expect(await countMessages(nats.nc, STREAMS.redrive, `redrive.${t}.>`)).toBe(0);
  const twice = await run(["dlq", "redrive", "--tenant", t, "--seq", String(seq)]);
  expect(twice.stderr).toContain("[FLEX_DLQ_NOT_FOUND]");
  expect(await countMessages(nats.nc, STREAMS.reapply, `reapply.${t}.projection_orders`)).toBe(1);

  // A dead letter under t whose event is another tenant's is not sent anywhere.
  const forged = await projectionDeadLetter(t, "audit", `evt.${uniqueName("cq")}.m.k`);
  const refused = await run(["dlq", "redrive", "--tenant", t, "--seq", String(forged)]);
  expect(refused.code).toBe(1);
  expect(refused.stderr).toContain("[FLEX_DLQ_REDRIVE_UNSUPPORTED]");
  expect(await countMessages(nats.nc, STREAMS.dlq, dlqSubject(t, "projection_audit"))).toBe(1);
  expect(await countMessages(nats.nc, STREAMS.reapply, `reapply.${t}.projection_audit`)).toBe(0);
}, 60_000);
