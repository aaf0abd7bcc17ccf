import { DeliverPolicy } from "@nats-io/jetstream";
import type { ConsumerMessages, JetStreamClient, JsMsg, OrderedConsumerOptions } from "@nats-io/jetstream";

// Drop the read part of the buffer once it is this long, so a reader that keeps pace
// never lets it grow.
const COMPACT_AT = 8_192;

export interface OrderedReadOptions {
  readonly filter: string;
  /** First stream sequence, or the first stored time (epoch ms). */
  readonly start: { readonly seq: number } | { readonly time: number };
  /** Messages per pull request. */
  readonly batch: number;
  /** Most messages held for a slow reader; past it the consumer stops until they are read. */
  readonly highWater: number;
  /** Called each time the consumer is re-created after a pause, with the sequence it resumes from. */
  readonly onResume?: (fromSeq: number) => void;
}

/**
 * Reads `stream` in order with nats.js's ordered consumer in callback mode, which delivers
 * about twice as fast as its async iterator here (one queue instead of two). The callback
 * cannot push back, so the buffer is bounded by stopping the consumer at `highWater` and
 * creating a new one from the next sequence once the reader has drained it.
 *
 * Ends only when the caller stops iterating, `signal` aborts (then it returns quietly:
 * the caller decides what an abort means) or the consumer fails (then it throws).
 */
export async function* orderedMessages(
  js: JetStreamClient,
  stream: string,
  options: OrderedReadOptions,
  signal?: AbortSignal,
): AsyncGenerator<JsMsg> {
  let queue: JsMsg[] = [];
  let head = 0;
  let lastSeq = 0;
  let paused = false;
  let failure: unknown;
  let wake: (() => void) | null = null;
  const notify = (): void => {
    const w = wake;
    wake = null;
    w?.();
  };
  let messages = null as ConsumerMessages | null;
  const onAbort = (): void => {
    messages?.stop();
    notify();
  };
  signal?.addEventListener("abort", onAbort, { once: true });

  const open = async (startSeq: number | null): Promise<void> => {
    const start: Partial<OrderedConsumerOptions> = startSeq !== null
      ? (startSeq > 1 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: startSeq } : { deliver_policy: DeliverPolicy.All })
      : "time" in options.start
        ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(options.start.time).toISOString() }
        : options.start.seq > 1
          ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: options.start.seq }
          : { deliver_policy: DeliverPolicy.All };
    const consumer = await js.consumers.get(stream, { filter_subjects: options.filter, ...start });
    paused = false;
    let current: ConsumerMessages | undefined;
    current = await consumer.consume({
      max_messages: options.batch,
      callback: (m) => {
        if (paused) return;
        queue.push(m);
        lastSeq = m.info.streamSequence;
        if (queue.length - head >= options.highWater) {
          paused = true;
          current?.stop();
        }
        notify();
      },
    });
    messages = current;
    const mine = current;
    void mine.closed().then((err) => {
      if (err && !paused && messages === mine) failure = err;
      notify();
    });
  };

  try {
    await open(null);
    while (true) {
      if (head < queue.length) {
        const m = queue[head]!;
        head += 1;
        if (head === queue.length) {
          queue = [];
          head = 0;
        } else if (head >= COMPACT_AT) {
          queue = queue.slice(head);
          head = 0;
        }
        yield m;
        continue;
      }
      if (signal?.aborted) return;
      if (failure !== undefined) throw failure;
      if (paused) {
        await messages?.close().catch(() => undefined);
        options.onResume?.(lastSeq + 1);
        await open(lastSeq + 1);
        continue;
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    paused = true;
    await messages?.close().catch(() => undefined);
  }
}
