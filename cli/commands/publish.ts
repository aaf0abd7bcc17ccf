import { createReadStream } from "node:fs";
import { createInterface } from "node:readline";
import type { Command } from "commander";
import { createPublisher, encodeEvent, InvalidEventError, InvalidOptionError, parseSubject } from "../../streams/index.js";
import type { EventInput } from "../../streams/index.js";
import { connectCli } from "../connection.js";
import { createProgress } from "../progress.js";

// Lines read ahead of their acks; the publisher's window is smaller, so it stays busy.
const MAX_PENDING = 8_192;

interface PublishOpts {
  file?: string;
  type: string;
  id?: string;
  nats?: string;
}

interface Line extends EventInput {
  readonly subject?: string;
}

function parseJson(what: string, text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InvalidEventError(what, text, "JSON", { cause: err });
  }
}

export function register(program: Command): void {
  program
    .command("publish")
    .description("publish one event, or every line of an NDJSON file ({subject,type,data,id?} per line), through the acked publisher")
    .argument("[subject]", "event subject evt.<tenant>.<category>.<id> (for a file: the default for lines without one)")
    .argument("[json]", "the event's data as JSON (one event)")
    .option("-f, --file <path>", "NDJSON file, - for stdin")
    .option("-t, --type <type>", "event type when not given per line", "Event")
    .option("--id <id>", "event id (one event); default: a new NUID")
    .option("--nats <url>", "server URL (default: NATS_URL, the embedded server, localhost:4222)")
    .action(async (subject: string | undefined, json: string | undefined, opts: PublishOpts) => {
      if (!opts.file && !subject) throw new InvalidOptionError("subject", subject, "a subject, or --file");
      if (subject) parseSubject(subject);
      const nc = await connectCli(opts.nats);
      const publisher = createPublisher(nc);
      try {
        if (!opts.file) {
          const event: EventInput = { type: opts.type, data: json === undefined ? {} : parseJson("data", json), ...(opts.id ? { id: opts.id } : {}) };
          const e = encodeEvent(event);
          const ack = await publisher.publish(subject!, e.data, { headers: e.headers });
          process.stdout.write(`${JSON.stringify({ subject, id: e.id, stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate })}\n`);
          return;
        }
        await publishFile(opts.file, subject, opts.type, publisher);
      } finally {
        await publisher.close();
        await nc.drain();
      }
    });
}

async function publishFile(file: string, defaultSubject: string | undefined, defaultType: string, publisher: ReturnType<typeof createPublisher>): Promise<void> {
  const input = file === "-" ? process.stdin : createReadStream(file);
  const lines = createInterface({ input, crlfDelay: Infinity });
  const progress = createProgress("publish", "events");
  const started = Date.now();
  let sent = 0;
  let acked = 0;
  let failed = 0;
  let lineNo = 0;
  const failures: string[] = [];
  const pending = new Set<Promise<void>>();
  const fail = (where: string, err: unknown): void => {
    failed += 1;
    if (failures.length < 20) failures.push(`${where}: ${(err as Error).message}`);
  };
  for await (const raw of lines) {
    lineNo += 1;
    if (!raw.trim()) continue;
    const where = `line ${lineNo}`;
    let line: Line;
    try {
      const parsed = parseJson(`line ${lineNo}`, raw);
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new InvalidEventError(`line ${lineNo}`, raw, 'an object like {"subject","type","data"}');
      line = parsed as Line;
      const subject = line.subject ?? defaultSubject;
      if (!subject) throw new InvalidEventError(`line ${lineNo}.subject`, undefined, "a subject (or one given as the first argument)");
      parseSubject(subject);
      const e = encodeEvent({ ...line, type: line.type ?? defaultType }, `line ${lineNo}.`);
      sent += 1;
      const p = publisher.publish(subject, e.data, { headers: e.headers }).then(
        () => void (acked += 1),
        (err: unknown) => fail(where, err),
      );
      pending.add(p);
      void p.finally(() => pending.delete(p));
      // Read no further ahead than the publisher can keep in flight.
      if (pending.size >= MAX_PENDING) await Promise.race(pending);
    } catch (err) {
      fail(where, err);
    }
    if (lineNo % 1024 === 0) progress.update(acked);
  }
  await Promise.all(pending);
  progress.update(acked, sent);
  progress.stop();
  const seconds = (Date.now() - started) / 1000;
  process.stderr.write(`published ${acked} events in ${seconds.toFixed(2)} s (${Math.round(acked / Math.max(seconds, 0.001))} events/s), ${failed} failed\n`);
  for (const f of failures) process.stderr.write(`  ${f}\n`);
  if (failed > failures.length) process.stderr.write(`  ... and ${failed - failures.length} more\n`);
  if (failed > 0) process.exitCode = 1;
}
