/**
 * Hash routing (`/console/#/overview`): the server serves one page whatever the route, so
 * it needs no fallback route, and a reload keeps the page.
 */
import { useEffect, useState } from "preact/hooks";

/** The route of a location hash: `#/overview` → `overview`; empty → `""`. */
export function routeOf(hash: string): string {
  return hash.replace(/^#\/?/u, "").split("?")[0] ?? "";
}

/** The `href` of a route, for `<a>`. */
export function href(route: string): string {
  return `#/${route}`;
}

export function navigate(route: string): void {
  globalThis.location.hash = href(route);
}

/** The current route; re-renders on navigation. */
export function useRoute(): string {
  const [route, setRoute] = useState(() => routeOf(globalThis.location.hash));
  useEffect(() => {
    const on = (): void => setRoute(routeOf(globalThis.location.hash));
    globalThis.addEventListener("hashchange", on);
    return () => globalThis.removeEventListener("hashchange", on);
  }, []);
  return route;
}
