import type { CAC } from "cac";
import { keepRunningOnUncaught } from "../runtime/last-resort.ts";
import type { InitSystem } from "../core/service-unit.ts";
import { GuestAgent } from "../guest/guest-agent.ts";
import { detectInit, installService, renderService, uninstallService } from "../guest/install.ts";
import { guestRoleUnsupported, selfCommand } from "../runtime/self.ts";
import { readTokenFile } from "../transport/token.ts";
import { vsockUsable } from "../transport/vsock.ts";
import { asList, parseAddressValue, parseChoiceFlag, parseIntFlag, stopOnSignals, UsageError } from "./options.ts";

export const DEFAULT_GUEST_ADDRESS = "unix:///run/porthole/guest.sock";
export const DEFAULT_VSOCK_ADDRESS = "vsock://:2222";

/** vsock://:2222 where this machine can do vsock (a VM), else the unix socket. */
export async function defaultListenAddress(): Promise<string> {
  return (await vsockUsable()) ? DEFAULT_VSOCK_ADDRESS : DEFAULT_GUEST_ADDRESS;
}

interface GuestFlags {
  listen: unknown;
  scanInterval: unknown;
  tokenFile?: string;
  vsockAnyCid?: boolean;
  print?: boolean;
  init?: unknown;
  root?: string;
  start: boolean;
}

export function registerGuest(cli: CAC): void {
  cli
    .command("guest [action]", "Run the guest agent (inside the VM); `guest install` / `guest uninstall` manage its boot-time service")
    .option("--listen <addr>", `Serve on this address, repeatable: vsock://:PORT, unix:///path, serial:///dev/virtio-ports/NAME, tcp://host:port (default: ${DEFAULT_VSOCK_ADDRESS} in a VM with vsock, else ${DEFAULT_GUEST_ADDRESS})`)
    .option("--token-file <file>", "The shared token a tcp:// client must present (required for tcp://)")
    .option("--vsock-any-cid", "Accept vsock connections from any CID, not only the host (CID 2)")
    .option("--scan-interval <ms>", "How often to look for new sockets (default: 50 with netlink, 500 with /proc/net)")
    .option("--print", "install: print the service definition instead of writing it")
    .option("--init <system>", "install/uninstall: systemd or openrc (default: the one running)")
    .option("--root <dir>", "install/uninstall: write under this directory, and do not start or stop anything")
    .option("--no-start", "install/uninstall: write or remove the file only")
    .example(`porthole guest --listen ${DEFAULT_GUEST_ADDRESS}`)
    .example("sudo porthole guest install --listen vsock://:2222")
    .action(async (action: string | undefined, flags: GuestFlags) => {
      const given = asList(flags.listen);
      const listen = (given.length ? given : [await defaultListenAddress()]).map((a) => parseAddressValue("listen", a));
      if (action === "install" || action === "uninstall") return manageService(action, flags, given);
      if (action !== undefined) throw new UsageError(`unknown guest action "${action}" (install, uninstall, or none to run the agent)`);
      const unsupported = guestRoleUnsupported();
      if (unsupported) throw new Error(unsupported);
      const agent = new GuestAgent({
        listen,
        token: flags.tokenFile ? readTokenFile(flags.tokenFile) : undefined,
        vsockAnyCid: flags.vsockAnyCid,
        scanIntervalMs: flags.scanInterval === undefined ? undefined : parseIntFlag("scan-interval", flags.scanInterval, 10, 60_000),
        log: (line) => process.stderr.write(`${line}\n`),
      });
      keepRunningOnUncaught((line) => process.stderr.write(`${line}\n`));
      await agent.start();
      stopOnSignals(() => agent.stop());
    });
}

/** The agent's own command line, as the service should run it. */
function serviceCommand(flags: GuestFlags, listen: string[]): string[] {
  return [
    ...selfCommand(),
    "guest",
    ...listen.flatMap((a) => ["--listen", a]),
    ...(flags.tokenFile ? ["--token-file", flags.tokenFile] : []),
    ...(flags.vsockAnyCid ? ["--vsock-any-cid"] : []),
    ...(flags.scanInterval !== undefined ? ["--scan-interval", String(flags.scanInterval)] : []),
  ];
}

function manageService(action: "install" | "uninstall", flags: GuestFlags, listen: string[]): void {
  const init = flags.init === undefined ? detectInit() : parseChoiceFlag<InitSystem>("init", flags.init, ["systemd", "openrc"]);
  if (!init) throw new UsageError("neither systemd nor OpenRC runs here: pass --init systemd|openrc (with --print to see the file)");
  const activate = flags.start && flags.root === undefined;
  if (action === "install") {
    const command = serviceCommand(flags, listen);
    if (flags.print) return void process.stdout.write(renderService(init, command));
    const file = installService(init, command, { root: flags.root, start: activate });
    process.stderr.write(`installed ${file}${activate ? " and started it" : ""}\n`);
  } else {
    const file = uninstallService(init, { root: flags.root, stop: activate });
    process.stderr.write(`removed ${file}\n`);
  }
}
