import type { FilterValue, ProjectionEngine } from "../projections/index.js";
import type { ReadModelChange, ReadModels } from "./read-models.js";

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
  };
}
