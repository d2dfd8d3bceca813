#!/usr/bin/env bun
// porthole: forward every port a Linux guest listens on to the host's localhost.
import { cac } from "cac";
import pkg from "../../package.json" with { type: "json" };
import { registerDemo, runDemoHttpServer, DEMO_HTTP_SERVER_COMMAND } from "./demo.ts";
import { registerGuest } from "./guest.ts";
import { registerHost } from "./host.ts";
import { registerStatus } from "./status.ts";
import { registerForward } from "./forward.ts";
import { aboutLines } from "../runtime/about.ts";
import { joinNegativeValues, UsageError } from "./options.ts";
import { invokedName } from "../runtime/self.ts";
import { tuneAllocator } from "../runtime/allocator.ts";
import { collectAfterGrowth } from "../runtime/idle-gc.ts";

async function main(argv: string[]): Promise<void> {
  // The demo's guest-side web server: started by the demo itself, not a user command.
  if (argv[2] === DEMO_HTTP_SERVER_COMMAND) return runDemoHttpServer(argv.slice(3));

  // Started as `lima-guestagent daemon|install-systemd …` (Lima's command lines): the guest role.
  if (invokedName() === "lima-guestagent" && argv[2] !== "guest") argv = [...argv.slice(0, 2), "guest", ...argv.slice(2)];
  // The agents relay bytes for hours: keep freed buffers for reuse (may start the process anew).
  if (argv[2] === "host" || argv[2] === "guest") {
    tuneAllocator();
    collectAfterGrowth();
  }

  const cli = cac("porthole");
  registerGuest(cli);
  registerHost(cli);
  registerStatus(cli);
  registerForward(cli);
  registerDemo(cli);
  cli.help();
  cli.version(pkg.version);
  cli.outputVersion = () => {}; // printed below: whether the shim loads is asynchronous
  cli.parse(joinNegativeValues(argv), { run: false });
  if (cli.options.version) return void console.log((await aboutLines(pkg.version)).join("\n"));
  if (cli.options.help) return;
  if (!cli.matchedCommand && cli.args.length) {
    throw new UsageError(`unknown command "${cli.args[0]}" (see porthole --help)`);
  }
  if (!cli.matchedCommand) {
    cli.outputHelp();
    process.exitCode = 2;
    return;
  }
  await cli.runMatchedCommand();
}

main(process.argv).catch((err: Error) => {
  const usage = err instanceof UsageError || err.name === "CACError";
  process.stderr.write(`porthole: ${err.message}\n`);
  process.exit(usage ? 2 : 1);
});
