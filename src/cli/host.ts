import type { CAC } from "cac";
import { HostAgent, type LogFormat } from "../host/host-agent.ts";
import { DEFAULT_GUEST_ADDRESS } from "./guest.ts";
import { parseAddressFlag, parseChoiceFlag, stopOnSignals } from "./options.ts";

const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];

export function registerHost(cli: CAC): void {
  cli
    .command("host", "Run the host agent: forward the guest's ports to this host")
    .option("--guest <addr>", "The guest agent's address: unix:///path or tcp://host:port", {
      default: DEFAULT_GUEST_ADDRESS,
    })
    .option("--log-format <format>", "text (Lima's log lines) or json (one event per line)", { default: "text" })
    .example("porthole host --guest unix:///run/porthole/guest.sock --log-format json")
    .action((flags: { guest: unknown; logFormat: unknown }) => {
      const agent = new HostAgent({
        guest: parseAddressFlag("guest", flags.guest),
        rules: [],
        logFormat: parseChoiceFlag("log-format", flags.logFormat, LOG_FORMATS),
      });
      agent.start();
      stopOnSignals(() => agent.stop());
    });
}
