import { InvalidOptionError } from "./errors.js";

/**
 * One token of a KV key built from a name (tenant, user, workflow, run id, processor key):
 * the name's UTF-8 bytes in base64url, unpadded. NATS KV keys allow only `[-/_=.a-zA-Z0-9]`
 * and `.` separates tokens, so a name such as `acme+eu`, `run:1`, `a/b` or `工作流` cannot be
 * written as is; base64url uses only `[-_A-Za-z0-9]`, never `.`, and is one to one, so every
 * name has exactly one token and keys of different names never collide. Readable prefixes
 * (`def.`, `run.`, `user.`) stay in front of the tokens.
 *
 * This is the scheme `gateway/users.ts` has always used for `user.<tenant>.<username>`
 * keys, so those keys are unchanged.
 * @throws InvalidOptionError for a value that is not a non-empty string
 */
export function kvKeyToken(value: string): string {
  if (typeof value !== "string" || value.length === 0) throw new InvalidOptionError("KV key name", value, "a non-empty string");
  return Buffer.from(value, "utf8").toString("base64url");
}

const TOKEN = /^[-_A-Za-z0-9]+$/;

/**
 * The name a {@link kvKeyToken} token was made from.
 * @throws InvalidOptionError for a token that is not base64url or does not decode to UTF-8 text
 */
export function fromKvKeyToken(token: string): string {
  if (typeof token !== "string" || !TOKEN.test(token)) throw new InvalidOptionError("KV key token", token, "a base64url token");
  const bytes = Buffer.from(token, "base64url");
  // Only canonical tokens decode: the round trip must give the token back.
  if (bytes.toString("base64url") !== token) throw new InvalidOptionError("KV key token", token, "a canonical base64url token");
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new InvalidOptionError("KV key token", token, "base64url of UTF-8 text");
  }
}
