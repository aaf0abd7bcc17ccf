import type { ComponentChildren } from "preact";
import { useEffect, useRef } from "preact/hooks";
import { useConsole } from "./context.js";
import { PAGES } from "./pages/index.js";
import { can } from "./roles.js";
import { href } from "./router.js";

/** The frame of every signed-in page: tenant and user always visible, sign-out, nav, main. */
export function Layout({ route, children }: { route: string; children: ComponentChildren }) {
  const { api, session } = useConsole();
  const main = useRef<HTMLElement>(null);
  const first = useRef(true);
  // After a navigation, focus moves to the new page's heading so keyboard and screen-reader users start there.
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    (main.current?.querySelector("h1") ?? main.current)?.focus();
  }, [route]);
  return (
    <div class="layout">
      <button type="button" class="skip" onClick={() => main.current?.focus()}>Skip to content</button>
      <header class="top">
        <span class="brand">FlexCore console</span>
        <dl class="who" aria-label="Signed in as">
          <dt>Tenant</dt>
          <dd data-testid="tenant">{session.tenant}</dd>
          <dt>User</dt>
          <dd data-testid="user">{session.username}</dd>
          <dt>Roles</dt>
          <dd data-testid="roles">{session.roles.join(", ")}</dd>
        </dl>
        <button type="button" onClick={() => void api.signOut()}>Sign out</button>
      </header>
      <nav aria-label="Console pages">
        <ul>
          {PAGES.filter((p) => !p.requires || can(session.roles, p.requires)).map((p) => (
            <li key={p.route}>
              <a href={href(p.route)} aria-current={p.route === route ? "page" : undefined}>
                {p.title}
              </a>
            </li>
          ))}
        </ul>
      </nav>
      <main id="main" ref={main} tabIndex={-1}>
        {children}
      </main>
    </div>
  );
}
