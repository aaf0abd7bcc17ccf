// The schema-validate plugin as a child process on a real nats-server, called by the host client.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPluginProcess } from "../../test/plugin-process.js";
import type { PluginProcess } from "../../test/plugin-process.js";
import { startPluginTestNats } from "../../test/plugin-nats.js";
import type { PluginTestNats } from "../../test/plugin-nats.js";
import { createPluginClient, PluginRejectedError } from "../index.js";
import type { PluginClient, ProcessorInput } from "../index.js";
import { schemaValidatePluginCommand } from "./launch.js";

let nats: PluginTestNats;
let proc: PluginProcess;
let client: PluginClient;
const RUN = { id: "r1", workflow: "w", attempt: 1 };
const schema = { type: "object", required: ["amount"], properties: { amount: { type: "number", minimum: 0 } } };
const input = (i: number, data: unknown): ProcessorInput => ({ seq: i + 1, subject: `evt.acme.pay.p${i}`, key: `p${i}`, id: `e${i}`, type: "Paid", time: "2026-01-01T00:00:00Z", data });
const datas = [{ amount: 1 }, { amount: -5 }, { amount: "x" }, { amount: 0 }];
const states = Object.fromEntries(datas.map((_, i) => [`p${i}`, null]));

beforeAll(async () => {
  nats = await startPluginTestNats({ plugins: ["schema-validate"] });
  proc = await startPluginProcess(nats, "schema-validate", schemaValidatePluginCommand());
  client = createPluginClient(nats.nc, "schema-validate");
}, 30_000);

afterAll(async () => {
  await proc?.kill();
  await nats?.close();
});

describe("schema-validate plugin", () => {
  it("onInvalid dlq: valid inputs become EventValid, each invalid one is rejected alone with ajv's errors", async () => {
    const reply = await client.callProcessor("schema-validate", { tenant: "acme", options: { schema, onInvalid: "dlq" }, states, inputs: datas.map((d, i) => input(i, d)) });
    expect(reply.outputs).toEqual([
      { input: 0, type: "EventValid", data: { amount: 1 } },
      { input: 3, type: "EventValid", data: { amount: 0 } },
    ]);
    expect(reply.rejected).toEqual([
      { input: 1, reason: "schema-validate: /amount must be >= 0" },
      { input: 2, reason: "schema-validate: /amount must be number" },
    ]);
  });

  it("onInvalid event: every input gets an output; invalid ones are EventInvalid with instancePath and message", async () => {
    const reply = await client.callProcessor("schema-validate", { tenant: "acme", options: { schema, onInvalid: "event" }, states, inputs: datas.map((d, i) => input(i, d)) });
    expect(reply.rejected).toBeUndefined();
    expect(reply.outputs.map((o) => o.type)).toEqual(["EventValid", "EventInvalid", "EventInvalid", "EventValid"]);
    expect(reply.outputs[1]!.data).toEqual({ data: { amount: -5 }, errors: [{ instancePath: "/amount", keyword: "minimum", message: "must be >= 0" }] });
  });

  it("answers a schema that does not compile, or a remote $ref, with 400 naming options.schema (nothing is fetched)", async () => {
    for (const bad of [{ type: 5 }, { $ref: "http://127.0.0.1:1/s.json" }]) {
      const err = await client.callProcessor("schema-validate", { tenant: "acme", options: { schema: bad }, states: { p0: null }, inputs: [input(0, {})] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PluginRejectedError);
      expect((err as Error).message).toMatch(/options\.schema/);
    }
  });

  it("runs as a step: { schema, data } → { valid, errors }", async () => {
    await expect(client.callStep("schema-validate", { tenant: "acme", input: { schema, data: { amount: 2 } }, run: RUN })).resolves.toEqual({ output: { valid: true, errors: [] } });
    const r = await client.callStep("schema-validate", { tenant: "acme", input: { schema, data: {} }, run: RUN });
    expect(r.output).toEqual({ valid: false, errors: [{ instancePath: "", keyword: "required", message: "must have required property 'amount'" }] });
    const err = await client.callStep("schema-validate", { tenant: "acme", input: { data: 1 }, run: RUN }).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/input\.schema/);
  });
});
