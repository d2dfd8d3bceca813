// The command line as a user meets it: help, errors, the guest socket, and the demo.
import { describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import pkg from "../../package.json" with { type: "json" };
import { e2eTest, Guest, PORTHOLE, runPorthole, useHarness } from "./harness.ts";

useHarness();

const porthole = (args: string[], timeoutMs?: number) => runPorthole(args, { timeoutMs });

describe("command line", () => {
  e2eTest("--help lists the roles and --version prints the version, architecture, runtime, that the shim loaded and the port detector", () => {
    const help = porthole(["--help"]);
    expect(help.code).toBe(0);
    for (const cmd of ["guest", "host", "demo"]) expect(help.stdout).toContain(cmd);
    expect(porthole(["host", "--help"]).stdout).toContain("--guest <addr>");
    expect(porthole(["--version"]).stdout.trim().split("\n")).toEqual([
      `porthole ${pkg.version}`,
      `architecture: ${process.arch} (linux)`,
      `runtime: bun ${process.versions.bun}`,
      `native shim: loaded (${process.arch})`,
      "port detector: ebpf (kernel events load here)", // root on a kernel with cgroup BPF
    ]);
  });

  e2eTest.each([
    [["host", "--bogus"], /Unknown option `--bogus`/],
    [["host", "--guest", "localhost:1"], /--guest: "localhost:1" is not an address/],
    [["guest", "--listen", "http://localhost:80"], /unsupported scheme "http"/],
    [["guest", "--scan-interval", "soon"], /--scan-interval: "soon" is not a whole number/],
    [["host", "--log-format", "xml"], /--log-format: "xml" is not one of text, json/],
    [["frobnicate"], /unknown command "frobnicate"/],
  ])("%p is a clear error with exit code 2", (args, message) => {
    const r = porthole(args as string[]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });
});

describe("guest install", () => {
  e2eTest("--print shows the unit; install writes it under --root, uninstall removes it", () => {
    const printed = porthole(["guest", "install", "--print", "--init", "systemd", "--listen", "vsock://:2222"]);
    expect(printed.code).toBe(0);
    expect(printed.stdout).toContain(`ExecStart=${PORTHOLE.join(" ")} guest --listen vsock://:2222\n`);

    const guest = Guest.create();
    const root = guest.dir;
    const installed = porthole(["guest", "install", "--init", "openrc", "--root", root, "--listen", "serial:///dev/virtio-ports/io.lima-vm.guest_agent.0"]);
    expect(installed.code).toBe(0);
    const file = `${root}/etc/init.d/porthole-guest`;
    expect(readFileSync(file, "utf8")).toContain("guest --listen serial:///dev/virtio-ports/io.lima-vm.guest_agent.0");
    expect(statSync(file).mode & 0o777).toBe(0o755);
    expect(porthole(["guest", "uninstall", "--init", "openrc", "--root", root]).code).toBe(0);
    expect(existsSync(file)).toBe(false);
  });

  e2eTest("an unknown action is a usage error", () => {
    const r = porthole(["guest", "instal"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('unknown guest action "instal"');
  });
});

describe("guest agent socket", () => {
  e2eTest("is created with mode 0600; a second agent on the same live socket is refused", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    expect(statSync(guest.socket).mode & 0o777).toBe(0o600);
    const second = porthole(["guest", "--listen", `unix://${guest.socket}`]);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`another process is already listening on unix://${guest.socket}`);
  });

  e2eTest("refuses to replace a file that is not a socket", () => {
    const guest = Guest.create();
    writeFileSync(guest.socket, "precious");
    const r = porthole(["guest", "--listen", `unix://${guest.socket}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("exists and is not a socket");
  });
});

describe("demo", () => {
  e2eTest("fetches the guest's page through the forward and cleans up", () => {
    const r = porthole(["demo"], 60_000);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Hello from inside the guest!");
    expect(r.stdout).toMatch(/\[host\] Forwarding TCP from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:\d+/);
    expect(spawnSync("ip", ["netns", "list"], { encoding: "utf8" }).stdout).not.toContain("porthole-demo-");
  });
});
