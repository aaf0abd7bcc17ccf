import { closeSync, fsyncSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { processAlive } from "../streams/index.js";
import { ProjectionLockedError } from "./errors.js";

/**
 * Which database file serves a projection. Each projection has its own files under
 * `<dataDir>/projections/`: `<name>.<generation>.db` (plus SQLite's `-wal`/`-shm`), and
 * `<name>.json` naming the generation that serves reads. A rebuild writes the next
 * generation beside the served one and switches the manifest when it has caught up.
 */
export interface Manifest {
  readonly name: string;
  /** Projection version the served generation was built with. */
  readonly version: number;
  readonly generation: number;
  /** File name (relative to the projections directory). */
  readonly file: string;
}

/** Folder of the read-model databases inside a data directory. */
export const PROJECTIONS_DIR = "projections";
const LOCK_FILE = "engine.lock";

export function projectionsDir(dataDir: string): string {
  return join(dataDir, PROJECTIONS_DIR);
}

export function generationFile(name: string, generation: number): string {
  return `${name}.${generation}.db`;
}

export function readManifest(dir: string, name: string): Manifest | undefined {
  try {
    const m = JSON.parse(readFileSync(join(dir, `${name}.json`), "utf8")) as Manifest;
    if (m.name !== name || !Number.isInteger(m.generation) || typeof m.file !== "string") return undefined;
    return m;
  } catch {
    return undefined;
  }
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Writes a manifest atomically (temp file, fsync, rename, fsync of the folder). */
export function writeManifest(dir: string, m: Manifest): void {
  const tmp = join(dir, `${m.name}.json.tmp`);
  const fd = openSync(tmp, "w");
  try {
    writeSync(fd, `${JSON.stringify(m, null, 2)}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, join(dir, `${m.name}.json`));
  fsyncDir(dir);
}

/** Deletes a database file with its WAL and shared-memory files. */
export function removeDatabase(dir: string, file: string): void {
  for (const suffix of ["", "-wal", "-shm", "-journal"]) rmSync(join(dir, `${file}${suffix}`), { force: true });
}

/** Generations of `name` on disk, as file names. */
export function generationsOnDisk(dir: string, name: string): string[] {
  const pattern = new RegExp(`^${name}\\.(\\d+)\\.db$`, "u");
  return readdirSync(dir).filter((f) => pattern.test(f));
}

/** Highest generation number on disk (0 if none). */
export function lastGeneration(dir: string, name: string): number {
  return generationsOnDisk(dir, name).reduce((max, f) => Math.max(max, Number(f.split(".")[1])), 0);
}

// Lock files this process holds: a second engine in the same process is refused too.
const held = new Set<string>();

/**
 * Takes the directory for this process: one engine writes a set of read models at a time.
 * A lock left by a dead process (kill -9) is taken over.
 * @throws ProjectionLockedError when a live process holds it
 */
export function acquireLock(dir: string): () => void {
  const file = join(dir, LOCK_FILE);
  if (held.has(file)) throw new ProjectionLockedError(dir, process.pid);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: "wx" });
      held.add(file);
      return () => {
        held.delete(file);
        try {
          if (readFileSync(file, "utf8") === String(process.pid)) rmSync(file, { force: true });
        } catch {
          // already gone
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const pid = Number(readFileSync(file, "utf8").trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) throw new ProjectionLockedError(dir, pid);
      rmSync(file, { force: true });
    }
  }
  throw new ProjectionLockedError(dir, -1);
}

/** The pid holding the directory, if a live process does. */
export function lockHolder(dir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dir, LOCK_FILE), "utf8").trim());
    return Number.isInteger(pid) && pid > 0 && processAlive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}
