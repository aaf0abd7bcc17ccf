/**
 * Errors raised by the `plugins/` area. Each extends {@link FlexError} and carries a stable
 * `code` listed in `docs/errors.md`; callers branch on `code` or `instanceof`, never on the
 * message. Three parts of the plugin host add their own block here.
 */
import { describeValue, FlexError } from "../streams/index.js";

// ---------------------------------------------------------------------------------------
// Manifest, bundles and signatures (manifest.ts, bundle.ts)
// ---------------------------------------------------------------------------------------

/** One problem of a plugin manifest: where, what was found, what was expected. */
export interface ManifestIssue {
  /** Dotted path into the manifest, e.g. `capabilities.processors[0].options`; `""` for the whole document. */
  readonly path: string;
  /** The value found there (`undefined` when the key is missing). */
  readonly value: unknown;
  /** What was expected, in words. */
  readonly expected: string;
}

function issueLine(i: ManifestIssue): string {
  return `expected \`${i.path || "(manifest)"}\` to be ${i.expected}, got ${describeValue(i.value)}`;
}

/**
 * `flexcore-plugin.yaml` is not valid: YAML syntax, an unknown key, a wrong type, a bad
 * semver version or range, an embedded JSON Schema that does not compile. `issues` lists
 * every problem found; `path`, `value` and `expected` repeat the first one.
 */
export class ManifestError extends FlexError {
  readonly issues: readonly ManifestIssue[];
  readonly path: string;
  readonly value: unknown;
  readonly expected: string;
  /** The manifest file, when known. */
  readonly file: string | undefined;
  constructor(issues: readonly ManifestIssue[], file?: string, options?: { cause?: unknown }) {
    const first = issues[0] ?? { path: "", value: undefined, expected: "a plugin manifest" };
    const head = `Invalid plugin manifest${file ? ` ${file}` : ""}`;
    const message = issues.length <= 1 ? `${head}: ${issueLine(first)}` : `${head}:\n  ${issues.map(issueLine).join("\n  ")}`;
    super("FLEX_PLUGIN_MANIFEST", message, options);
    this.name = "ManifestError";
    this.issues = issues.length > 0 ? issues : [first];
    this.path = first.path;
    this.value = first.value;
    this.expected = first.expected;
    this.file = file;
  }
}

/**
 * The plugin cannot run on this FlexCore: its `flexcore` range excludes this version, or its
 * `protocols` share none with the host's. `field` is `flexcore` or `protocols`.
 */
export class PluginIncompatibleError extends FlexError {
  readonly plugin: string;
  readonly field: "flexcore" | "protocols";
  readonly value: unknown;
  readonly expected: string;
  constructor(plugin: string, field: "flexcore" | "protocols", value: unknown, expected: string) {
    super("FLEX_PLUGIN_INCOMPATIBLE", `Plugin \`${plugin}\` is incompatible: expected \`${field}\` to be ${expected}, got ${describeValue(typeof value === "object" && value !== null ? JSON.stringify(value) : value)}`);
    this.name = "PluginIncompatibleError";
    this.plugin = plugin;
    this.field = field;
    this.value = value;
    this.expected = expected;
  }
}

/**
 * A bundle's files do not match its `flexcore-plugin.sum`: a changed, extra or missing file,
 * a symlink or special file, a path escaping the bundle, a malformed or stale sum file.
 * `file` names the bundle-relative path concerned (`""` for the bundle as a whole).
 */
export class ChecksumError extends FlexError {
  readonly bundle: string;
  readonly file: string;
  readonly reason: string;
  constructor(bundle: string, file: string, reason: string, options?: { cause?: unknown }) {
    super("FLEX_PLUGIN_CHECKSUM", `Plugin bundle ${bundle} refused${file ? ` at \`${file}\`` : ""}: ${reason}`, options);
    this.name = "ChecksumError";
    this.bundle = bundle;
    this.file = file;
    this.reason = reason;
  }
}

/**
 * A bundle's `flexcore-plugin.sig` is missing, malformed, does not verify, or was made by a
 * key that is not among the operator's trusted keys (or the trusted keys cannot be read
 * safely), and the plugin's name is not in `allowUnsigned`.
 */
export class SignatureError extends FlexError {
  readonly bundle: string;
  /** The plugin's name when the manifest was read, else `undefined`. */
  readonly plugin: string | undefined;
  readonly reason: string;
  constructor(bundle: string, plugin: string | undefined, reason: string, options?: { cause?: unknown }) {
    super("FLEX_PLUGIN_SIGNATURE", `Plugin bundle ${bundle}${plugin ? ` (\`${plugin}\`)` : ""} refused: ${reason}`, options);
    this.name = "SignatureError";
    this.bundle = bundle;
    this.plugin = plugin;
    this.reason = reason;
  }
}

/** A bundle holds more files or bytes than the limits allow (`limit` names which). Nothing was installed. */
export class BundleTooLargeError extends FlexError {
  readonly bundle: string;
  readonly limit: "maxFiles" | "maxBytes" | "maxFileBytes";
  readonly max: number;
  constructor(bundle: string, limit: "maxFiles" | "maxBytes" | "maxFileBytes", max: number, what: string) {
    super("FLEX_PLUGIN_TOO_LARGE", `Plugin bundle ${bundle} refused: ${what}; the limit \`${limit}\` is ${max}`);
    this.name = "BundleTooLargeError";
    this.bundle = bundle;
    this.limit = limit;
    this.max = max;
  }
}
