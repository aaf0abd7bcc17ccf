import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import { startTestNats } from "../test/nats-server.js";
import type { TestNats } from "../test/nats-server.js";
import { BUCKETS, ensureTopology, InvalidOptionError, OBJECT_STORES, STREAMS } from "./index.js";

let nats: TestNats;
beforeAll(async () => {
  nats = await startTestNats();
});
afterAll(async () => nats?.close());

describe("topology", () => {
  it("creates everything once; a second run changes nothing; drift is reported, not fixed", async () => {
    const first = await ensureTopology(nats.nc);
    expect([...first.created].sort()).toEqual([...Object.values(STREAMS), ...Object.values(BUCKETS), ...Object.values(OBJECT_STORES)].sort());
    const jsm = await jetstreamManager(nats.nc);
    const before = await jsm.streams.info(STREAMS.events);
    expect(before.config.storage).toBe("file");
    expect(before.config.duplicate_window).toBe(nanos(120_000));
    const bundles = await jsm.streams.info(`OBJ_${OBJECT_STORES.pluginBundles}`);
    expect(bundles.config).toMatchObject({ storage: "file", num_replicas: 1, subjects: [`$O.${OBJECT_STORES.pluginBundles}.C.>`, `$O.${OBJECT_STORES.pluginBundles}.M.>`] });

    const second = await ensureTopology(nats.nc);
    expect(second.created).toEqual([]);
    expect(second.drift).toEqual([]);
    expect(second.unchanged).toHaveLength(first.created.length);
    expect((await jsm.streams.info(STREAMS.events)).created).toEqual(before.created);

    const derived = await jsm.streams.info(STREAMS.derived);
    await jsm.streams.update(STREAMS.derived, { ...derived.config, max_age: nanos(3_600_000) });
    const third = await ensureTopology(nats.nc);
    expect(third.drift).toEqual([{ resource: STREAMS.derived, field: "max_age", expected: 0, actual: nanos(3_600_000) }]);
    expect((await jsm.streams.info(STREAMS.derived)).config.max_age).toBe(nanos(3_600_000));
  });

  it("rejects bad options before touching the server", async () => {
    await expect(ensureTopology(nats.nc, { replicas: 0 })).rejects.toBeInstanceOf(InvalidOptionError);
    await expect(ensureTopology(nats.nc, { storage: "disk" as "file" })).rejects.toThrow(/storage/);
  });
});
