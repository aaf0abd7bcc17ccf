import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The FlexCore checkout or package root (the folder holding package.json), from source or dist/. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "nats.conf"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("Cannot find the FlexCore project root (package.json beside nats.conf)");
    dir = parent;
  }
}
