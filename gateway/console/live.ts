/**
 * Live feeds (server-sent events) read through `fetch`, because `EventSource` cannot send the
 * bearer token and the console keeps tokens out of URLs and cookies. A feed reconnects after
 * the gateway ends it (token expiry, shutdown) or the network drops, resuming after the last
 * event id it saw.
 */
import { useEffect, useState } from "preact/hooks";
import type { Api, ApiError } from "./api.js";

/** One server-sent event. */
export interface SseMessage {
  readonly event: string;
  readonly id: string | undefined;
  readonly data: unknown;
}

/** Delay before a feed reconnects, in ms (the gateway's `retry:`). */
export const RECONNECT_MS = 2_000;

/** Splits a server-sent event stream into messages; keeps a partial block for the next chunk. */
export function parseSse(buffer: string): { messages: SseMessage[]; rest: string } {
  const messages: SseMessage[] = [];
  const blocks = buffer.replace(/\r\n/gu, "\n").split("\n\n");
  const rest = blocks.pop() ?? "";
  for (const block of blocks) {
    let event = "message";
    let id: string | undefined;
    const data: string[] = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      const value = colon === -1 ? "" : line.slice(colon + 1).replace(/^ /u, "");
      if (field === "event") event = value;
      else if (field === "id") id = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0) continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(data.join("\n"));
    } catch {
      parsed = data.join("\n");
    }
    messages.push({ event, id, data: parsed });
  }
  return { messages, rest };
}

/** What {@link useLiveFeed} reports. */
export type FeedState = "off" | "connecting" | "live" | "reconnecting";

/**
 * Follows `path` while it is not undefined: calls `onMessage` for each event, reconnects with
 * `Last-Event-ID` after an end or a drop. A refused feed (4xx) stops with the error.
 */
export function useLiveFeed(api: Api, path: string | undefined, onMessage: (m: SseMessage) => void): { state: FeedState; error: ApiError | undefined } {
  const [state, setState] = useState<FeedState>("off");
  const [error, setError] = useState<ApiError | undefined>();
  useEffect(() => {
    if (path === undefined) {
      setState("off");
      return undefined;
    }
    const abort = new AbortController();
    let lastId: string | undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    setError(undefined);
    const connect = async (): Promise<void> => {
      setState(lastId === undefined ? "connecting" : "reconnecting");
      try {
        const res = await api.stream(path, lastId !== undefined ? { "last-event-id": lastId } : {}, abort.signal);
        const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const { messages, rest } = parseSse(buffer + value);
          buffer = rest;
          for (const m of messages) {
            if (m.id !== undefined) lastId = m.id;
            if (m.event === "ready") setState("live");
            onMessage(m);
          }
        }
      } catch (err) {
        if (abort.signal.aborted) return;
        const e = err as ApiError;
        // A refusal will not change by retrying (bad filter, roles, too many feeds).
        if (e.status >= 400 && e.status < 500) {
          setError(e);
          setState("off");
          return;
        }
      }
      if (abort.signal.aborted) return;
      setState("reconnecting");
      timer = setTimeout(() => void connect(), RECONNECT_MS);
    };
    void connect();
    return () => {
      abort.abort();
      clearTimeout(timer);
    };
    // onMessage is read on each event; a new function does not reconnect.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [api, path]);
  return { state, error };
}
