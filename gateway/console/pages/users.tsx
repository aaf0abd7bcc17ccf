import { useState } from "preact/hooks";
import type { ApiError } from "../api.js";
import { Confirm } from "../confirm.js";
import { useConsole } from "../context.js";
import { ErrorBox } from "../error-box.js";
import { when } from "../json-view.js";
import { useLoad } from "../use-load.js";

interface User {
  readonly username: string;
  readonly roles: readonly string[];
  readonly createdAt: number;
  readonly updatedAt: number;
}

/** The roles a user can hold (gateway/policy.ts `ROLES`). */
const ROLES = ["admin", "writer", "reader"] as const;

/** The checked roles of a fieldset's `role` checkboxes. */
const checkedRoles = (form: HTMLFormElement): string[] => new FormData(form).getAll("role").map(String);

/** One user's roles, changed in place; saving ends the user's sessions (tokens carry roles). */
function RoleEditor({ user, self, onSaved }: { user: User; self: boolean; onSaved: (msg: string) => void }) {
  const { api } = useConsole();
  const [error, setError] = useState<ApiError | Error | undefined>();
  const save = async (e: Event): Promise<void> => {
    e.preventDefault();
    setError(undefined);
    const roles = checkedRoles(e.currentTarget as HTMLFormElement);
    if (roles.length === 0) {
      setError(new Error("Choose at least one role (to take every right away, delete the user)."));
      return;
    }
    try {
      await api.patch(`/v1/users/${encodeURIComponent(user.username)}`, { roles });
      onSaved(`${user.username} now has ${roles.join(", ")}; their sessions ended${self ? " (yours too: sign in again)" : ""}.`);
    } catch (err) {
      setError(err as ApiError);
    }
  };
  return (
    <form class="roles" onSubmit={save}>
      <fieldset>
        <legend class="sr-only">Roles of {user.username}</legend>
        {ROLES.map((r) => (
          <label key={r}><input type="checkbox" name="role" value={r} defaultChecked={user.roles.includes(r)} /> {r}</label>
        ))}
      </fieldset>
      <button type="submit" class="secondary">Save roles of {user.username}</button>
      <ErrorBox error={error} />
    </form>
  );
}

/** Users of the tenant (admins): list, add, change roles, delete. The gateway has no "disabled" state: delete ends every session at once. */
export function Users() {
  const { api, session } = useConsole();
  const users = useLoad("users", () => api.get<{ users: User[] }>("/v1/users"));
  const [done, setDone] = useState<string | undefined>();
  const [addError, setAddError] = useState<ApiError | Error | undefined>();
  const [removing, setRemoving] = useState<string | undefined>();
  const [removeError, setRemoveError] = useState<ApiError | undefined>();

  const add = async (e: Event): Promise<void> => {
    e.preventDefault();
    const form = e.currentTarget as HTMLFormElement;
    const data = new FormData(form);
    const roles = checkedRoles(form);
    setAddError(undefined);
    setDone(undefined);
    if (roles.length === 0) {
      setAddError(new Error("Choose at least one role."));
      return;
    }
    try {
      const u = await api.post<User>("/v1/users", { username: String(data.get("username") ?? ""), password: String(data.get("password") ?? ""), roles });
      setDone(`Added ${u.username} (${u.roles.join(", ")}).`);
      form.reset();
      users.reload();
    } catch (err) {
      setAddError(err as ApiError);
    }
  };
  const remove = async (username: string): Promise<void> => {
    setRemoving(undefined);
    setRemoveError(undefined);
    try {
      await api.del(`/v1/users/${encodeURIComponent(username)}`);
      setDone(`Deleted ${username}; their sessions ended.`);
      users.reload();
    } catch (err) {
      setRemoveError(err as ApiError);
    }
  };
  const saved = (msg: string): void => {
    setDone(msg);
    users.reload();
  };

  return (
    <section aria-labelledby="page-title">
      <h1 id="page-title" tabIndex={-1}>Users</h1>
      <p class="muted">Users of tenant <strong>{session.tenant}</strong>. A role change or a deletion ends the user's sessions at once.</p>
      <ErrorBox error={users.error} />
      {done ? <p role="status" class="done">{done}</p> : null}
      <ErrorBox error={removeError} />
      <table data-testid="user-table">
        <caption>Users</caption>
        <thead><tr><th scope="col">User</th><th scope="col">Roles</th><th scope="col">Added</th><th scope="col">Changed</th><th scope="col">Actions</th></tr></thead>
        <tbody>
          {(users.data?.users ?? []).map((u) => (
            <tr key={`${u.username}:${u.updatedAt}`}>
              <th scope="row">{u.username}{u.username === session.username ? <span class="muted"> (you)</span> : null}</th>
              {/* `operator` is the deployment's: the gateway refuses to change or remove its holders over HTTP. */}
              <td>{u.roles.includes("operator") ? <span>{u.roles.join(", ")} <span class="muted">(managed by the deployment's operator: <code>flexcore users roles</code>)</span></span> : <RoleEditor user={u} self={u.username === session.username} onSaved={saved} />}</td>
              <td>{when(u.createdAt)}</td>
              <td>{when(u.updatedAt)}</td>
              <td>{u.roles.includes("operator") ? <span class="muted">—</span> : <button type="button" class="danger" onClick={() => setRemoving(u.username)}>Delete {u.username}…</button>}</td>
            </tr>
          ))}
        </tbody>
      </table>

      <form class="panel add-user" onSubmit={add} aria-labelledby="add-title">
        <h2 id="add-title">Add a user</h2>
        <label for="new-username">Username</label>
        <input id="new-username" name="username" required maxLength={64} pattern="[A-Za-z0-9][A-Za-z0-9._@\-]*" autoComplete="off" aria-describedby="new-username-help" />
        <p id="new-username-help" class="muted">1 to 64 of A–Z a–z 0–9 . _ @ -, starting with a letter or digit.</p>
        <label for="new-password">Password</label>
        <input id="new-password" name="password" type="password" required minLength={8} maxLength={1024} autoComplete="new-password" />
        <fieldset>
          <legend>Roles</legend>
          {ROLES.map((r) => <label key={r}><input type="checkbox" name="role" value={r} defaultChecked={r === "reader"} /> {r}</label>)}
        </fieldset>
        <ErrorBox error={addError} />
        <button type="submit">Add user</button>
      </form>

      {removing === undefined ? null : (
        <Confirm title={`Delete ${removing}?`} action={`Delete ${removing}`} onConfirm={() => void remove(removing)} onCancel={() => setRemoving(undefined)}>
          <p>{removing} loses access at once: every session ends and their tokens stop working.{removing === session.username ? " This is you: you will be signed out." : ""}</p>
        </Confirm>
      )}
    </section>
  );
}
