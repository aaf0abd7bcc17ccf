import { readFileSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { array, at, collect, ConfigError, duration, fail, object, string } from "../processors/index.js";
import type { SectionValidator } from "../processors/index.js";
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

const EXTERNAL_KEYS = ["issuer", "audience", "jwks_url", "public_key_file", "tenant_claim", "roles_claim", "typ", "algorithms", "clock_tolerance"] as const;
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
  typ: "FLEXCORE_EXTERNAL_TYP",
  algorithms: "FLEXCORE_EXTERNAL_ALGORITHMS",
  clock_tolerance: "FLEXCORE_EXTERNAL_CLOCK_TOLERANCE",
};
const LISTS: ReadonlySet<ExternalKey> = new Set(["typ", "algorithms"]);

const CLAIM = { re: /^[A-Za-z0-9_:./-]{1,128}$/u, describe: "a claim name (letters, digits, `_ : . / -`)" };

function stringList(raw: unknown, path: string): string[] {
  if (typeof raw === "string") return [string(raw, path, "")];
  return array(raw, path, (v, p) => string(v, p, ""), { minLength: 1 });
}

function externalIssuer(raw: Record<string, unknown>, path: string, root: string): ExternalIssuerConfig {
  const [issuer, audience, jwksUrl, publicKeyFile, tenantClaim, rolesClaim, typ, algorithms, toleranceMs] = collect([
    () => string(raw.issuer ?? fail(at(path, "issuer"), "the issuer (`iss`) of the tokens", raw.issuer), at(path, "issuer"), ""),
    () => string(raw.audience ?? fail(at(path, "audience"), "the audience (`aud`) the tokens are for", raw.audience), at(path, "audience"), ""),
    () => {
      if (raw.jwks_url === undefined) return undefined;
      const url = string(raw.jwks_url, at(path, "jwks_url"), "");
      let ok = false;
      try {
        ok = ["https:", "http:"].includes(new URL(url).protocol);
      } catch {
        ok = false;
      }
      if (!ok) fail(at(path, "jwks_url"), "an http(s) URL", raw.jwks_url);
      return url;
    },
    () => {
      if (raw.public_key_file === undefined) return undefined;
      const file = string(raw.public_key_file, at(path, "public_key_file"), "");
      return isAbsolute(file) ? file : resolve(root, file);
    },
    () => string(raw.tenant_claim, at(path, "tenant_claim"), "tenant", CLAIM),
    () => string(raw.roles_claim, at(path, "roles_claim"), "roles", CLAIM),
    () => (raw.typ === undefined ? undefined : stringList(raw.typ, at(path, "typ"))),
    () => (raw.algorithms === undefined ? undefined : stringList(raw.algorithms, at(path, "algorithms"))),
    // A bare number is seconds here (clock skew is said in seconds); strings take units.
    () => duration(typeof raw.clock_tolerance === "number" ? raw.clock_tolerance * 1000 : raw.clock_tolerance, at(path, "clock_tolerance"), DEFAULT_EXTERNAL_CLOCK_TOLERANCE_S * 1000, 0),
  ] as const);
  if ((jwksUrl === undefined) === (publicKeyFile === undefined)) {
    throw new ConfigError([{ path: at(path, "jwks_url"), message: "give exactly one of jwks_url and public_key_file" }]);
  }
  if (toleranceMs > 3_600_000) fail(at(path, "clock_tolerance"), "at most 1h", raw.clock_tolerance);
  return { issuer, audience, jwksUrl, publicKeyFile, tenantClaim, rolesClaim, typ, algorithms, clockToleranceSeconds: toleranceMs / 1000 };
}

/**
 * The validator of `gateway:`. The `FLEXCORE_EXTERNAL_*` variables of `env` override the keys
 * of `external_issuer` (and set up an external issuer on their own); relative key files are
 * read from `root`. Unknown keys are errors naming the key.
 */
export function gatewaySection(env: Readonly<Record<string, string | undefined>> = process.env, root = process.cwd()): SectionValidator<GatewayConfig> {
  return (raw, path) => {
    const o = object(raw, path, ["external_issuer", "auth_sweep_interval"], true);
    const issuerPath = at(path, "external_issuer");
    const fromFile = o.external_issuer === undefined ? undefined : object(o.external_issuer, issuerPath, EXTERNAL_KEYS);
    const fromEnv: Record<string, unknown> = {};
    for (const key of EXTERNAL_KEYS) {
      const value = env[EXTERNAL_ISSUER_ENV[key]];
      if (value === undefined || value === "") continue;
      fromEnv[key] = LISTS.has(key) ? value.split(",").map((v) => v.trim()).filter(Boolean) : key === "clock_tolerance" && /^\d+(\.\d+)?$/u.test(value) ? Number(value) : value;
    }
    const merged = fromFile === undefined && Object.keys(fromEnv).length === 0 ? undefined : { ...fromFile, ...fromEnv };
    // Name the variable in errors about a value that came from the environment.
    let externalIssuerConfig: ExternalIssuerConfig | undefined;
    try {
      externalIssuerConfig = merged === undefined ? undefined : externalIssuer(merged, issuerPath, root);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      throw new ConfigError(err.issues.map((i) => {
        const key = EXTERNAL_KEYS.find((k) => i.path === at(issuerPath, k) || i.path.startsWith(`${at(issuerPath, k)}[`));
        return key !== undefined && key in fromEnv ? { ...i, path: `${i.path} (from ${EXTERNAL_ISSUER_ENV[key]})` } : i;
      }));
    }
    return {
      externalIssuer: externalIssuerConfig,
      authSweepIntervalMs: duration(o.auth_sweep_interval, at(path, "auth_sweep_interval"), DEFAULT_AUTH_SWEEP_INTERVAL_MS, 0),
    };
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
    ...(config.typ ? { typ: config.typ } : {}),
    ...(config.algorithms ? { algorithms: config.algorithms } : {}),
    clockToleranceSeconds: config.clockToleranceSeconds,
  };
}
