// `porthole guest install|uninstall`: a boot-time service for the guest agent, as guest
// provisioning scripts want it (systemd where it runs, else OpenRC).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import {
  limaServiceFile,
  LIMA_SERVICE_NAME,
  limaSystemdUnit,
  openrcScript,
  serviceFile,
  SERVICE_NAME,
  systemdUnit,
  type InitSystem,
} from "../core/service-unit.ts";

export function detectInit(): InitSystem | undefined {
  if (existsSync("/run/systemd/system")) return "systemd";
  if (existsSync("/sbin/openrc-run") || existsSync("/usr/sbin/openrc-run")) return "openrc";
  return undefined;
}

export function renderService(init: InitSystem, command: string[]): string {
  return init === "systemd" ? systemdUnit(command) : openrcScript(command);
}

function run(argv: string[]): void {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${argv.join(" ")} failed: ${(r.stderr || r.error?.message || "").trim()}`);
}

/** Writes the service and (unless `start` is false) enables and starts it. Returns the file. */
export function installService(init: InitSystem, command: string[], options: { root?: string; start: boolean }): string {
  const file = serviceFile(init, options.root);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, renderService(init, command), { mode: init === "openrc" ? 0o755 : 0o644 });
  if (options.start) {
    if (init === "systemd") {
      run(["systemctl", "daemon-reload"]);
      run(["systemctl", "enable", "--now", `${SERVICE_NAME}.service`]);
    } else {
      run(["rc-update", "add", SERVICE_NAME, "default"]);
      run(["rc-service", SERVICE_NAME, "start"]);
    }
  }
  return file;
}

/** Stops and removes the service (a missing one is not an error). Returns the file. */
export function uninstallService(init: InitSystem, options: { root?: string; stop: boolean }): string {
  const file = serviceFile(init, options.root);
  if (options.stop && existsSync(file)) {
    if (init === "systemd") spawnSync("systemctl", ["disable", "--now", `${SERVICE_NAME}.service`]);
    else {
      spawnSync("rc-service", [SERVICE_NAME, "stop"]);
      spawnSync("rc-update", ["del", SERVICE_NAME, "default"]);
    }
  }
  rmSync(file, { force: true });
  if (options.stop && init === "systemd") spawnSync("systemctl", ["daemon-reload"]);
  return file;
}

/**
 * `install-systemd` as Lima's guest agent does it: write /etc/systemd/system/lima-guestagent.service
 * when it changed, then (unless `start` is false) daemon-reload, enable, try-restart and start,
 * skipped when nothing changed and the binary was not updated. Returns what it did.
 */
export function installLimaSystemdUnit(command: string[], options: { root?: string; start: boolean; print: boolean; updated: boolean }): string {
  const unit = limaSystemdUnit(command);
  if (options.print) {
    process.stdout.write(unit);
    return "";
  }
  const file = limaServiceFile(options.root);
  const changed = !existsSync(file) || readFileSync(file, "utf8") !== unit;
  if (changed) {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, unit, { mode: 0o644 });
  }
  if (!changed && !options.updated) return `${file} is up-to-date`;
  if (options.start) {
    if (changed) run(["systemctl", "--system", "daemon-reload"]);
    for (const verb of ["enable", "try-restart", "start"]) run(["systemctl", "--system", verb, `${LIMA_SERVICE_NAME}.service`]);
  }
  return changed ? `written ${file}${options.start ? " and started it" : ""}` : `${file} is up-to-date; restarted it`;
}
