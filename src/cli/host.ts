import type { CAC } from "cac";
import { keepRunningOnUncaught } from "../runtime/last-resort.ts";
import { resolve } from "node:path";
import { ConfigError } from "../core/config.ts";
import { loadConfigFile } from "../host/config-file.ts";
import { HostAgent, type LogFormat } from "../host/host-agent.ts";
import { FORWARDER_KINDS } from "../core/forwarder-choice.ts";
import { readTokenFile } from "../transport/token.ts";
import { DEFAULT_GUEST_ADDRESS } from "./guest.ts";
import { isIP } from "../core/address.ts";
import { defaultStateDir, parseAddressFlag, parseChoiceFlag, parseDurationFlag, parseIntFlag, stopOnSignals, UsageError } from "./options.ts";

/** An IP literal (for 127.0.0.N: Linux routes all of 127.0.0.0/8 to loopback). */
function parseIPFlag(flag: string, value: unknown): string {
  if (typeof value !== "string" || !isIP(value)) throw new UsageError(`--${flag}: "${value}" is not an IP address (e.g. 127.0.0.2)`);
  return value;
}

const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];
const FORWARDERS = FORWARDER_KINDS;

interface HostFlags {
  guest: unknown;
  logFormat: unknown;
  config?: string;
  watchConfig?: boolean;
  stateDir?: string;
  /** cac does not camel-case a name with a digit before the dash. */
  "ipv6-loopback": boolean;
  udpIdleTimeout?: unknown;
  udpMaxFlows?: unknown;
  forwarder?: unknown;
  ssh?: string;
  sshVsock?: string;
  sshUser?: string;
  sshIdentity?: string;
  sshSkipHostKeyCheck?: boolean;
  tokenFile?: string;
  syncTime?: boolean;
  control?: string;
  onConflict?: unknown;
  hostIp?: unknown;
  onForward?: unknown;
  onForwardTimeout?: unknown;
  kernelDirect?: boolean;
}

export function registerHost(cli: CAC): void {
  cli
    .command("host", "Run the host agent: forward the guest's ports to this host")
    .option("--guest <addr>", "The guest agent: unix:///path (a socket, or a QEMU virtio-serial chardev), vsock://CID:PORT, tcp://host:port", {
      default: DEFAULT_GUEST_ADDRESS,
    })
    .option("--token-file <file>", "The shared token for a tcp:// guest address (the guest's --token-file)")
    .option("--config <file>", "portForwards rules: a porthole config or a Lima instance file (lima.yaml)")
    .option("--watch-config", "Re-apply the config file whenever it changes (SIGHUP always does)")
    .option("--state-dir <dir>", "Where relative hostSocket paths live (default: $XDG_STATE_HOME/porthole)")
    .option("--no-ipv6-loopback", "Do not also listen on ::1 for forwards to 127.0.0.1")
    .option("--udp-idle-timeout <duration>", "End a UDP client's flow after this long without traffic (default 60s)")
    .option("--udp-max-flows <n>", "At most this many UDP clients per forward; the least recently used makes room (default 1024)")
    .option("--forwarder <kind>", "auto (default: direct by IP, else porthole's data path, else gRPC), fast, grpc or ssh; wins over LIMA_SSH_PORT_FORWARDER and the config")
    .option("--kernel-direct", "Linux host, as root: this host's own clients of a direct forward connect to the guest's address themselves (connect() rewritten by cgroup BPF), with no relay; see the README")
    .option("--ssh <addr>", "The guest's sshd for the SSH forwarder: tcp://host:port, unix:///path")
    .option("--ssh-vsock <addr>", "The guest's sshd on vsock, tried before --ssh (off with LIMA_SSH_OVER_VSOCK=false)")
    .option("--ssh-user <name>", "SSH user (default: yours)")
    .option("--ssh-identity <file>", "SSH private key (default: ~/.ssh/id_ed25519, id_ecdsa or id_rsa)")
    .option("--ssh-skip-host-key-check", "Trust any SSH host key (throwaway VMs); default: trust on first use")
    .option("--control <path>", "The control socket that `porthole status` reads (default: STATE_DIR/control.sock)")
    .option("--on-conflict <policy>", "When a host port is taken: fail (report, retry; default) or next-free")
    .option("--host-ip <ip>", "Where this guest's forwards listen when their rule names no hostIP (default 127.0.0.1); e.g. 127.0.0.2 for a second guest, so both can use the same ports")
    .option("--on-forward <cmd>", "Run CMD (with /bin/sh -c) for each new forward, the forward in PORTHOLE_* variables; see the README")
    .option("--on-forward-timeout <duration>", "Kill an --on-forward run after this long (default 30s)")
    .option("--sync-time", "Keep the guest's clock on the host's: SyncTime every 10 s, as Lima's host agent does (the guest agent sets its clock when it is over 100 ms off)")
    .option("--log-format <format>", "text (Lima's log lines) or json (one event per line)", { default: "text" })
    .example("porthole host --guest unix:///run/porthole/guest.sock --config ~/.lima/default/lima.yaml")
    .action(async (flags: HostFlags) => {
      const guest = parseAddressFlag("guest", flags.guest);
      const logFormat = parseChoiceFlag("log-format", flags.logFormat, LOG_FORMATS);
      const stateDir = resolve(flags.stateDir ?? defaultStateDir());
      const hostIP = flags.hostIp === undefined ? undefined : parseIPFlag("host-ip", flags.hostIp);
      const config = flags.config ? loadConfigOrExit(flags.config, stateDir, hostIP) : undefined;
      if (flags.onForward !== undefined && (typeof flags.onForward !== "string" || !flags.onForward.trim())) throw new UsageError("--on-forward needs a command");
      const forwarder = flags.forwarder === undefined ? undefined : parseChoiceFlag("forwarder", flags.forwarder, FORWARDERS);
      if (flags.ssh !== undefined) parseAddressFlag("ssh", flags.ssh);
      if (flags.sshVsock !== undefined) parseAddressFlag("ssh-vsock", flags.sshVsock);
      const agent = new HostAgent({
        guest,
        token: flags.tokenFile ? readTokenFile(flags.tokenFile) : undefined,
        control: flags.control,
        onConflict: flags.onConflict === undefined ? undefined : parseChoiceFlag("on-conflict", flags.onConflict, ["fail", "next-free"] as const),
        config,
        configFile: flags.config,
        watchConfig: flags.watchConfig,
        stateDir,
        ipv6Loopback: flags["ipv6-loopback"],
        udpIdleTimeoutMs: parseDurationFlag("udp-idle-timeout", flags.udpIdleTimeout),
        udpMaxFlows: flags.udpMaxFlows === undefined ? undefined : parseIntFlag("udp-max-flows", flags.udpMaxFlows, 1, 1_000_000),
        forwarder,
        ssh: {
          address: flags.ssh,
          vsockAddress: flags.sshVsock,
          user: flags.sshUser,
          identity: flags.sshIdentity,
          skipHostKeyCheck: flags.sshSkipHostKeyCheck,
        },
        syncTime: flags.syncTime,
        kernelDirect: flags.kernelDirect === true,
        logFormat,
        hostIP,
        ...(flags.onForward !== undefined
          ? { onForward: { command: String(flags.onForward), timeoutMs: parseDurationFlag("on-forward-timeout", flags.onForwardTimeout) ?? 30_000 } }
          : {}),
      });
      await agent.start();
      keepRunningOnUncaught((line) => agent.log(line));
      process.on("SIGHUP", () => agent.reload());
      stopOnSignals(() => agent.stop());
    });
}

/** A bad config at start-up stops the agent with every problem listed. */
function loadConfigOrExit(file: string, stateDir: string, hostIP: string | undefined) {
  try {
    return loadConfigFile(file, stateDir, { hostIP });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`porthole: invalid config:\n${err.problems.map((p) => `  ${p}`).join("\n")}\n`);
    process.exit(1);
  }
}
