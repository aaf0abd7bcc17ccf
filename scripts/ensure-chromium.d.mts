// Types of ensure-chromium.mjs, for test/browser.ts.
export declare const DEFAULT_CHROMIUM: string;
export declare function chromiumPath(env?: NodeJS.ProcessEnv): string;
export declare function hasChromium(env?: NodeJS.ProcessEnv): boolean;
export declare function chromiumInstallHint(env?: NodeJS.ProcessEnv): string;
