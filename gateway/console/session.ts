/**
 * The signed-in user: tokens in memory, mirrored to `sessionStorage` so a reload keeps the
 * session. sessionStorage (not localStorage, not a cookie): it dies with the tab, is not
 * shared with other tabs (no two tabs racing to use one refresh token, which the gateway
 * treats as theft), and is never sent with a request, so no CSRF. Script on the page could
 * read it, which is why the page runs under a CSP that allows only its own script.
 */
export interface Session {
  readonly tenant: string;
  readonly username: string;
  readonly roles: readonly string[];
  readonly accessToken: string;
  readonly refreshToken: string | undefined;
  /** When the access token expires (ms since the epoch). */
  readonly expiresAt: number;
}

/** Where the session lives; pages subscribe to hear sign-in, refresh and sign-out. */
export interface SessionStore {
  get(): Session | undefined;
  /** `ended`: why the session ended without a sign-out (a refused refresh), shown on the sign-in page. */
  set(session: Session | undefined, ended?: Error): void;
  subscribe(listener: (session: Session | undefined, ended: Error | undefined) => void): () => void;
}

/** The `sessionStorage` key. */
export const SESSION_KEY = "flexcore.console.session";

function valid(x: unknown): x is Session {
  const s = x as Session;
  return typeof s === "object" && s !== null && typeof s.tenant === "string" && typeof s.username === "string" && Array.isArray(s.roles) && typeof s.accessToken === "string";
}

export function createSessionStore(storage: Storage | undefined = globalThis.sessionStorage): SessionStore {
  let current: Session | undefined;
  try {
    const saved: unknown = JSON.parse(storage?.getItem(SESSION_KEY) ?? "null");
    if (valid(saved)) current = saved;
  } catch {
    storage?.removeItem(SESSION_KEY);
  }
  const listeners = new Set<(session: Session | undefined, ended: Error | undefined) => void>();
  return {
    get: () => current,
    set(session, ended) {
      current = session;
      try {
        if (session) storage?.setItem(SESSION_KEY, JSON.stringify(session));
        else storage?.removeItem(SESSION_KEY);
      } catch {
        // Storage full or refused (private mode): the session still lives in memory.
      }
      for (const l of listeners) l(session, ended);
    },
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}
