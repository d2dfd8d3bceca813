import { expect, test } from "bun:test";
import { openrcScript, serviceFile, systemdUnit } from "../../src/core/service-unit.ts";

test("a systemd unit runs the agent with its arguments, quoted where needed, and restarts it", () => {
  const unit = systemdUnit(["/usr/local/bin/porthole", "guest", "--listen", "unix:///run/my dir/g.sock"]);
  expect(unit).toContain('ExecStart=/usr/local/bin/porthole guest --listen "unix:///run/my dir/g.sock"\n');
  expect(unit).toContain("Restart=always\n");
  expect(unit).toContain("WantedBy=multi-user.target\n");
});

test("an OpenRC script backgrounds the agent", () => {
  const script = openrcScript(["/usr/local/bin/porthole", "guest", "--listen", "vsock://:2222"]);
  expect(script).toStartWith("#!/sbin/openrc-run\n");
  expect(script).toContain("command=/usr/local/bin/porthole\n");
  expect(script).toContain('command_args="guest --listen vsock://:2222"\n');
  expect(script).toContain("command_background=true\n");
});

test("where the files go", () => {
  expect(serviceFile("systemd")).toBe("/etc/systemd/system/porthole-guest.service");
  expect(serviceFile("openrc", "/mnt/root")).toBe("/mnt/root/etc/init.d/porthole-guest");
});
