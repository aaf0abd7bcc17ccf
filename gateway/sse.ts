/**
 * Server-sent event feeds of the gateway (`/v1/projections/:name/live`, `/v1/events/live`):
 * one place for the headers, the keep-alive, the end of a feed when its token expires or is
 * revoked, and the end of every open feed when the gateway closes.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { Revocations } from "./revocations.js";
import type { Principal } from "./tokens.js";

/** Interval of SSE keep-alive comments, in ms. */
export const SSE_HEARTBEAT_MS = 15_000;
/** The `reason` of the `end` event a live feed gets when the gateway closes. */
export const SSE_SHUTDOWN_REASON = "server shutting down";
/** The `reason` of the `end` event when the caller's token expires or is revoked. */
export const SSE_TOKEN_REASON = "token expired or revoked";
/** Bytes a feed may have waiting for a client that does not read before it is ended (the client reconnects and resumes). */
export const SSE_MAX_BUFFERED_BYTES = 1024 * 1024;
/** The `reason` of the `end` event of a client that fell {@link SSE_MAX_BUFFERED_BYTES} behind. */
export const SSE_SLOW_CLIENT_REASON = "client too slow";

/** An open feed. */
export interface SseFeed {
  /** Whether the feed is still open. */
  readonly open: boolean;
  /** Sends one event (`id:` when given, for `Last-Event-ID`); ends the feed instead if the token is no longer valid. */
  send(event: string, data: unknown, id?: string | number): void;
  /** Ends the feed, with an `end` event saying why when `reason` is given. */
  end(reason?: string): void;
  /** Runs `fn` once when the feed ends (client gone, token, shutdown). */
  onEnd(fn: () => void): void;
}

/** The open feeds of one gateway; all are ended (with {@link SSE_SHUTDOWN_REASON}) before it closes. */
export interface SseFeeds {
  /** Hijacks `reply`, writes the headers and the `ready` event, and returns the feed. */
  open(req: FastifyRequest, reply: FastifyReply, principal: Principal, revocations: Revocations, ready: unknown): SseFeed;
  /** Open feeds of a tenant. */
  count(tenant: string): number;
}

const FEEDS = new WeakMap<FastifyInstance, SseFeeds>();

/** The gateway's feed registry (one per Fastify instance; created with its `preClose` hook on first use). */
export function sseFeeds(app: FastifyInstance): SseFeeds {
  const known = FEEDS.get(app);
  if (known) return known;
  // A hijacked reply is outside Fastify's bookkeeping, so closing the server would wait for
  // each client to leave: open feeds are ended first, with the reason.
  const open = new Map<(reason?: string) => void, string>();
  app.addHook("preClose", async () => {
    for (const end of [...open.keys()]) end(SSE_SHUTDOWN_REASON);
  });
  const feeds: SseFeeds = {
    count: (tenant) => {
      let n = 0;
      for (const t of open.values()) if (t === tenant) n += 1;
      return n;
    },
    open(req, reply, principal, revocations, ready) {
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache, no-transform", connection: "keep-alive", "x-accel-buffering": "no" });
      raw.write(`retry: 2000\nevent: ready\ndata: ${JSON.stringify(ready)}\n\n`);
      let isOpen = true;
      const endings: Array<() => void> = [];
      const stillValid = (): boolean => principal.expiresAt * 1000 > Date.now() && !revocations.has(principal.jti) && !(principal.sid && revocations.has(principal.sid));
      const end = (reason?: string): void => {
        if (!isOpen) return;
        isOpen = false;
        open.delete(end);
        clearInterval(heartbeat);
        clearTimeout(expiry);
        if (reason) raw.write(`event: end\ndata: ${JSON.stringify({ reason })}\n\n`);
        raw.end();
        for (const fn of endings) {
          try {
            fn();
          } catch {
            // A failing clean-up must not keep the others from running.
          }
        }
      };
      const heartbeat = setInterval(() => (stillValid() ? raw.write(": ping\n\n") : end(SSE_TOKEN_REASON)), SSE_HEARTBEAT_MS);
      heartbeat.unref();
      // The stream ends when the token does; the client reconnects with a fresh one.
      const expiry = setTimeout(() => end("token expired"), Math.max(0, Math.min(principal.expiresAt * 1000 - Date.now(), 2 ** 31 - 1)));
      expiry.unref();
      open.set(end, principal.tenant);
      req.raw.on("close", () => end());
      return {
        get open() {
          return isOpen;
        },
        send(event, data, id) {
          if (!isOpen) return;
          if (!stillValid()) return end(SSE_TOKEN_REASON);
          // A client that stops reading must not make the gateway hold every event for it.
          if (raw.writableLength > SSE_MAX_BUFFERED_BYTES) return end(SSE_SLOW_CLIENT_REASON);
          raw.write(`${id !== undefined ? `id: ${id}\n` : ""}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
        },
        end,
        onEnd(fn) {
          if (isOpen) endings.push(fn);
          else fn();
        },
      };
    },
  };
  FEEDS.set(app, feeds);
  return feeds;
}
