/**
 * The gateway's API as the console uses it: relative URLs (the page is `/console/`, the API
 * is `../v1/...`), the access token as a bearer, one refresh through `/v1/auth/refresh` when
 * a call answers 401 (concurrent calls share it), and the gateway's coded errors as
 * {@link ApiError}s that pages show to the user.
 */
import type { Session, SessionStore } from "./session.js";

/** An error to show: the gateway's `code` and message, or a local one (`NETWORK`, `HTTP_<status>`). */
export class ApiError extends Error {
  readonly code: string;
  readonly status: number;
  readonly details: unknown;
  constructor(code: string, status: number, message: string, details?: unknown) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.status = status;
    this.details = details;
  }
}

export interface Api {
  get<T>(path: string): Promise<T>;
  post<T>(path: string, body?: unknown): Promise<T>;
  /** Signs in, reads who the token says the user is, and stores the session. */
  signIn(tenant: string, username: string, password: string): Promise<Session>;
  /** Ends the session on the gateway (best effort) and forgets it here. */
  signOut(): Promise<void>;
  // Event explorer: live feeds (server-sent events) need the bearer, which EventSource cannot send.
  /** A GET answered as a stream (server-sent events): the bearer, one refresh on 401, coded errors; read `body` yourself. */
  stream(path: string, headers?: Readonly<Record<string, string>>, signal?: AbortSignal): Promise<Response>;
  /** A POST answered as a stream of server-sent events (the operator's rebuild): as {@link Api.stream}. */
  streamPost(path: string, body?: unknown, signal?: AbortSignal): Promise<Response>;
  // console pages: processors, workflows, dead letters, users (issue #16 part 2c)
  patch<T>(path: string, body: unknown): Promise<T>;
  /** DELETE; resolves to undefined on 204. */
  del<T = undefined>(path: string): Promise<T>;
  /** POST of text of a media type, sent as is (a YAML workflow definition). */
  postText<T>(path: string, text: string, type: string): Promise<T>;
}

interface TokenPair {
  readonly access_token: string;
  readonly expires_in: number;
  readonly refresh_token?: string;
}

async function errorOf(res: Response): Promise<ApiError> {
  const body = (await res.json().catch(() => undefined)) as { error?: { code?: string; message?: string; details?: unknown } } | undefined;
  const e = body?.error;
  if (e?.code) return new ApiError(e.code, res.status, e.message ?? res.statusText, e.details);
  return new ApiError(`HTTP_${res.status}`, res.status, `The gateway answered ${res.status} ${res.statusText}`);
}

export function createApi(store: SessionStore, base: URL = new URL("../", globalThis.location.href)): Api {
  const url = (path: string): string => new URL(path.replace(/^\//u, ""), base).href;
  const send = async (method: string, path: string, body: unknown, token: string | undefined, extra?: Readonly<Record<string, string>>, signal?: AbortSignal): Promise<Response> => {
    const headers: Record<string, string> = { accept: "application/json", ...extra };
    if (token) headers.authorization = `Bearer ${token}`;
    // A `content-type` in `extra` sends the body as that text, as is (YAML definitions); else JSON.
    const asText = extra?.["content-type"] !== undefined;
    if (body !== undefined && !asText) headers["content-type"] = "application/json";
    try {
      return await fetch(url(path), { method, headers, ...(body !== undefined ? { body: asText ? String(body) : JSON.stringify(body) } : {}), ...(signal ? { signal } : {}), credentials: "omit", cache: "no-store" });
    } catch (err) {
      if (signal?.aborted) throw err;
      throw new ApiError("NETWORK", 0, `The gateway could not be reached: ${(err as Error).message}`);
    }
  };
  const sessionFrom = (pair: TokenPair, who: { tenant: string; subject: string; roles: string[] }): Session => ({
    tenant: who.tenant,
    username: who.subject,
    roles: who.roles,
    accessToken: pair.access_token,
    refreshToken: pair.refresh_token,
    expiresAt: Date.now() + pair.expires_in * 1000,
  });

  let refreshing: Promise<Session> | undefined;
  const refresh = (old: Session): Promise<Session> => {
    refreshing ??= (async () => {
      if (!old.refreshToken) throw new ApiError("FLEX_UNAUTHENTICATED", 401, "Your session expired; sign in again");
      const res = await send("POST", "/v1/auth/refresh", { refresh_token: old.refreshToken }, undefined);
      if (!res.ok) throw await errorOf(res);
      const pair = (await res.json()) as TokenPair;
      const next: Session = { ...old, accessToken: pair.access_token, refreshToken: pair.refresh_token, expiresAt: Date.now() + pair.expires_in * 1000 };
      store.set(next);
      return next;
    })().finally(() => (refreshing = undefined));
    return refreshing;
  };

  const authed = async (method: string, path: string, body?: unknown, extra?: Readonly<Record<string, string>>, signal?: AbortSignal): Promise<Response> => {
    let session = store.get();
    let res = await send(method, path, body, session?.accessToken, extra, signal);
    if (res.status === 401 && session) {
      try {
        session = await refresh(session);
      } catch (err) {
        store.set(undefined, err as Error);
        throw err;
      }
      res = await send(method, path, body, session.accessToken, extra, signal);
      if (res.status === 401) {
        const err = await errorOf(res);
        store.set(undefined, err);
        throw err;
      }
    }
    if (!res.ok) throw await errorOf(res);
    return res;
  };

  const call = async <T>(method: string, path: string, body?: unknown, type?: string): Promise<T> => {
    const res = await authed(method, path, body, type ? { "content-type": type } : undefined);
    if (res.status === 204) return undefined as T;
    return (await res.json()) as T;
  };

  return {
    get: (path) => call("GET", path),
    stream: (path, headers, signal) => authed("GET", path, undefined, { accept: "text/event-stream", ...headers }, signal),
    streamPost: (path, body, signal) => authed("POST", path, body ?? {}, { accept: "text/event-stream" }, signal),
    post: (path, body) => call("POST", path, body ?? {}),
    // console pages: processors, workflows, dead letters, users (issue #16 part 2c)
    patch: (path, body) => call("PATCH", path, body),
    del: (path) => call("DELETE", path),
    postText: (path, text, type) => call("POST", path, text, type),
    async signIn(tenant, username, password) {
      const res = await send("POST", "/v1/auth/token", { tenant, username, password }, undefined);
      if (!res.ok) throw await errorOf(res);
      const pair = (await res.json()) as TokenPair;
      const me = await send("GET", "/v1/auth/me", undefined, pair.access_token);
      if (!me.ok) throw await errorOf(me);
      const session = sessionFrom(pair, (await me.json()) as { tenant: string; subject: string; roles: string[] });
      store.set(session);
      return session;
    },
    async signOut() {
      const session = store.get();
      store.set(undefined);
      if (session) await send("POST", "/v1/auth/logout", undefined, session.accessToken).catch(() => undefined);
    },
  };
}
