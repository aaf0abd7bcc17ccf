/**
 * The console's API client (api.ts) against the real gateway and nats-server, in Node (its
 * fetch is the browser's): sign-in, coded errors, a refresh shared by concurrent calls (two
 * refreshes with one refresh token would look like theft and revoke every session), a
 * refused refresh that signs out, and sign-out revoking the token.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestGateway } from "../../test/gateway.js";
import type { TestGateway } from "../../test/gateway.js";
import { uniqueName } from "../../test/nats-server.js";
import { ApiError, createApi } from "./api.js";
import { createSessionStore } from "./session.js";

const A = uniqueName("apia");
const PASSWORD = "correct horse battery";
let t: TestGateway;

beforeAll(async () => {
  t = await startTestGateway();
  await t.gw.users.add(A, "rita", PASSWORD, ["reader"]);
});
afterAll(async () => t?.close());

const client = () => {
  const store = createSessionStore(undefined);
  return { store, api: createApi(store, new URL(`${t.url}/`)) };
};

describe("console api", () => {
  it("signs in: the session knows tenant, user and roles from /v1/auth/me", async () => {
    const { store, api } = client();
    const s = await api.signIn(A, "rita", PASSWORD);
    expect(s).toMatchObject({ tenant: A, username: "rita", roles: ["reader"] });
    expect(store.get()).toEqual(s);
    expect((await api.get<{ tenant: string }>("/v1/overview")).tenant).toBe(A);
  });

  it("turns the gateway's error body into an ApiError with its code", async () => {
    const { api } = client();
    await expect(api.signIn(A, "rita", "wrong")).rejects.toMatchObject({ name: "ApiError", code: "FLEX_INVALID_CREDENTIALS", status: 401 });
    await api.signIn(A, "rita", PASSWORD);
    const err = await api.get("/v1/users").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ code: "FLEX_FORBIDDEN", status: 403 });
  });

  it("refreshes once for concurrent calls with an expired token, and every call then succeeds", async () => {
    const { store, api } = client();
    const s = await api.signIn(A, "rita", PASSWORD);
    store.set({ ...s, accessToken: `${s.accessToken}x` });
    const all = await Promise.all([api.get<{ tenant: string }>("/v1/overview"), api.get<{ tenant: string }>("/v1/auth/me"), api.get<{ tenant: string }>("/v1/overview")]);
    expect(all.map((r) => r.tenant)).toEqual([A, A, A]);
    const now = store.get()!;
    expect(now.refreshToken).not.toBe(s.refreshToken);
    // Still a good session: the old refresh token was used once, not twice.
    expect((await api.get<{ tenant: string }>("/v1/auth/me")).tenant).toBe(A);
  });

  it("drops the session when the refresh is refused, with the refusal's code", async () => {
    const { store, api } = client();
    const s = await api.signIn(A, "rita", PASSWORD);
    store.set({ ...s, accessToken: "stale", refreshToken: "not-a-refresh-token" });
    const ended: Array<string | undefined> = [];
    store.subscribe((session, why) => ended.push(session ? "session" : (why as ApiError | undefined)?.code));
    await expect(api.get("/v1/overview")).rejects.toMatchObject({ code: "FLEX_REFRESH_INVALID", status: 401 });
    expect(store.get()).toBeUndefined();
    // The sign-in page is told why, with the code.
    expect(ended).toEqual(["FLEX_REFRESH_INVALID"]);
  });

  it("signs out: the access token is revoked on the gateway and forgotten here", async () => {
    const { store, api } = client();
    const s = await api.signIn(A, "rita", PASSWORD);
    const ended: unknown[] = [];
    store.subscribe((_session, why) => ended.push(why));
    await api.signOut();
    expect(ended).toEqual([undefined]);
    expect(store.get()).toBeUndefined();
    const me = await fetch(`${t.url}/v1/auth/me`, { headers: { authorization: `Bearer ${s.accessToken}` } });
    expect(me.status).toBe(401);
  });
});
