import { readFileSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { ConfigError } from "../processors/index.js";
import type { SectionValidator } from "../processors/index.js";
import { compileSchema, durationMs, durationSchema, issue, pathAt } from "../streams/index.js";
import type { JsonSchema } from "../streams/index.js";
import { DEFAULT_AUTH_SWEEP_INTERVAL_MS } from "./auth-sweep.js";
import { DEFAULT_EXTERNAL_CLOCK_TOLERANCE_S } from "./tokens.js";
import type { ExternalIssuerOptions } from "./tokens.js";

/** `gateway.external_issuer` of `flexcore.yaml` (or the `FLEXCORE_EXTERNAL_*` variables), validated. */
export interface ExternalIssuerConfig {
  readonly issuer: string;
  readonly audience: string;
  /** Exactly one of `jwksUrl` and `publicKeyFile`. */
  readonly jwksUrl: string | undefined;
  /** Absolute path of a PEM public key file. */
  readonly publicKeyFile: string | undefined;
  readonly tenantClaim: string;
  readonly rolesClaim: string;
  /** Whether the issuer's `operator` role counts. */
  readonly grantsOperator: boolean;
  readonly typ: readonly string[] | undefined;
  readonly algorithms: readonly string[] | undefined;
  /** Seconds. */
  readonly clockToleranceSeconds: number;
}

/** The `gateway:` section of `flexcore.yaml`. */
export interface GatewayConfig {
  /** Accept this issuer's tokens instead of FlexCore's own (sign-in and refresh are then off). */
  readonly externalIssuer: ExternalIssuerConfig | undefined;
  /** How often expired sessions and revocations are removed from `flex_auth`, in ms; 0 turns it off. */
  readonly authSweepIntervalMs: number;
}

const EXTERNAL_KEYS = ["issuer", "audience", "jwks_url", "public_key_file", "tenant_claim", "roles_claim", "grants_operator", "typ", "algorithms", "clock_tolerance"] as const;
type ExternalKey = (typeof EXTERNAL_KEYS)[number];

/**
 * Environment variables of the external issuer, one per key of `gateway.external_issuer`
 * (`FLEXCORE_EXTERNAL_ISSUER`, `FLEXCORE_EXTERNAL_JWKS_URL`, ...). A variable that is set
 * overrides its key; lists (`typ`, `algorithms`) are comma-separated.
 */
export const EXTERNAL_ISSUER_ENV: Readonly<Record<ExternalKey, string>> = {
  issuer: "FLEXCORE_EXTERNAL_ISSUER",
  audience: "FLEXCORE_EXTERNAL_AUDIENCE",
  jwks_url: "FLEXCORE_EXTERNAL_JWKS_URL",
  public_key_file: "FLEXCORE_EXTERNAL_PUBLIC_KEY_FILE",
  tenant_claim: "FLEXCORE_EXTERNAL_TENANT_CLAIM",
  roles_claim: "FLEXCORE_EXTERNAL_ROLES_CLAIM",
  grants_operator: "FLEXCORE_EXTERNAL_GRANTS_OPERATOR",
  typ: "FLEXCORE_EXTERNAL_TYP",
  algorithms: "FLEXCORE_EXTERNAL_ALGORITHMS",
  clock_tolerance: "FLEXCORE_EXTERNAL_CLOCK_TOLERANCE",
};
const LISTS: ReadonlySet<ExternalKey> = new Set(["typ", "algorithms"]);

const CLAIM_SCHEMA: JsonSchema = { type: "string", pattern: "^[A-Za-z0-9_:./-]{1,128}$", expected: "a claim name (letters, digits, `_ : . / -`)" };
const STRING_LIST: JsonSchema = { anyOf: [{ type: "string", minLength: 1 }, { type: "array", minItems: 1, items: { type: "string", minLength: 1 } }], expected: "a string or a non-empty list of strings" };
const MAX_CLOCK_TOLERANCE_MS = 3_600_000;

/** Schema of `gateway.external_issuer` (a bare `clock_tolerance` number is seconds). */
export const EXTERNAL_ISSUER_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  required: ["issuer", "audience"],
  properties: {
    issuer: { type: "string", minLength: 1, expected: "the issuer (`iss`) of the tokens" },
    audience: { type: "string", minLength: 1, expected: "the audience (`aud`) the tokens are for" },
    jwks_url: { type: "string", format: "uri", pattern: "^https?://", expected: "an http(s) URL" },
    public_key_file: { type: "string", minLength: 1 },
    tenant_claim: { ...CLAIM_SCHEMA, default: "tenant" },
    roles_claim: { ...CLAIM_SCHEMA, default: "roles" },
    grants_operator: { type: "boolean", default: false, expected: "true or false: whether the issuer's `operator` role counts" },
    typ: STRING_LIST,
    algorithms: STRING_LIST,
    clock_tolerance: { anyOf: [{ type: "number", minimum: 0, maximum: MAX_CLOCK_TOLERANCE_MS / 1000 }, durationSchema(0)], default: DEFAULT_EXTERNAL_CLOCK_TOLERANCE_S, expected: "a duration (seconds, or \"500ms\", \"30s\", \"1m\"; at most 1h)" },
  },
  oneOf: [{ required: ["jwks_url"] }, { required: ["public_key_file"] }],
};

/** Schema of the `gateway:` section. */
export const GATEWAY_SCHEMA: JsonSchema = {
  type: "object",
  additionalProperties: false,
  default: {},
  properties: {
    external_issuer: EXTERNAL_ISSUER_SCHEMA,
    auth_sweep_interval: durationSchema(0, DEFAULT_AUTH_SWEEP_INTERVAL_MS),
  },
};

interface RawIssuer {
  issuer: string;
  audience: string;
  jwks_url?: string;
  public_key_file?: string;
  tenant_claim: string;
  roles_claim: string;
  grants_operator: boolean;
  typ?: string | string[];
  algorithms?: string | string[];
  clock_tolerance: number | string;
}

const sectionValidator = compileSchema<{ auth_sweep_interval: number | string }>({ ...GATEWAY_SCHEMA, properties: { ...(GATEWAY_SCHEMA.properties as object), external_issuer: {} } });
const issuerValidator = compileSchema<RawIssuer>(EXTERNAL_ISSUER_SCHEMA);

const list = (v: string | string[] | undefined): string[] | undefined => (v === undefined ? undefined : typeof v === "string" ? [v] : v);

function externalIssuer(raw: Record<string, unknown>, path: string, root: string): ExternalIssuerConfig {
  const checked = issuerValidator.check(raw, path);
  const issues = [...checked.issues];
  // The schema's oneOf (exactly one key source) reports at the object; name the key as users expect.
  const oneKey = issues.findIndex((i) => i.path === path);
  if (oneKey >= 0 && raw !== null && typeof raw === "object" && !Array.isArray(raw)) issues.splice(oneKey, 1, { path: pathAt(path, "jwks_url"), message: "give exactly one of jwks_url and public_key_file" });
  const o = checked.value;
  const toleranceMs = o === undefined ? 0 : typeof o.clock_tolerance === "number" ? o.clock_tolerance * 1000 : durationMs(o.clock_tolerance, pathAt(path, "clock_tolerance"), 0, issues);
  if (toleranceMs > MAX_CLOCK_TOLERANCE_MS) issues.push(issue(pathAt(path, "clock_tolerance"), "at most 1h", o?.clock_tolerance));
  if (o === undefined || issues.length > 0) throw new ConfigError(issues);
  const publicKeyFile = o.public_key_file === undefined ? undefined : isAbsolute(o.public_key_file) ? o.public_key_file : resolve(root, o.public_key_file);
  return { issuer: o.issuer, audience: o.audience, jwksUrl: o.jwks_url, publicKeyFile, tenantClaim: o.tenant_claim, rolesClaim: o.roles_claim, grantsOperator: o.grants_operator, typ: list(o.typ), algorithms: list(o.algorithms), clockToleranceSeconds: toleranceMs / 1000 };
}

/**
 * The validator of `gateway:`. The `FLEXCORE_EXTERNAL_*` variables of `env` override the keys
 * of `external_issuer` (and set up an external issuer on their own); relative key files are
 * read from `root`. Unknown keys are errors naming the key.
 */
export function gatewaySection(env: Readonly<Record<string, string | undefined>> = process.env, root = process.cwd()): SectionValidator<GatewayConfig> {
  return (raw, path) => {
    const checked = sectionValidator.check(raw ?? {}, path);
    const issues = [...checked.issues];
    const o = checked.value;
    const issuerPath = pathAt(path, "external_issuer");
    const fromFile = o === undefined || raw === undefined || raw === null ? undefined : ((raw as Record<string, unknown>).external_issuer as Record<string, unknown> | undefined);
    const fromEnv: Record<string, unknown> = {};
    for (const key of EXTERNAL_KEYS) {
      const value = env[EXTERNAL_ISSUER_ENV[key]];
      if (value === undefined || value === "") continue;
      fromEnv[key] = LISTS.has(key) ? value.split(",").map((v) => v.trim()).filter(Boolean) : key === "clock_tolerance" && /^\d+(\.\d+)?$/u.test(value) ? Number(value) : key === "grants_operator" && (value === "true" || value === "false") ? value === "true" : value;
    }
    const fileIsObject = fromFile !== null && typeof fromFile === "object" && !Array.isArray(fromFile);
    const merged = fromFile === undefined && Object.keys(fromEnv).length === 0 ? undefined : fileIsObject || fromFile === undefined ? { ...fromFile, ...fromEnv } : fromFile;
    // Name the variable in errors about a value that came from the environment.
    let externalIssuerConfig: ExternalIssuerConfig | undefined;
    try {
      externalIssuerConfig = merged === undefined ? undefined : externalIssuer(merged as Record<string, unknown>, issuerPath, root);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      issues.push(...err.issues.map((i) => {
        const key = EXTERNAL_KEYS.find((k) => i.path === pathAt(issuerPath, k) || i.path.startsWith(`${pathAt(issuerPath, k)}[`));
        return key !== undefined && key in fromEnv ? { ...i, path: `${i.path} (from ${EXTERNAL_ISSUER_ENV[key]})` } : i;
      }));
    }
    const authSweepIntervalMs = o === undefined ? 0 : durationMs(o.auth_sweep_interval, pathAt(path, "auth_sweep_interval"), 0, issues);
    if (issues.length > 0) throw new ConfigError(issues);
    return { externalIssuer: externalIssuerConfig, authSweepIntervalMs };
  };
}

/** Turns the validated section into gateway options, reading the public key file. @throws ConfigError when the file cannot be read */
export function externalIssuerOptions(config: ExternalIssuerConfig): ExternalIssuerOptions {
  let publicKey: string | undefined;
  if (config.publicKeyFile !== undefined) {
    try {
      publicKey = readFileSync(config.publicKeyFile, "utf8");
    } catch (err) {
      throw new ConfigError([{ path: "gateway.external_issuer.public_key_file", message: `cannot read ${config.publicKeyFile} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` }], undefined, { cause: err });
    }
  }
  return {
    issuer: config.issuer,
    audience: config.audience,
    ...(config.jwksUrl !== undefined ? { jwksUrl: config.jwksUrl } : {}),
    ...(publicKey !== undefined ? { publicKey } : {}),
    tenantClaim: config.tenantClaim,
    rolesClaim: config.rolesClaim,
    grantsOperator: config.grantsOperator,
    ...(config.typ ? { typ: config.typ } : {}),
    ...(config.algorithms ? { algorithms: config.algorithms } : {}),
    clockToleranceSeconds: config.clockToleranceSeconds,
  };
}
