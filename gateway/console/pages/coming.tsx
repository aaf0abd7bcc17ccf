import type { PageEntry } from "./index.js";

/** A page listed in the nav but not built yet. */
export function Coming({ page }: { page: PageEntry }) {
  return (
    <section aria-labelledby="page-title">
      <h1 id="page-title" tabIndex={-1}>{page.title}</h1>
      <p>This page is coming. Until then, the gateway's API (<a href="../docs">/docs</a>) and the <code>flexcore</code> command do what it will do.</p>
    </section>
  );
}
