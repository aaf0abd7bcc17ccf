/**
 * Rebuild beside the served copy: a new generation of each projection's database is folded
 * from sequence 1 by a runner of its own while the old one keeps serving; once it has caught
 * up, the live runner pauses, the copy catches up with what the old one applied, and the two
 * swap (manifest first, then the served reader). A rebuild that fails or is aborted deletes
 * its copy and leaves the served one as it was.
 */
import { join } from "node:path";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Database } from "better-sqlite3";
import { AbortedError } from "../streams/index.js";
import { generationFile, lastGeneration, removeDatabase, writeManifest } from "./catalog.js";
import { openReader } from "./database.js";
import type { SyncMode } from "./database.js";
import { ProjectionStoppedError } from "./errors.js";
import { Member } from "./member.js";
import type { DeadLetterFn } from "./member.js";
import type { Projection, SourceStream } from "./projection.js";
import { ProjectionRunner } from "./runner.js";

/** How often a rebuild reports progress. */
export const PROGRESS_INTERVAL_MS = 250;

/** Rebuild progress, reported every 250 ms and at the end. */
export interface RebuildProgress {
  readonly projections: readonly string[];
  /** Events applied to the new copy so far (summed over its streams). */
  readonly done: number;
  /** Events to apply to reach the stream ends seen when the rebuild started. */
  readonly total: number;
  readonly eventsPerSecond: number;
  /** Seconds left at the current rate; undefined before the rate is known. */
  readonly etaSeconds: number | undefined;
  readonly phase: "catching-up" | "swapping" | "done";
}

/** Options of {@link ProjectionEngine.rebuild}. */
export interface RebuildOptions {
  readonly onProgress?: (progress: RebuildProgress) => void;
  readonly signal?: AbortSignal;
}

/** What a rebuild did. */
export interface RebuildResult {
  readonly projections: ReadonlyArray<{ readonly name: string; readonly generation: number; readonly file: string }>;
  /** Events read from the streams. */
  readonly events: number;
  readonly durationMs: number;
  readonly eventsPerSecond: number;
}

/** The database a projection is served from. */
export interface Served {
  /** Absent in a read-only engine. */
  member: Member | undefined;
  reader: Database;
  file: string;
  generation: number;
  stale: boolean;
}


/** What a rebuild needs of the engine. */
export interface RebuildHost {
  readonly nc: NatsConnection;
  /** The projections directory. */
  readonly dir: string;
  readonly sync: SyncMode;
  readonly limits: { readonly batchSize: number; readonly foldWindow: number };
  readonly log: (line: string, level?: "warn" | "error") => void;
  readonly jsm: JetStreamManager;
  /** The runner of the served copies (paused for the swap). */
  readonly live: ProjectionRunner;
  /** The served copies, by projection name; the swap replaces entries. */
  readonly served: Map<string, Served>;
  /** Aborted when the engine closes. */
  readonly closing: AbortSignal;
  deadLetterFn(): DeadLetterFn;
  /** A new copy serves now: settle its waiters, tell its listeners. */
  rebuilt(member: Member): void;
}

/** Rebuilds `projections` beside their served copies and swaps them in. */
export async function rebuildBeside(host: RebuildHost, projections: readonly Projection[], options: RebuildOptions): Promise<RebuildResult> {
  const started = performance.now();
  const signal = options.signal ? AbortSignal.any([options.signal, host.closing]) : host.closing;
  const fresh: Member[] = [];
  let wake: (() => void) | undefined;
  const runner = new ProjectionRunner(host.nc, host.deadLetterFn(), () => wake?.(), host.log, host.limits);
  let progressTimer: NodeJS.Timeout | undefined;
  let swapped = false;
  try {
    for (const p of projections) {
      const served = host.served.get(p.name)!;
      const generation = Math.max(lastGeneration(host.dir, p.name), served.generation) + 1;
      fresh.push(new Member(p, join(host.dir, generationFile(p.name, generation)), generation, host.sync));
    }
    const streams = [...new Set(projections.flatMap((p) => p.sources.map((s) => s.stream)))];
    const targets = new Map<SourceStream, number>();
    for (const s of streams) targets.set(s, (await host.jsm.streams.info(s)).state.last_seq);
    const done = (): number => fresh.reduce((a, m) => a + [...m.streams.keys()].reduce((b, s) => b + Math.min(m.position(s), targets.get(s)!), 0), 0);
    const total = fresh.reduce((a, m) => a + [...m.streams.keys()].reduce((b, s) => b + targets.get(s)!, 0), 0);
    let phase: RebuildProgress["phase"] = "catching-up";
    const report = (): void => {
      if (!options.onProgress) return;
      const elapsed = (performance.now() - started) / 1000;
      const d = done();
      const rate = elapsed > 0 ? d / elapsed : 0;
      options.onProgress({ projections: projections.map((p) => p.name), done: d, total, eventsPerSecond: rate, etaSeconds: rate > 0 ? (total - d) / rate : undefined, phase });
    };
    if (options.onProgress) {
      progressTimer = setInterval(report, PROGRESS_INTERVAL_MS);
      progressTimer.unref();
    }
    // Waits until `reached` holds, re-checked after each batch of the rebuild.
    const until = async (reached: () => boolean): Promise<void> => {
      while (!reached()) {
        if (signal.aborted) throw new AbortedError("rebuild", { cause: signal.reason });
        const halted = fresh.find((m) => m.stopped);
        if (halted) throw new ProjectionStoppedError(halted.name, halted.stopped!.stream, halted.stopped!.seq, halted.stopped!.error);
        await new Promise<void>((res) => {
          wake = res;
          const t = setTimeout(res, PROGRESS_INTERVAL_MS);
          t.unref();
        });
      }
    };
    await runner.add(...fresh);
    await until(() => fresh.every((m) => [...m.streams.keys()].every((s) => m.position(s) >= targets.get(s)!)));

    // Freeze the served side, bring the copy to (at least) where it is, then swap.
    phase = "swapping";
    await host.live.pause();
    try {
      const goals = new Map<Member, Map<SourceStream, number>>();
      for (const m of fresh) {
        const old = host.served.get(m.name)!.member!;
        goals.set(m, new Map([...m.streams.keys()].map((s) => [s, Math.max(old.position(s), host.live.applied(s))])));
      }
      await until(() => fresh.every((m) => [...goals.get(m)!].every(([s, goal]) => m.position(s) >= goal)));
      await runner.close();
      for (const m of fresh) {
        m.flushCheckpoints();
        const old = host.served.get(m.name)!;
        writeManifest(host.dir, { name: m.name, version: m.projection.version, generation: m.generation, file: generationFile(m.name, m.generation) });
        const reader = openReader(m.file);
        host.served.set(m.name, { member: m, reader, file: generationFile(m.name, m.generation), generation: m.generation, stale: false });
        if (old.member) {
          host.live.remove(old.member);
          old.member.close();
        }
        old.reader.close();
        removeDatabase(host.dir, old.file);
        await host.live.add(m);
      }
      swapped = true;
    } finally {
      host.live.resume();
    }
    phase = "done";
    report();
    for (const m of fresh) host.rebuilt(m);
    const durationMs = performance.now() - started;
    return {
      projections: fresh.map((m) => ({ name: m.name, generation: m.generation, file: m.file })),
      events: runner.received,
      durationMs,
      eventsPerSecond: runner.received / (durationMs / 1000),
    };
  } finally {
    clearInterval(progressTimer);
    if (!swapped) {
      await runner.close();
      for (const m of fresh) {
        m.close();
        removeDatabase(host.dir, generationFile(m.name, m.generation));
      }
    }
  }
}
