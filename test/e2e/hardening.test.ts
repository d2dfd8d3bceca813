// The built agents against hostile and careless input: a malformed control request, a second
// agent on a live control socket, a negative flag value, a config path that tries to forge
// log lines.
import { describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import * as net from "node:net";
import { join } from "node:path";
import { e2eTest, Guest, runPorthole, startHostAgent, useHarness } from "./harness.ts";

useHarness();

function rawRequest(socketPath: string, request: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    let got = "";
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(got);
    };
    const timer = setTimeout(done, 5000);
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => {
      got += d;
      if (got.includes("\r\n\r\n")) done();
    });
    socket.on("end", done);
    socket.on("error", done);
    socket.write(request);
  });
}

describe("hardening of the host agent", () => {
  e2eTest("malformed control requests are answered with 400 and the agent keeps running", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest);
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    const control = join(guest.dir, "state", "control.sock");
    expect(await rawRequest(control, "GET //a:b/ HTTP/1.1\r\nhost: x\r\n\r\n")).toStartWith("HTTP/1.1 400");
    expect(await rawRequest(control, "GET http://[::1 HTTP/1.1\r\nhost: x\r\n\r\n")).toStartWith("HTTP/1.1 400");
    expect(host.proc.running).toBe(true);
    const status = runPorthole(["status", "--control", control, "--json"]);
    expect(status.code).toBe(0);
    expect(JSON.parse(status.stdout).agent.guestConnected).toBe(true);
  });

  e2eTest("a second host agent facing a live control socket refuses to start", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const first = startHostAgent(guest);
    await first.waitForEvent((e) => e.type === "guest-connected", "connect");
    const second = startHostAgent(guest);
    const code = await second.proc.exited;
    expect(code).toBe(1);
    expect(second.proc.stderr.join("\n")).toContain(`another process is already listening on unix://${join(guest.dir, "state", "control.sock")}`);
    expect(second.proc.stderr.join("\n")).toContain("is another host agent running?");
    expect(first.proc.running).toBe(true);
  });

  e2eTest("a negative duration is named as such, not taken for an option", () => {
    const r = runPorthole(["host", "--guest", "unix:///nonexistent.sock", "--udp-idle-timeout", "-5s"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--udp-idle-timeout: "-5s" is not a positive duration');
    expect(r.stderr).not.toContain("Unknown option");
  });

  e2eTest("a guestSocket path with a newline and ANSI escapes cannot forge a text log line", async () => {
    const guest = Guest.create();
    const evil = "/tmp/x.sock\nForwarding TCP from 127.0.0.1:1 to 127.0.0.1:1\u001b[2K";
    const config = guest.writeFile("c.yaml", `portForwards:\n- guestSocket: ${JSON.stringify(evil)}\n  hostSocket: evil.sock\n`);
    const r = spawnSync(
      "timeout",
      ["-s", "INT", "3", ...runHostArgs(guest, config)],
      { encoding: "utf8" },
    );
    const lines = r.stderr.split("\n");
    const line = lines.find((l) => l.startsWith('Forwarding TCP from "/tmp/x.sock'));
    expect(line).toBeDefined();
    expect(line).toContain('"/tmp/x.sock\\nForwarding TCP from 127.0.0.1:1 to 127.0.0.1:1\\u001b[2K"');
    expect(lines.filter((l) => l.startsWith("Forwarding TCP from 127.0.0.1:1"))).toHaveLength(0);
    expect(r.stderr).not.toContain("\u001b");
  });
});

function runHostArgs(guest: Guest, config: string): string[] {
  const porthole = process.env.PORTHOLE_BIN ? [process.env.PORTHOLE_BIN] : [process.execPath, join(import.meta.dir, "../../src/cli/main.ts")];
  return [...porthole, "host", "--guest", `unix://${guest.dir}/none.sock`, "--state-dir", join(guest.dir, "state"), "--config", config];
}
