#!/usr/bin/env node
import { Command } from "commander";
import { FlexError } from "../streams/index.js";
import { register as registerDlq } from "./commands/dlq.js";
import { register as registerDoctor } from "./commands/doctor.js";
import { register as registerKeys } from "./commands/keys.js";
import { register as registerNatsUsers } from "./commands/nats-users.js";
import { register as registerPlugins } from "./commands/plugins.js";
import { register as registerProcessors } from "./commands/processors.js";
import { register as registerProjections } from "./commands/projections.js";
import { register as registerPublish } from "./commands/publish.js";
import { register as registerReplay } from "./commands/replay.js";
import { register as registerStreams } from "./commands/streams.js";
import { register as registerToken } from "./commands/token.js";
import { register as registerUp } from "./commands/up.js";
import { register as registerUsers } from "./commands/users.js";
import { register as registerWorkflows } from "./commands/workflows.js";

const program = new Command();
program.name("flexcore").description("FlexCore: event sourcing, processors and read models on NATS JetStream").showHelpAfterError();

// NATS credentials for every command (and for `up`'s components); the environment variables
// are what every FlexCore process reads, so the options only set them.
program
  .option("--creds <file>", "NATS .creds file (JWT + seed); sets NATS_CREDS")
  .option("--nkey <file>", "file holding an NKey user seed; sets NATS_NKEY (default: the embedded server's <data>/nats-seeds/flexcore.nk)")
  .option("--user <user>", "NATS user; the password comes from NATS_PASSWORD; sets NATS_USER")
  .option("--tls-ca <file>", "CA certificate of the server; sets NATS_CA")
  .option("--tls-cert <file>", "client certificate (with --tls-key); sets NATS_CERT")
  .option("--tls-key <file>", "client key; sets NATS_KEY")
  .hook("preAction", (cmd) => {
    const o = cmd.opts<{ creds?: string; nkey?: string; user?: string; tlsCa?: string; tlsCert?: string; tlsKey?: string }>();
    const set = (name: string, v: string | undefined): void => {
      if (v !== undefined) process.env[name] = v;
    };
    set("NATS_CREDS", o.creds);
    set("NATS_NKEY", o.nkey);
    set("NATS_USER", o.user);
    set("NATS_CA", o.tlsCa);
    set("NATS_CERT", o.tlsCert);
    set("NATS_KEY", o.tlsKey);
  });

// One line per command group; each file registers its subcommands.
registerUp(program);
registerPublish(program);
registerReplay(program);
registerStreams(program);
registerDoctor(program);
registerUsers(program);
registerToken(program);
registerKeys(program);
registerNatsUsers(program);
registerWorkflows(program);
registerProcessors(program);
registerProjections(program);
registerDlq(program);
registerPlugins(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  const code = err instanceof FlexError ? ` [${err.code}]` : "";
  process.stderr.write(`flexcore: ${(err as Error).message}${code}\n`);
  process.exit(1);
});
