/** Helpers shared by the processors' integration tests and benches. */
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createPublisher, encodeEvent, STREAMS } from "../streams/index.js";
import type { Publisher } from "../streams/index.js";

/** URL of the test-only processor kinds (`counter`, `faulty`). */
export const FIXTURE_MODULE = new URL(import.meta.url.endsWith(".ts") ? "./fixtures/faulty.ts" : "./fixtures/faulty.js", import.meta.url).href;

/** Publishes events `{ value }` round-robin over keys; returns nothing until all are acked. */
export async function publishSeries(publisher: Publisher, tenant: string, category: string, keys: readonly string[], values: (i: number, key: string) => unknown, count: number, idPrefix = `${tenant}-e`): Promise<void> {
  const pending: Promise<unknown>[] = [];
  for (let i = 0; i < count; i++) {
    const key = keys[i % keys.length]!;
    const e = encodeEvent({ id: `${idPrefix}-${i}`, type: "Reading", data: values(i, key), time: new Date(Date.UTC(2026, 0, 1) + i * 1000) });
    pending.push(publisher.publish(`evt.${tenant}.${category}.${key}`, e.data, { headers: e.headers }));
    if (pending.length >= 2048) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
}

/** Messages of a stream under a filter, in order, as `{ subject, seq, msgId, data }`. */
export async function readStream(nc: NatsConnection, stream: string, filter: string): Promise<Array<{ subject: string; seq: number; msgId: string; data: string; headers: Record<string, string> }>> {
  const jsm = await jetstreamManager(nc);
  const out: Array<{ subject: string; seq: number; msgId: string; data: string; headers: Record<string, string> }> = [];
  const info = await jsm.streams.info(stream);
  let seq = info.state.first_seq;
  const last = info.state.last_seq;
  const dec = new TextDecoder();
  while (seq <= last && info.state.messages > 0) {
    const m = await jsm.direct.getMessage(stream, { seq, next_by_subj: filter }).catch(() => null);
    if (!m || m.seq > last) break;
    const headers: Record<string, string> = {};
    for (const k of m.header?.keys() ?? []) headers[k] = m.header!.get(k);
    out.push({ subject: m.subject, seq: m.seq, msgId: m.header?.get("Nats-Msg-Id") ?? "", data: dec.decode(m.data), headers });
    seq = m.seq + 1;
  }
  return out;
}

/** Waits until `check` returns true, polling; throws after `timeoutMs`. */
export async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Counts messages of a stream under a filter (server-side, without reading them). */
export async function countMessages(nc: NatsConnection, stream: string, filter: string): Promise<number> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(stream, { subjects_filter: filter });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

export { createPublisher, STREAMS };
