// The boot-time service definitions that `porthole guest install` writes. No I/O.
export type InitSystem = "systemd" | "openrc";

export const SERVICE_NAME = "porthole-guest";

/** A command line for a unit file: each argument quoted when it needs to be. */
function quote(argv: string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `"${a.replace(/(["\\$`])/g, "\\$1")}"`)).join(" ");
}

export function systemdUnit(command: string[]): string {
  return `[Unit]
Description=porthole guest agent: reports listening ports to the host and opens its tunnels
After=network.target

[Service]
ExecStart=${quote(command)}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
`;
}

export function openrcScript(command: string[]): string {
  const [program, ...args] = command;
  return `#!/sbin/openrc-run
description="porthole guest agent: reports listening ports to the host and opens its tunnels"
command=${quote([program!])}
command_args=${JSON.stringify(quote(args))}
command_background=true
pidfile="/run/\${RC_SVCNAME}.pid"
output_log="/var/log/porthole-guest.log"
error_log="/var/log/porthole-guest.log"

depend() {
  need localmount
  after net
}
`;
}

export function serviceFile(init: InitSystem, root = ""): string {
  return init === "systemd" ? `${root}/etc/systemd/system/${SERVICE_NAME}.service` : `${root}/etc/init.d/${SERVICE_NAME}`;
}

/** Lima's own unit name and path, for `install-systemd` (porthole standing in for lima-guestagent). */
export const LIMA_SERVICE_NAME = "lima-guestagent";

export function limaServiceFile(root = ""): string {
  return `${root}/etc/systemd/system/${LIMA_SERVICE_NAME}.service`;
}

/** Lima's lima-guestagent.TEMPLATE.service, with porthole's `guest daemon …` command. */
export function limaSystemdUnit(command: string[]): string {
  return `[Unit]
Description=lima-guestagent

[Service]
ExecStart=${quote(command)} --runtime-dir="%t/%N"
Type=simple
Restart=on-failure
OOMPolicy=continue
OOMScoreAdjust=-500

[Install]
WantedBy=multi-user.target
`;
}
