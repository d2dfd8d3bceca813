import type { CAC } from "cac";
import { GuestAgent } from "../guest/guest-agent.ts";
import { readTokenFile } from "../transport/token.ts";
import { vsockUsable } from "../transport/vsock.ts";
import { asList, parseAddressValue, parseIntFlag, stopOnSignals } from "./options.ts";

export const DEFAULT_GUEST_ADDRESS = "unix:///run/porthole/guest.sock";
export const DEFAULT_VSOCK_ADDRESS = "vsock://:2222";

/** vsock://:2222 where this machine can do vsock (a VM), else the unix socket. */
export async function defaultListenAddress(): Promise<string> {
  return (await vsockUsable()) ? DEFAULT_VSOCK_ADDRESS : DEFAULT_GUEST_ADDRESS;
}

export function registerGuest(cli: CAC): void {
  cli
    .command("guest", "Run the guest agent (inside the VM): report listening ports, open tunnels")
    .option("--listen <addr>", `Serve on this address, repeatable: vsock://:PORT, unix:///path, serial:///dev/virtio-ports/NAME, tcp://host:port (default: ${DEFAULT_VSOCK_ADDRESS} in a VM with vsock, else ${DEFAULT_GUEST_ADDRESS})`)
    .option("--token-file <file>", "The shared token a tcp:// client must present (required for tcp://)")
    .option("--vsock-any-cid", "Accept vsock connections from any CID, not only the host (CID 2)")
    .option("--scan-interval <ms>", "How often to look for new sockets (default: 100 with netlink, 500 with /proc/net)")
    .example(`porthole guest --listen ${DEFAULT_GUEST_ADDRESS}`)
    .action(async (flags: { listen: unknown; scanInterval: unknown; tokenFile?: string; vsockAnyCid?: boolean }) => {
      const given = asList(flags.listen);
      const listen = (given.length ? given : [await defaultListenAddress()]).map((a) => parseAddressValue("listen", a));
      const agent = new GuestAgent({
        listen,
        token: flags.tokenFile ? readTokenFile(flags.tokenFile) : undefined,
        vsockAnyCid: flags.vsockAnyCid,
        scanIntervalMs: flags.scanInterval === undefined ? undefined : parseIntFlag("scan-interval", flags.scanInterval, 10, 60_000),
        log: (line) => process.stderr.write(`${line}\n`),
      });
      await agent.start();
      stopOnSignals(() => agent.stop());
    });
}
