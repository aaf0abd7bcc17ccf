/**
 * The `http-sink` plugin: sink `webhook`. Replies `{delivered: n}` where n counts the
 * leading events the endpoint confirmed (2xx). When the first event fails for good it
 * answers 400 (a 4xx from the endpoint: the host dead-letters) or 503 (retries spent: the
 * host retries later); when a later one fails, the events before it are reported delivered
 * and the host sends the rest again.
 */
import { Ajv2020 } from "ajv/dist/2020.js";
import type { ValidateFunction } from "ajv/dist/2020.js";
import { PluginInputError } from "../errors.js";
import { definePlugin } from "../sdk.js";
import type { Plugin } from "../sdk.js";
import { ServiceError } from "../service.js";
import { WEBHOOK_DEFAULTS, WEBHOOK_OPTIONS_SCHEMA, deliver } from "./webhook.js";
import type { WebhookOptions } from "./webhook.js";

let validator: ValidateFunction | undefined;

/** Checked options with defaults and the secret resolved. @throws PluginInputError naming the path */
export function resolveWebhookOptions(options: unknown, config: Readonly<Record<string, unknown>>): Required<Omit<WebhookOptions, "secretName">> {
  validator ??= new Ajv2020({ strict: true, strictRequired: false, allErrors: false }).compile(WEBHOOK_OPTIONS_SCHEMA);
  if (!validator(options)) {
    const e = validator.errors!.find((x) => x.keyword === "oneOf") ?? validator.errors![0]!;
    const p = e.params as { additionalProperty?: string; missingProperty?: string };
    const path = `options${e.instancePath.replace(/\//gu, ".")}${p.additionalProperty ? `.${p.additionalProperty}` : p.missingProperty ? `.${p.missingProperty}` : ""}`;
    throw new PluginInputError(`${path}: expected ${e.keyword === "oneOf" ? "exactly one of `secret` and `secretName`" : p.additionalProperty ? "no such key" : e.message ?? "a valid value"}`);
  }
  const o = options as WebhookOptions;
  let url: URL;
  try {
    url = new URL(o.url);
  } catch {
    throw new PluginInputError(`options.url: expected an http(s) URL, got ${JSON.stringify(o.url)}`);
  }
  if (url.username || url.password) throw new PluginInputError("options.url: expected no credentials in the URL (use the signature secret)");
  let secret = o.secret;
  if (o.secretName !== undefined) {
    const secrets = config.secrets as Record<string, unknown> | undefined;
    const s = secrets && Object.hasOwn(secrets, o.secretName) ? secrets[o.secretName] : undefined;
    if (typeof s !== "string" || s.length < 16) throw new PluginInputError(`options.secretName: expected the name of a secret of at least 16 characters in the plugin's config (secrets), got ${JSON.stringify(o.secretName)}`);
    secret = s;
  }
  const { secretName: _name, ...rest } = o;
  return { ...WEBHOOK_DEFAULTS, ...rest, url: url.href, secret: secret! };
}

/** Counters of one plugin process. */
export interface WebhookCounters {
  delivered: number;
  failed: number;
  requests: number;
}

/** The http-sink plugin definition. */
export function httpSinkPlugin(counters: WebhookCounters = { delivered: 0, failed: 0, requests: 0 }): Plugin {
  return definePlugin({
    name: "http-sink",
    version: "1.0.0",
    description: "Delivers events to a webhook: HMAC-SHA256 signed, the event id as idempotency key, retried with backoff.",
    protocols: [1],
    sinks: {
      webhook: {
        async deliver(req, { config, log }) {
          const o = resolveWebhookOptions(req.options, config);
          const outcome = await deliver(req.events, req.tenant, o);
          counters.delivered += outcome.delivered;
          counters.requests += outcome.requests;
          if (!outcome.error) return { delivered: outcome.delivered };
          counters.failed += 1;
          log.warn({ delivered: outcome.delivered, of: req.events.length, err: outcome.error.message, status: outcome.error.status }, "webhook delivery stopped");
          if (outcome.delivered > 0) return { delivered: outcome.delivered };
          if (outcome.error.permanent) throw new PluginInputError(`webhook refused: ${outcome.error.message}`);
          throw new ServiceError(503, `webhook unavailable: ${outcome.error.message}`);
        },
      },
    },
  });
}
