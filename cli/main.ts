#!/usr/bin/env node
import { Command } from "commander";
import { FlexError } from "../streams/index.js";
import { register as registerDoctor } from "./commands/doctor.js";
import { register as registerKeys } from "./commands/keys.js";
import { register as registerNatsUsers } from "./commands/nats-users.js";
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
registerProjections(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  const code = err instanceof FlexError ? ` [${err.code}]` : "";
  process.stderr.write(`flexcore: ${(err as Error).message}${code}\n`);
  process.exit(1);
});
