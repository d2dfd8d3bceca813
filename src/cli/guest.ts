import type { CAC } from "cac";
import { GuestAgent } from "../guest/guest-agent.ts";
import { asList, parseAddressValue, parseIntFlag, stopOnSignals } from "./options.ts";

export const DEFAULT_GUEST_ADDRESS = "unix:///run/porthole/guest.sock";

export function registerGuest(cli: CAC): void {
  cli
    .command("guest", "Run the guest agent (inside the VM): report listening ports, open tunnels")
    .option("--listen <addr>", "Serve on this address, repeatable: unix:///path or tcp://host:port", {
      default: DEFAULT_GUEST_ADDRESS,
    })
    .option("--scan-interval <ms>", "How often to look for new sockets (default: 100 with netlink, 500 with /proc/net)")
    .example(`porthole guest --listen ${DEFAULT_GUEST_ADDRESS}`)
    .action(async (flags: { listen: unknown; scanInterval: unknown }) => {
      const listen = asList(flags.listen).map((a) => parseAddressValue("listen", a));
      const agent = new GuestAgent({
        listen,
        scanIntervalMs: flags.scanInterval === undefined ? undefined : parseIntFlag("scan-interval", flags.scanInterval, 10, 60_000),
        log: (line) => process.stderr.write(`${line}\n`),
      });
      await agent.start();
      stopOnSignals(() => agent.stop());
    });
}
