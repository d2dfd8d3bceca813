import type { CAC } from "cac";
import { keepRunningOnUncaught } from "../runtime/last-resort.ts";
import type { InitSystem } from "../core/service-unit.ts";
import { GuestAgent } from "../guest/guest-agent.ts";
import { DETECTOR_CHOICES } from "../guest/scanners.ts";
import { detectInit, installLimaSystemdUnit, installService, renderService, uninstallService } from "../guest/install.ts";
import { guestRoleUnsupported, selfCommand } from "../runtime/self.ts";
import { readTokenFile } from "../transport/token.ts";
import { vsockUsable } from "../transport/vsock.ts";
import { asList, parseAddressValue, parseChoiceFlag, parseDurationFlag, parseIntFlag, stopOnSignals, UsageError } from "./options.ts";

export const DEFAULT_GUEST_ADDRESS = "unix:///run/porthole/guest.sock";
export const DEFAULT_VSOCK_ADDRESS = "vsock://:2222";
/** Lima's guest agent: its socket when neither --vsock-port nor --virtio-port is given, and its state. */
export const LIMA_SOCKET = "/run/lima-guestagent.sock";
export const LIMA_RUNTIME_DIR = "/run/lima-guestagent";

/** vsock://:2222 where this machine can do vsock (a VM), else the unix socket. */
export async function defaultListenAddress(): Promise<string> {
  return (await vsockUsable()) ? DEFAULT_VSOCK_ADDRESS : DEFAULT_GUEST_ADDRESS;
}

interface GuestFlags {
  listen: unknown;
  scanInterval: unknown;
  detector?: unknown;
  tokenFile?: string;
  vsockAnyCid?: boolean;
  print?: boolean;
  init?: unknown;
  root?: string;
  start: boolean;
  // Lima's `lima-guestagent daemon` / `install-systemd` flags.
  vsockPort?: unknown;
  virtioPort?: unknown;
  runtimeDir?: string;
  socketOwner?: unknown;
  tick?: unknown;
  debug?: unknown;
  guestagentUpdated?: unknown;
}

/** Lima passes booleans as `--debug=false`. */
const flagOn = (value: unknown) => value !== undefined && value !== false && value !== "false";

/** What Lima's flags say to listen on: virtio-serial first, then vsock, else Lima's unix socket. */
function limaListen(flags: GuestFlags): string {
  // Lima's OpenRC script passes `--virtio-port ""` when it uses vsock (cac reads "" as 0).
  const virtio = flags.virtioPort === undefined || flags.virtioPort === 0 ? "" : String(flags.virtioPort);
  const vsock = flags.vsockPort === undefined || flags.vsockPort === "" ? 0 : parseIntFlag("vsock-port", flags.vsockPort, 0, 0xffffffff);
  if (virtio) return `serial:///dev/virtio-ports/${virtio}`;
  if (vsock) return `vsock://:${vsock}`;
  return `unix://${LIMA_SOCKET}`;
}

function limaSocketOwner(flags: GuestFlags): number | undefined {
  const uid = flags.socketOwner === undefined || flags.socketOwner === "" ? 0 : parseIntFlag("socket-owner", flags.socketOwner, 0, 0xfffffffe);
  return uid > 0 ? uid : undefined;
}

export function registerGuest(cli: CAC): void {
  cli
    .command("guest [action]", "Run the guest agent (inside the VM); `guest install` / `guest uninstall` manage its boot-time service")
    .option("--listen <addr>", `Serve on this address, repeatable: vsock://:PORT, unix:///path, serial:///dev/virtio-ports/NAME, tcp://host:port (default: ${DEFAULT_VSOCK_ADDRESS} in a VM with vsock, else ${DEFAULT_GUEST_ADDRESS})`)
    .option("--token-file <file>", "The shared token a tcp:// client must present (required for tcp://)")
    .option("--vsock-any-cid", "Accept vsock connections from any CID, not only the host (CID 2)")
    .option("--scan-interval <ms>", "How often to scan all sockets (default: every 5 s beside kernel events; 50 with netlink polling, 500 with /proc/net)")
    .option("--detector <kind>", "What tells the agent a port opened or closed: ebpf (kernel events), poll, or auto (ebpf where it loads, else poll; the default)")
    .option("--print", "install: print the service definition instead of writing it")
    .option("--init <system>", "install/uninstall: systemd or openrc (default: the one running)")
    .option("--root <dir>", "install/uninstall: write under this directory, and do not start or stop anything")
    .option("--no-start", "install/uninstall: write or remove the file only")
    .example(`porthole guest --listen ${DEFAULT_GUEST_ADDRESS}`)
    .example("sudo porthole guest install --listen vsock://:2222")
    .option("--vsock-port <port>", "daemon, install-systemd (Lima's flags): serve on vsock://:PORT")
    .option("--virtio-port <name>", "daemon, install-systemd (Lima's flags): serve on /dev/virtio-ports/NAME")
    .option("--socket-owner <uid>", `daemon, install-systemd (Lima's flags): the UID that owns the unix socket (${LIMA_SOCKET})`)
    .option("--runtime-dir <dir>", `Keep the last port state sent here, across restarts (daemon: default ${LIMA_RUNTIME_DIR})`)
    .option("--tick <duration>", "daemon (Lima's flag): how often to look for new sockets (default: as --scan-interval)")
    .option("--debug [bool]", "daemon, install-systemd: accepted as Lima passes it")
    .option("--guestagent-updated [bool]", "install-systemd: restart the service even if its unit did not change")
    .example("lima-guestagent daemon --vsock-port 2222   # as Lima starts its own guest agent")
    .action(async (action: string | undefined, flags: GuestFlags) => {
      const given = asList(flags.listen);
      if (action === "install" || action === "uninstall") return manageService(action, flags, given);
      if (action === "install-systemd") return installLimaUnit(flags);
      const daemon = action === "daemon";
      if (action !== undefined && !daemon) {
        throw new UsageError(`unknown guest action "${action}" (install, uninstall, daemon, install-systemd, or none to run the agent)`);
      }
      const listen = (given.length ? given : [daemon ? limaListen(flags) : await defaultListenAddress()]).map((a) => parseAddressValue("listen", a));
      const unsupported = guestRoleUnsupported();
      if (unsupported) throw new Error(unsupported);
      const tickMs = parseDurationFlag("tick", flags.tick);
      if (tickMs !== undefined && tickMs <= 0) throw new UsageError("--tick must be more than 0");
      const agent = new GuestAgent({
        listen,
        token: flags.tokenFile ? readTokenFile(flags.tokenFile) : undefined,
        vsockAnyCid: flags.vsockAnyCid,
        scanIntervalMs: flags.scanInterval === undefined ? tickMs : parseIntFlag("scan-interval", flags.scanInterval, 10, 60_000),
        detector: flags.detector === undefined ? "auto" : parseChoiceFlag("detector", flags.detector, DETECTOR_CHOICES),
        runtimeDir: flags.runtimeDir ?? (daemon ? LIMA_RUNTIME_DIR : undefined),
        socketOwner: limaSocketOwner(flags),
        log: (line) => process.stderr.write(`${line}\n`),
      });
      keepRunningOnUncaught((line) => process.stderr.write(`${line}\n`));
      await agent.start();
      stopOnSignals(() => agent.stop());
    });
}

/** `install-systemd` as Lima's: its unit file, started as `… guest daemon` with Lima's flags. */
function installLimaUnit(flags: GuestFlags): void {
  const args = [
    ...(flags.vsockPort !== undefined && String(flags.vsockPort) !== "0" && flags.vsockPort !== "" ? ["--vsock-port", String(parseIntFlag("vsock-port", flags.vsockPort, 1, 0xffffffff))] : []),
    ...(flags.virtioPort && flags.virtioPort !== 0 ? ["--virtio-port", String(flags.virtioPort)] : []),
    ...(limaSocketOwner(flags) ? ["--socket-owner", String(limaSocketOwner(flags))] : []),
    ...(flagOn(flags.debug) ? ["--debug"] : []),
  ];
  const command = [...selfCommand(), "guest", "daemon", ...args];
  const result = installLimaSystemdUnit(command, {
    root: flags.root,
    start: flags.start && flags.root === undefined,
    print: flags.print === true,
    updated: flagOn(flags.guestagentUpdated),
  });
  if (result) process.stderr.write(`${result}\n`);
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
