import { createContext } from "preact";
import { useContext } from "preact/hooks";
import type { Api } from "./api.js";
import type { Session } from "./session.js";

/** What every page gets: the API and the signed-in user. */
export interface ConsoleContext {
  readonly api: Api;
  readonly session: Session;
}

export const Console = createContext<ConsoleContext | undefined>(undefined);

/** The API and session of the signed-in user (inside the layout only). */
export function useConsole(): ConsoleContext {
  const c = useContext(Console);
  if (!c) throw new Error("useConsole() outside the signed-in layout");
  return c;
}
