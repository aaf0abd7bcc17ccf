/**
 * The load generator of bench/gateway.ts, run as a separate process so the gateway under
 * test does not share its event loop with the client. Reads one JSON job from argv[2],
 * runs autocannon, prints one JSON line with the figures.
 */
import autocannon from "autocannon";

/** What bench/gateway.ts asks this process to load (JSON on stdin). */
export interface Job {
  readonly url: string;
  readonly path: string;
  readonly method: "GET" | "POST";
  readonly headers: Record<string, string>;
  readonly body?: string;
  readonly connections: number;
  readonly pipelining: number;
  readonly durationSec: number;
  /** Give each request in flight its own aggregate: `path` + an id reused once its response is in. */
  readonly perConnectionSuffix?: boolean;
}

const chunks: Buffer[] = [];
for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Job;
// autocannon clears a connection's context before each request when its list of requests
// wraps (here: every request), so a context cannot hold a connection's aggregate. Instead an
// id is taken from a free list when a request is built and given back when its response
// arrives: with pipelining 1 no two requests in flight share an aggregate, and about
// `connections` aggregates are used over and over (their heads stay cached).
const free: string[] = [];
let minted = 0;
const result = await autocannon({
  url: job.url,
  connections: job.connections,
  pipelining: job.pipelining,
  duration: job.durationSec,
  requests: [{
    method: job.method,
    path: job.path,
    headers: job.headers,
    ...(job.body !== undefined ? { body: job.body } : {}),
    ...(job.perConnectionSuffix
      ? {
          setupRequest: (req, context) => {
            const id = free.pop() ?? `c${process.pid}x${minted++}`;
            context.id = id;
            return { ...req, path: `${job.path}${id}` };
          },
          onResponse: (_status, _body, context) => {
            if (typeof context.id === "string") free.push(context.id);
          },
        }
      : {}),
  }],
});
process.stdout.write(`${JSON.stringify({
  rps: result.requests.average,
  rpsP50: result.requests.p50,
  latencyP50: result.latency.p50,
  latencyP99: result.latency.p99,
  ok: result["2xx"],
  non2xx: result.non2xx,
  errors: result.errors,
  timeouts: result.timeouts,
  durationSec: result.duration,
})}\n`);
