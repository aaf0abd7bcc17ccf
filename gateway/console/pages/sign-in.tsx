import { useState } from "preact/hooks";
import type { Api } from "../api.js";
import { ErrorBox } from "../error-box.js";

/** Sign-in with a user of the tenant (`POST /v1/auth/token`). */
export function SignIn({ api, notice }: { api: Api; notice?: Error | undefined }) {
  const [error, setError] = useState<Error | undefined>(notice);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    setBusy(true);
    setError(undefined);
    try {
      await api.signIn(String(form.get("tenant") ?? ""), String(form.get("username") ?? ""), String(form.get("password") ?? ""));
    } catch (err) {
      setError(err as Error);
      setBusy(false);
    }
  };
  return (
    <main id="main" class="sign-in">
      <h1>FlexCore console</h1>
      <form onSubmit={submit} aria-describedby="sign-in-help">
        <p id="sign-in-help">Sign in with a user of your tenant (an operator adds users with <code>flexcore users add</code>).</p>
        <label for="tenant">Tenant</label>
        <input id="tenant" name="tenant" required maxLength={64} autoComplete="organization" autoFocus />
        <label for="username">Username</label>
        <input id="username" name="username" required maxLength={64} autoComplete="username" />
        <label for="password">Password</label>
        <input id="password" name="password" type="password" required maxLength={1024} autoComplete="current-password" />
        <ErrorBox error={error} />
        <button type="submit" disabled={busy}>{busy ? "Signing in…" : "Sign in"}</button>
      </form>
    </main>
  );
}
