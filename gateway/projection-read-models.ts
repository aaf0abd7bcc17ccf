import type { FilterValue, ProjectionEngine } from "../projections/index.js";
import type { ReadModelChange, ReadModelEntry, ReadModels } from "./read-models.js";

/**
 * The projection engine as the gateway's {@link ReadModels}: queries, read-your-writes
 * waits, change notifications (a rebuild, which reports no tenants, notifies every
 * tenant) and lag for `/readyz` and `/metrics`.
 */
export function projectionReadModels(engine: ProjectionEngine): ReadModels {
  return {
    query: (name, q) =>
      engine.query(name, {
        tenant: q.tenant,
        ...(q.reader !== undefined ? { reader: q.reader } : {}),
        ...(q.filter !== undefined ? { filter: q.filter as Readonly<Record<string, FilterValue>> } : {}),
        ...(q.sort !== undefined ? { sort: q.sort } : {}),
        ...(q.cursor !== undefined ? { cursor: q.cursor } : {}),
        ...(q.limit !== undefined ? { limit: q.limit } : {}),
      }),
    waitFor: (name, seq, options) => engine.waitFor(name, seq, { timeout: options.timeoutMs, ...(options.signal ? { signal: options.signal } : {}) }),
    onChange: (name, listener) =>
      engine.onChange(name, (change) => {
        const event: ReadModelChange = { seq: change.seq, ...(change.tenants.length > 0 ? { tenants: change.tenants } : {}) };
        listener(event);
      }),
    lag: async () => (await engine.status()).map((s) => ({ name: s.name, lag: s.lag ?? Number.POSITIVE_INFINITY })),
    catalog: async () => {
      const status = new Map((await engine.status()).map((s) => [s.name, s]));
      return engine.list().map((p): ReadModelEntry => {
        const s = status.get(p.name);
        const times = (s?.streams ?? []).map((x) => x.lastEventTime).filter((t): t is string => t !== null).sort();
        return {
          name: p.name,
          description: p.description,
          readers: p.readers.map((r) => ({
            name: r.name,
            description: r.description,
            columns: Object.fromEntries(Object.entries(r.columns).filter(([c]) => c !== "tenant")),
            key: r.key.filter((c) => c !== "tenant"),
            defaultSort: r.defaultSort ?? null,
          })),
          state: s?.state ?? "unknown",
          lag: s?.lag ?? null,
          rebuilding: s?.rebuilding ?? false,
          generation: s?.generation ?? null,
          lastEventTime: times.at(-1) ?? null,
        };
      });
    },
  };
}
