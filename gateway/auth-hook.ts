/**
 * The authentication hook of every route with a policy: reads the bearer token, verifies it
 * (a token already verified costs no promise), checks the principal's roles against the
 * route's policy and the body's media type, and sets `request.principal`, whose tenant every
 * route uses. Without a verifier (`auth: false`), every request is {@link NO_AUTH_TENANT}'s.
 */
import type { FastifyRequest, onRequestHookHandler } from "fastify";
import { ForbiddenError, TokenTooLargeError, UnauthenticatedError, UnsupportedMediaTypeError } from "./errors.js";
import { POLICY, ROLES } from "./policy.js";
import type { PolicyName } from "./policy.js";
import { MAX_TOKEN_BYTES } from "./tokens.js";
import type { Principal, TokenVerifier } from "./tokens.js";

/** Tenant of every request when `auth` is false. */
export const NO_AUTH_TENANT = "public";

const PUBLIC_PRINCIPAL: Principal = { tenant: NO_AUTH_TENANT, subject: "anonymous", roles: [...ROLES], jti: "none", sid: undefined, expiresAt: Number.MAX_SAFE_INTEGER };

function hasBody(request: FastifyRequest): boolean {
  return request.headers["transfer-encoding"] !== undefined || (request.headers["content-length"] !== undefined && request.headers["content-length"] !== "0");
}

/** The hook factory: one hook per route, for its policy and accepted media types; `verifier` undefined turns authentication off. */
export function createAuthHook(verifier: TokenVerifier | undefined): (policy: PolicyName, accepts: readonly string[] | undefined) => onRequestHookHandler {
return (policy: PolicyName, accepts: readonly string[] | undefined): onRequestHookHandler => {
  const allowed = new Set<string>(POLICY[policy]);
  const admit = (request: FastifyRequest, principal: Principal): void => {
    if (!principal.roles.some((r) => allowed.has(r))) throw new ForbiddenError(policy, POLICY[policy], principal.roles);
    request.principal = principal;
    if (accepts && hasBody(request)) {
      const type = request.headers["content-type"]?.split(";")[0]?.trim().toLowerCase();
      if (!type || !accepts.includes(type)) throw new UnsupportedMediaTypeError(request.headers["content-type"], accepts);
    }
  };
  // Callback style, so a token already in the cache costs no promise: most requests.
  return (request, _reply, done) => {
    try {
      if (!verifier) {
        admit(request, PUBLIC_PRINCIPAL);
        return done();
      }
      const header = request.headers.authorization;
      if (header === undefined) throw new UnauthenticatedError("missing Authorization: Bearer <token>");
      if (header.length > MAX_TOKEN_BYTES + 7) throw new TokenTooLargeError(header.length, MAX_TOKEN_BYTES);
      if (header.length < 8 || header.slice(0, 7).toLowerCase() !== "bearer ") throw new UnauthenticatedError("expected Authorization: Bearer <token>");
      const token = header.slice(7).trim();
      const cached = verifier.verifyCached(token);
      if (cached) {
        admit(request, cached);
        return done();
      }
      verifier.verify(token).then((principal) => {
        admit(request, principal);
        done();
      }).catch((err: unknown) => done(err as Error));
    } catch (err) {
      done(err as Error);
    }
  };
};
}
