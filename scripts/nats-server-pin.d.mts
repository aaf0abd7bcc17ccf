// Types of nats-server-pin.mjs, for streams/server.ts.
export declare const PINNED_VERSION: string;
export declare const MIN_VERSION: string;
export declare const PINNED_DEB: Readonly<{ package: string; version: string; arch: string; file: string; sha256: string; source: string }>;
export declare const RELEASE_URL: string;
export declare function pinnedDir(env?: NodeJS.ProcessEnv): string;
export declare function pinnedBinary(env?: NodeJS.ProcessEnv): string;
export declare function installHint(env?: NodeJS.ProcessEnv): string;
export declare function compareVersions(a: string, b: string): number;
export declare function binaryVersion(binary: string, env?: NodeJS.ProcessEnv): string | undefined;
/** Where the binary came from: `NATS_SERVER_BIN`, the per-user cache, PATH (at the minimum or newer), or nowhere. */
export type NatsServerSource = "NATS_SERVER_BIN" | "pinned" | "system" | "none";
export interface ResolvedNatsServer {
  readonly binary: string;
  readonly source: NatsServerSource;
  /** Known without running it again (pinned, system). */
  readonly version?: string;
}
export declare function resolveNatsServer(env?: NodeJS.ProcessEnv): ResolvedNatsServer;
