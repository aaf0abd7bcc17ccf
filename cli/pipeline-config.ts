/**
 * The validated `flexcore.yaml` and what each area gets from `flexcore up` to start its
 * part. A module of its own so the areas' starters (cli/gateway.ts) do not import up.ts,
 * which imports them.
 */
import { availableParallelism } from "node:os";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { pipelineSections } from "../processors/index.js";
import type { ConfigSections, ProcessorRuntime } from "../processors/index.js";
import { workflowsSection } from "../workflows/index.js";
import { gatewaySection } from "../gateway/index.js";
import { pluginsSection, sinksSection, sourcesSection } from "../plugins/index.js";
import type { PluginEndpoints, PluginHost } from "../plugins/index.js";
import { projectRoot } from "./paths.js";

/** Something `flexcore up` started and stops on exit, last started first stopped. */
export interface Component {
  readonly name: string;
  close(): Promise<void>;
}

/** What each area gets to start its part of the pipeline. */
export interface UpContext {
  readonly nc: NatsConnection;
  readonly natsUrl: string;
  readonly dataDir: string;
  readonly root: string;
  /** Lines of `flexcore up` itself (the `up` child logger). */
  readonly log: (line: string) => void;
  /** The root logger; each area logs through `logger.child({ area })`. */
  readonly logger: Logger;
  /** The validated `flexcore.yaml` (see {@link configSections}). */
  readonly config: PipelineConfig;
  /** The processor runtime: `metrics()` and `lag()` for `/metrics`, `invoke()` for workflows. */
  readonly processors: ProcessorRuntime;
  /** The configured plugins (calls, figures, enable/disable); absent when `plugins:` is empty. */
  readonly plugins?: PluginHost;
  /** The running sinks and sources of plugins, when any are configured. */
  readonly pluginEndpoints?: PluginEndpoints;
}

/**
 * Sections of `flexcore.yaml`, one validator each; an area adds its section here
 * (e.g. `workflows: workflowsSection`). The whole file is validated before anything starts.
 */
export function configSections(root = projectRoot()) {
  return { ...pipelineSections({ threads: availableParallelism() }), workflows: workflowsSection, gateway: gatewaySection(process.env, root), plugins: pluginsSection(), sinks: sinksSection(), sources: sourcesSection() };
}

/** The validated configuration. */
export type PipelineConfig = ConfigSections<ReturnType<typeof configSections>>;
