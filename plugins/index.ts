/**
 * The plugin host's public face. Three parts add to it; each keeps its own block.
 */

// Manifest, bundles, signatures and the content-addressed install.
export {
  checkCompatible,
  compileEmbeddedSchema,
  DEFAULT_PLUGIN_LIMITS,
  flexcoreVersion,
  HOST_PROTOCOLS,
  MANIFEST_FILE,
  MANIFEST_SCHEMA_FILE,
  MANIFEST_SCHEMA_ID,
  manifestSchema,
  MAX_MANIFEST_BYTES,
  parseManifest,
  readManifestDocument,
  RESERVED_ENV_PREFIX,
  validateManifest,
} from "./manifest.js";
export type { EndpointCapability, ManifestOptions, PluginLimits, PluginManifest, ProcessorCapability, StepCapability } from "./manifest.js";
export { BundleTooLargeError, ChecksumError, ManifestError, PluginIncompatibleError, SignatureError } from "./errors.js";
export type { ManifestIssue } from "./errors.js";
export {
  commandFile,
  DEFAULT_BUNDLE_LIMITS,
  install,
  keygen,
  keyId,
  loadTrustedKeys,
  pack,
  PRIVATE_KEY_SUFFIX,
  PUBLIC_KEY_SUFFIX,
  sign,
  SIG_FILE,
  SUM_FILE,
  uninstall,
  verify,
  writeKeyPair,
} from "./bundle.js";
export type { BundleLimits, BundleOptions, InstalledBundle, KeyPair, PackResult, VerifiedBundle, VerifyOptions } from "./bundle.js";
