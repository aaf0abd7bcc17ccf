import { jetstreamManager } from "@nats-io/jetstream";
import type { Command } from "commander";
import { createEventStore, InvalidOptionError, STREAMS } from "../../streams/index.js";
import type { ReadAllOptions } from "../../streams/index.js";
import { connectCli } from "../connection.js";
import { createProgress } from "../progress.js";

interface ReplayOpts {
  fromSeq?: string;
  since?: string;
  until?: string;
  follow?: boolean;
  nats?: string;
}

function parseSeq(field: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidOptionError(field, value, "a stream sequence from 1 and up");
  return n;
}

export function register(program: Command): void {
  program
    .command("replay")
    .description("write events of FLEX_EVENTS as NDJSON to stdout (progress on stderr)")
    .argument("[filter]", "subject filter", "evt.>")
    .option("--from-seq <seq>", "first stream sequence")
    .option("--since <time>", "events stored at or after this RFC 3339 time")
    .option("--until <seq|time>", "last stream sequence, or events stored up to this time")
    .option("--follow", "keep following new events after catching up")
    .option("--nats <url>", "server URL")
    .action(async (filter: string, opts: ReplayOpts) => {
      const options: { -readonly [K in keyof ReadAllOptions]: ReadAllOptions[K] } = { filter, follow: opts.follow ?? false };
      if (opts.fromSeq !== undefined) options.fromSeq = parseSeq("--from-seq", opts.fromSeq);
      if (opts.since !== undefined) options.since = opts.since;
      if (opts.until !== undefined) options.until = /^\d+$/.test(opts.until) ? parseSeq("--until", opts.until) : opts.until;
      const nc = await connectCli(opts.nats);
      const store = await createEventStore(nc);
      const ac = new AbortController();
      process.once("SIGINT", () => ac.abort());
      options.signal = ac.signal;
      const info = await (await jetstreamManager(nc)).streams.info(STREAMS.events);
      const progress = createProgress("replay", "events");
      const started = Date.now();
      let count = 0;
      let buffer = "";
      try {
        for await (const e of store.readAll(options)) {
          count += 1;
          buffer += `${JSON.stringify(e)}\n`;
          if (buffer.length > 65_536) {
            if (!process.stdout.write(buffer)) await new Promise((res) => process.stdout.once("drain", res));
            buffer = "";
          }
          if (count % 4096 === 0) progress.update(count, options.follow ? undefined : info.state.messages);
        }
      } catch (err) {
        if (!ac.signal.aborted) throw err;
      } finally {
        process.stdout.write(buffer);
        progress.stop();
        await store.close();
        await nc.drain();
      }
      const seconds = (Date.now() - started) / 1000;
      process.stderr.write(`replayed ${count} events in ${seconds.toFixed(2)} s (${Math.round(count / Math.max(seconds, 0.001))} events/s)\n`);
    });
}
