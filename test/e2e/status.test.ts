// porthole status (table, JSON, watch, metrics), labels, and the next-free conflict policy.
import { describe, expect } from "bun:test";
import { spawn } from "node:child_process";
import { statSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { defer, e2eTest, exchange, freePort, Guest, PORTHOLE, Proc, runPorthole, startHostAgent, tryConnect, useHarness } from "./harness.ts";

useHarness();

const status = (control: string, ...flags: string[]) => runPorthole(["status", "--control", control, ...flags]);

describe("porthole status", () => {
  e2eTest("the table, the JSON list and the metrics show forwards with their rule, label and traffic", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [guestPort, hostPort] = [await freePort(), await freePort()];
    const config = guest.writeFile("c.yaml", `portForwards:\n- {guestPort: ${guestPort}, hostPort: ${hostPort}, label: web}\n`);
    const host = startHostAgent(guest, ["--config", config]);
    await guest.startEcho("127.0.0.1", guestPort);
    await host.waitForForwarding(hostPort);
    expect((await exchange(hostPort, Buffer.alloc(3000, 1))).length).toBe(3000);
    const control = join(guest.dir, "state", "control.sock");
    expect(statSync(control).mode & 0o777).toBe(0o600);

    const table = status(control);
    expect(table.code).toBe(0);
    expect(table.stdout).toContain(`guest unix://${guest.socket}: connected`);
    expect(table.stdout).toMatch(new RegExp(`tcp\\s+127\\.0\\.0\\.1:${guestPort}\\s+127\\.0\\.0\\.1:${hostPort}\\s+forwarding\\s+fast\\s+0 \\(web\\)\\s+\\S+\\[\\d+\\] root\\s+\\d+\\s+2\\.9 KiB\\s+2\\.9 KiB`));

    const list = JSON.parse(status(control, "--json").stdout);
    const fwd = list.forwards.find((f: { hostAddr: string }) => f.hostAddr === `127.0.0.1:${hostPort}`);
    expect(fwd).toMatchObject({ protocol: "tcp", guestAddr: `127.0.0.1:${guestPort}`, rule: 0, label: "web", state: "forwarding", bytesIn: 3000, bytesOut: 3000, path: "fast" });
    // The path the connection really took, with its bytes, for the forward and the agent.
    expect(fwd.paths).toEqual({ fast: { connections: 1, open: 0, bytesIn: 3000, bytesOut: 3000, fallbacks: 0 } });
    expect(list.paths.fast).toMatchObject({ connections: 1, bytesIn: 3000, bytesOut: 3000 });
    expect(list.agent.guestConnected).toBe(true);

    const metrics = status(control, "--metrics").stdout;
    expect(metrics).toContain("porthole_guest_connected 1");
    expect(metrics).toContain('porthole_path_connections_total{path="fast"} 1');
    expect(metrics).toContain(`porthole_bytes_total{protocol="tcp",host="127.0.0.1:${hostPort}",guest="127.0.0.1:${guestPort}",label="web",direction="in"} 3000`);
  });

  e2eTest("--watch follows changes live", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest);
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    const control = join(guest.dir, "state", "control.sock");
    const watch = new Proc(spawn(PORTHOLE[0]!, [...PORTHOLE.slice(1), "status", "--control", control, "--watch", "--json"], { stdio: ["ignore", "pipe", "pipe"] }), "status --watch");
    defer(() => watch.kill("SIGKILL"));
    await watch.waitFor(() => watch.stdout.some((l) => l.includes('"agent"')) || undefined, "the first status");
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    const line = await watch.waitForLine(new RegExp(`"type":"forwarding".*"hostAddr":"127\\.0\\.0\\.1:${port}"`));
    expect(JSON.parse(line).guestAddr).toBe(`127.0.0.1:${port}`);
  });

  e2eTest("without a running agent it says so", () => {
    const r = status("/tmp/porthole-no-such-agent/control.sock");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("no host agent is running with the control socket /tmp/porthole-no-such-agent/control.sock");
  });
});

describe("host port conflicts", () => {
  e2eTest("next-free binds the next free port and reports the mapping", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [guestPort, hostPort] = [await freePort(), await freePort()];
    const squatter = net.createServer((s) => s.destroy());
    await new Promise<void>((r) => squatter.listen(hostPort, "127.0.0.1", r));
    defer(() => new Promise<void>((r) => squatter.close(() => r())));
    const config = guest.writeFile("c.yaml", `portForwards:\n- {guestPort: ${guestPort}, hostPort: ${hostPort}, onConflict: next-free}\nipv6Loopback: false\n`);
    const host = startHostAgent(guest, ["--config", config]);
    await guest.startEcho("127.0.0.1", guestPort);
    const event = await host.waitForEvent((e) => e.type === "forwarding" && e.requestedHostAddr === `127.0.0.1:${hostPort}`, "the moved forward");
    const moved = Number(event.hostAddr!.split(":")[1]);
    expect(moved).toBeGreaterThan(hostPort);
    expect((await exchange(moved, Buffer.from("next"))).toString()).toBe("next");
    expect(host.events.filter((e) => e.type === "failed")).toEqual([]);
  });

  e2eTest("127.0.0.1:P taken by a host program: [::1]:P is not forwarded half-way, and both follow once it is free", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const port = await freePort();
    const squatter = net.createServer((s) => s.end("host program"));
    await new Promise<void>((r) => squatter.listen(port, "127.0.0.1", r));
    defer(() => new Promise<void>((r) => squatter.close(() => r())));
    const host = startHostAgent(guest);
    await guest.startEcho("127.0.0.1", port);
    const failed = await host.waitForEvent((e) => e.type === "failed" && e.hostAddr === `127.0.0.1:${port}`, "the failed forward");
    expect(failed.error).toContain(`not listening on [::1]:${port} either`);
    expect(await tryConnect(port, "::1")).toBe("ECONNREFUSED");
    expect(host.events.filter((e) => e.type === "forwarding")).toEqual([]);
    await new Promise<void>((r) => squatter.close(() => r()));
    await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `[::1]:${port}`, "the pair, once free", 20_000);
    expect((await exchange(port, Buffer.from("v6"), "::1")).toString()).toBe("v6");
    expect((await exchange(port, Buffer.from("v4"), "127.0.0.1")).toString()).toBe("v4");
  });
});
