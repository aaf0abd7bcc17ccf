/**
 * Batches and outputs: the task a batch of entries becomes for the pool, the derived events
 * and dead letters a result becomes, and the `flex_state` checkpoint messages, each with the
 * deterministic ids a replay reproduces.
 */
import { BUCKETS, deadLetterHeaders, decodeData, derivedSubject, dlqSubject, EventHeaders, HEADERS } from "../streams/index.js";
import type { ResolvedProcessor } from "./config.js";
import { metaOf, stateKvKey } from "./entry.js";
import type { Entry, KeyState, PendingOutput } from "./entry.js";
import type { BatchResult, BatchTask } from "./task.js";

const encoder = new TextEncoder();
const LINE_BREAK = /[\r\n]/u;
/** Header of a derived event: the source event's stream sequence. */
const SOURCE_SEQ_HEADER = "Flex-Source-Seq";

// A header value must stay on its line (what EventHeaders.append checks): an output type
// carrying a line break would inject headers.
function oneLine(name: string, value: string): string {
  if (LINE_BREAK.test(value)) throw new TypeError(`header ${name}: values cannot contain \\r or \\n`);
  return value;
}

/** An error as a dead letter reports it. */
export interface FailureInfo {
  readonly name: string;
  readonly code: string | undefined;
  readonly message: string;
}

/** The pool task of `entries` (one task, keys in order of first appearance), with each key's state from `stateOf`. */
export function buildTask(cfg: ResolvedProcessor, entries: readonly Entry[], stateOf: (stateKey: string) => string | null): BatchTask {
  const keyIdx = new Map<string, number>();
  const tenants: string[] = [];
  const keys: string[] = [];
  const states: Array<string | null> = [];
  const n = entries.length;
  const keyIndex = new Uint32Array(n);
  const seqs = new Float64Array(n);
  const storedAt = new Float64Array(n);
  const subjects = new Array<string>(n);
  let bytes = 0;
  for (let i = 0; i < n; i++) bytes += entries[i]!.raw.length;
  const body = new Uint8Array(bytes);
  const offsets = new Uint32Array(n + 1);
  const headerEnds = new Uint32Array(n);
  let pos = 0;
  for (let i = 0; i < n; i++) {
    const e = entries[i]!;
    let k = keyIdx.get(e.stateKey);
    if (k === undefined) {
      k = keys.length;
      keyIdx.set(e.stateKey, k);
      tenants.push(e.tenant);
      keys.push(e.key);
      states.push(stateOf(e.stateKey));
    }
    keyIndex[i] = k;
    seqs[i] = e.seq;
    storedAt[i] = e.storedAt;
    subjects[i] = e.subject;
    body.set(e.raw, pos);
    headerEnds[i] = pos + e.hdr;
    pos += e.raw.length;
    offsets[i + 1] = pos;
  }
  return { op: "batch", kind: cfg.kind, options: cfg.validatedOptions, tenants, keys, states, keyIndex, seqs, storedAt, subjects: subjects.join("\n"), body, offsets, headerEnds };
}

/**
 * The derived events of `result` for the entries `include` accepts. Each carries the
 * `Nats-Msg-Id` `<processor>:<source sequence>:<output index>`, so a replay is stored once;
 * `extraHeaders` are appended to each (e.g. the instance that produced it).
 */
export function collectOutputs(cfg: ResolvedProcessor, entries: readonly Entry[], result: BatchResult, out: PendingOutput[], include: (eventIndex: number) => boolean, extraHeaders: ReadonlyArray<readonly [string, string]> = []): void {
  // Subjects of the outputs that keep their input's key, by `<tenant>.<key>`: a batch holds
  // few keys, and each subject's tokens are checked once per batch, not once per output.
  const subjects = new Map<string, string>();
  let checkedType = "";
  for (let j = 0; j < result.outEvent.length; j++) {
    const i = result.outEvent[j]!;
    if (!include(i)) continue;
    const e = entries[i]!;
    const type = result.outTypes[j]!;
    if (type !== checkedType) checkedType = oneLine(HEADERS.type, type);
    const meta = metaOf(e);
    // Names are FlexCore's canonical constants and values single lines (the type checked
    // here, the source's fields by metaOf), so the headers skip EventHeaders.append's name
    // canonicalisation and lookups (a closure and a scan per header, per derived event).
    const h = new EventHeaders();
    h.appendChecked(HEADERS.msgId, `${cfg.name}:${e.seq}:${result.outIndex[j]}`);
    h.appendChecked(HEADERS.type, type);
    h.appendChecked(HEADERS.time, meta.time);
    h.appendChecked(HEADERS.correlationId, meta.correlationId);
    h.appendChecked(HEADERS.causationId, meta.sourceId);
    h.appendChecked(HEADERS.schema, "1");
    h.appendChecked(HEADERS.contentType, "application/json");
    h.appendChecked(SOURCE_SEQ_HEADER, String(e.seq));
    for (const [k, v] of extraHeaders) h.append(k, v);
    const outKey = result.outKeys[j];
    let subject: string | undefined;
    if (outKey === null || outKey === undefined) {
      subject = subjects.get(e.stateKey);
      if (subject === undefined) subjects.set(e.stateKey, (subject = derivedSubject(e.tenant, cfg.name, e.key)));
    } else subject = derivedSubject(e.tenant, cfg.name, outKey);
    // A view, not a copy: the result's buffer is not written again, and lives until the batch is published.
    out.push({ subject, data: result.outBody.subarray(result.outOffsets[j]!, result.outOffsets[j + 1]!), headers: h });
  }
}

/** The `ProcessingFailed` dead letter of `e` (its `Nats-Msg-Id` is fixed, so a repeat is stored once). */
export function deadLetter(cfg: ResolvedProcessor, e: Entry, attempts: number, error: FailureInfo, reason: string): PendingOutput {
  const meta = metaOf(e);
  const h = deadLetterHeaders({
    // A redrive that failed again is a new dead letter (its own id), carrying the earlier reasons.
    id: e.redrive ? `${cfg.name}:${e.seq}:dlq:r${e.redrive.dlqSeq}` : `${cfg.name}:${e.seq}:dlq`,
    type: "ProcessingFailed",
    causationId: meta.sourceId,
    sourceSeq: e.seq,
    sourceSubject: e.subject,
    reason,
  });
  const body = {
    processor: cfg.name,
    kind: cfg.kind,
    seq: e.seq,
    subject: e.subject,
    tenant: e.tenant,
    key: e.key,
    type: meta.type,
    time: meta.time,
    attempts,
    error: { name: error.name, code: error.code ?? null, message: error.message },
    reason,
    ...(e.redrive ? { previousReasons: e.redrive.reasons, redrivenFrom: e.redrive.dlqSeq } : {}),
    data: decodeData(e.m.data),
  };
  return { subject: dlqSubject(e.tenant, cfg.name), data: encoder.encode(JSON.stringify(body)), headers: h };
}

/** The `flex_state` write of one key's checkpoint (`stateKey` is `<tenant>.<key>`), published as a KV put. */
export function checkpointMessage(processor: string, stateKey: string, st: Readonly<KeyState>): { readonly subject: string; readonly data: Uint8Array } {
  const dot = stateKey.indexOf(".");
  const redriven = st.redriven && st.redriven.length > 0 ? `,"redriven":${JSON.stringify(st.redriven)}` : "";
  return { subject: `$KV.${BUCKETS.state}.${stateKvKey(processor, stateKey.slice(0, dot), stateKey.slice(dot + 1))}`, data: encoder.encode(`{"seq":${st.seq},"state":${st.json ?? "null"}${redriven}}`) };
}
