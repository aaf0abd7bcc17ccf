import type { ApiError } from "./api.js";

/** An error as the user sees it: its code (to look up in docs/errors.md) and message. */
export function ErrorBox({ error }: { error: ApiError | Error | undefined }) {
  if (!error) return null;
  const code = (error as ApiError).code;
  return (
    <div class="error" role="alert">
      {code ? <code class="code">{code}</code> : null} {error.message}
    </div>
  );
}
