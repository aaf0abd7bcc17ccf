// The json-transform plugin as a child process on a real nats-server, called by the host client.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPluginProcess } from "../../test/plugin-process.js";
import type { PluginProcess } from "../../test/plugin-process.js";
import { startPluginTestNats } from "../../test/plugin-nats.js";
import type { PluginTestNats } from "../../test/plugin-nats.js";
import { createPluginClient, PluginRejectedError } from "../index.js";
import type { PluginClient, ProcessorInput } from "../index.js";
import { jsonTransformPluginCommand } from "./launch.js";
import { compileTransform } from "./transform.js";

let nats: PluginTestNats;
let proc: PluginProcess;
let client: PluginClient;
const RUN = { id: "r1", workflow: "w", attempt: 1 };

const input = (i: number, data: unknown, key = `k${i % 3}`): ProcessorInput => ({ seq: i + 1, subject: `evt.acme.orders.${key}`, key, id: `e${i}`, type: "OrderPlaced", time: "2026-01-01T00:00:00Z", data });

beforeAll(async () => {
  nats = await startPluginTestNats({ plugins: ["json-transform"] });
  proc = await startPluginProcess(nats, "json-transform", jsonTransformPluginCommand());
  client = createPluginClient(nats.nc, "json-transform");
}, 30_000);

afterAll(async () => {
  await proc?.kill();
  await nats?.close();
});

describe("json-transform plugin", () => {
  const options = { pick: ["order.total", "order.id"], rename: { "order.total": "total" }, cast: { total: "number" }, filter: [{ path: "total", op: "gt", value: 100 }], type: "BigOrder" };

  it("emits one output of the options' type per kept input, equal to the in-process transform; a value that cannot be cast is rejected alone", async () => {
    const datas = [{ order: { id: 1, total: "150" } }, { order: { id: 2, total: "50" } }, { order: { id: 3, total: "oops" } }, { order: { id: 4, total: 101 } }];
    const inputs = datas.map((d, i) => input(i, d));
    const reply = await client.callProcessor("json-transform", { tenant: "acme", options, states: { k0: null, k1: null, k2: null }, inputs });
    const t = compileTransform(options);
    expect(reply.outputs).toEqual([
      { input: 0, type: "BigOrder", data: (t(datas[0]) as { data: unknown }).data },
      { input: 3, type: "BigOrder", data: (t(datas[3]) as { data: unknown }).data },
    ]);
    expect(reply.outputs[0]!.data).toEqual({ order: { id: 1 }, total: 150 });
    expect(reply.rejected).toEqual([{ input: 2, reason: 'json-transform: cast total: cannot cast "oops" (string) to number' }]);
    expect(reply.states).toEqual({});
  });

  it("a batch split over the max payload gets its rejections remapped to the whole batch's indexes", async () => {
    const small = createPluginClient(nats.nc, "json-transform", { maxPayload: 1024 });
    const datas = Array.from({ length: 12 }, (_, i) => ({ order: { id: i, total: i % 4 === 1 ? "bad" : String(200 + i) } }));
    const inputs = datas.map((d, i) => input(i, d, `k${i % 6}`));
    const states = Object.fromEntries(inputs.map((x) => [x.key, null]));
    const whole = await client.callProcessor("json-transform", { tenant: "acme", options, states, inputs });
    const split = await small.callProcessor("json-transform", { tenant: "acme", options, states, inputs });
    expect(split).toEqual(whole);
    expect(split.rejected?.map((r) => r.input)).toEqual([1, 5, 9]);
    expect(split.outputs.map((o) => o.input)).toEqual([0, 2, 3, 4, 6, 7, 8, 10, 11]);
  });

  it("is deterministic: the same batch gives the same reply", async () => {
    const inputs = Array.from({ length: 50 }, (_, i) => input(i, { order: { id: i, total: String(i * 5) } }));
    const req = { tenant: "acme", options, states: { k0: null, k1: null, k2: null }, inputs };
    expect(await client.callProcessor("json-transform", req)).toEqual(await client.callProcessor("json-transform", req));
  });

  it.each([
    [{ cast: { total: "money" } }, /options\.cast\.total/],
    [{ pick: ["__proto__.x"] }, /options\.pick\[0\]/],
    [{ unknown: 1 }, /options\.unknown/],
  ])("answers bad options %j with 400 naming the path", async (bad, path) => {
    const err = await client.callProcessor("json-transform", { tenant: "acme", options: bad, states: { k0: null }, inputs: [input(0, {})] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginRejectedError);
    expect((err as PluginRejectedError).status).toBe(400);
    expect((err as Error).message).toMatch(path);
  });

  it("runs as a step: { options, data } → { kept, data }; a cast failure is 400", async () => {
    await expect(client.callStep("json-transform", { tenant: "acme", input: { options, data: { order: { id: 9, total: "200" } } }, run: RUN })).resolves.toEqual({ output: { kept: true, data: { order: { id: 9 }, total: 200 } } });
    await expect(client.callStep("json-transform", { tenant: "acme", input: { options, data: { order: { total: "1" } } }, run: RUN })).resolves.toEqual({ output: { kept: false, data: null } });
    const err = await client.callStep("json-transform", { tenant: "acme", input: { options, data: { order: { total: "x" } } }, run: RUN }).catch((e: unknown) => e);
    expect((err as PluginRejectedError).status).toBe(400);
    const notObject = await client.callStep("json-transform", { tenant: "acme", input: 5, run: RUN }).catch((e: unknown) => e);
    expect((notObject as Error).message).toMatch(/input: expected an object/);
  });
});
