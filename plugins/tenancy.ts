/**
 * Per-tenant instances of `tenancy: tenant` plugins: one supervised instance set per tenant,
 * registered as the NATS service `<name>_<tenant>`, with its own NATS user, uid, lease and
 * restarts, so one tenant's data never reaches a process that serves another tenant.
 */
import { InvalidOptionError } from "../streams/index.js";
import { PLUGIN_NAME_PATTERN } from "./protocol.js";

/** Between a plugin's name and its tenant in a tenant instance's service name (plugin names have no `_`). */
export const TENANT_SERVICE_SEPARATOR = "_";

/**
 * A tenant that can have plugin instances: its name must fit, unchanged, in a NATS service
 * name (`[A-Za-z0-9_-]`), a subject token, a `flex_leases` key and a file name. Tenants named
 * otherwise (other characters, over 64) are refused rather than encoded, so the service,
 * the NATS user, the lease and the log prefix all read as the tenant's name.
 */
export const PLUGIN_TENANT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/u;

/** A managed plugin's service name: `<name>` (system), `<name>--b` (upgrade slot) or `<name>_<tenant>` (tenant instance). */
export const PLUGIN_SERVICE_PATTERN = /^[a-z][a-z0-9-]{1,39}(?:_[A-Za-z0-9][A-Za-z0-9_-]{0,63})?$/u;

/** The tenant a plugin serves (the handshake's `FLEXCORE_PLUGIN_TENANT`). */
export const PLUGIN_TENANT_ENV = "FLEXCORE_PLUGIN_TENANT";

/** @throws InvalidOptionError unless `tenant` matches {@link PLUGIN_TENANT_PATTERN} */
export function checkPluginTenant(tenant: unknown, field = "tenant"): string {
  if (typeof tenant !== "string" || !PLUGIN_TENANT_PATTERN.test(tenant)) {
    throw new InvalidOptionError(field, tenant, "a tenant name that fits a NATS service name: a letter or digit, then up to 63 letters, digits, `-` or `_`");
  }
  return tenant;
}

/** The service name of `plugin`'s instance for `tenant`: `<plugin>_<tenant>`. */
export function tenantServiceName(plugin: string, tenant: string): string {
  if (!PLUGIN_NAME_PATTERN.test(plugin)) throw new InvalidOptionError("plugin", plugin, "a plugin name: a lowercase letter, then 1 to 39 lowercase letters, digits or `-`");
  return `${plugin}${TENANT_SERVICE_SEPARATOR}${checkPluginTenant(tenant)}`;
}

/** Splits a service name into its plugin and, for a tenant instance, its tenant. */
export function parseServiceName(service: string): { readonly plugin: string; readonly tenant: string | undefined } {
  const at = service.indexOf(TENANT_SERVICE_SEPARATOR);
  return at === -1 ? { plugin: service, tenant: undefined } : { plugin: service.slice(0, at), tenant: service.slice(at + 1) };
}

/** @throws InvalidOptionError unless `service` matches {@link PLUGIN_SERVICE_PATTERN} */
export function checkServiceName(service: unknown, field = "service"): string {
  if (typeof service !== "string" || !PLUGIN_SERVICE_PATTERN.test(service)) {
    throw new InvalidOptionError(field, service, "a plugin service name: a plugin name (a lowercase letter, then 1 to 39 lowercase letters, digits or `-`), optionally followed by `_<tenant>`");
  }
  return service;
}
