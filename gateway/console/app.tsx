import { useEffect, useMemo, useState } from "preact/hooks";
import { createApi } from "./api.js";
import { Console } from "./context.js";
import { Layout } from "./layout.js";
import { HOME, PAGES } from "./pages/index.js";
import { SignIn } from "./pages/sign-in.js";
import { can } from "./roles.js";
import { navigate, useRoute } from "./router.js";
import { createSessionStore } from "./session.js";
import type { Session } from "./session.js";

/** The console: sign-in until there is a session, then the layout with the routed page. */
export function App() {
  const store = useMemo(() => createSessionStore(), []);
  const api = useMemo(() => createApi(store), [store]);
  const [session, setSession] = useState<Session | undefined>(store.get());
  const [ended, setEnded] = useState<Error | undefined>();
  const route = useRoute();
  useEffect(() => store.subscribe((s, why) => {
    // A session that ended without a sign-out (refresh refused) says why on the sign-in page.
    setEnded(why ? Object.assign(new Error(`Your session ended: ${why.message}. Sign in again.`), { code: (why as { code?: string }).code }) : undefined);
    setSession(s);
  }), [store]);

  if (!session) return <SignIn api={api} notice={ended} />;
  if (route === "") {
    navigate(HOME);
    return null;
  }
  const page = PAGES.find((p) => p.route === route && (!p.requires || can(session.roles, p.requires)));
  const Page = page?.component;
  return (
    <Console.Provider value={{ api, session }}>
      <Layout route={route}>
        {page === undefined ? (
          <section>
            <h1 tabIndex={-1}>Not found</h1>
            <p>There is no page <code>{route}</code> for your roles.</p>
          </section>
        ) : Page ? <Page /> : null}
      </Layout>
    </Console.Provider>
  );
}
